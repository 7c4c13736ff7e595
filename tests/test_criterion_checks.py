"""Checks across the KD criterions (word_kd, d2gpo, seq_kd, nat_word_kd):

- a top-K larger than the soft-label store's K (--kd-topk) or the prior store's k
  (--d2gpo-topk) is an error through fairseq-train;
- reduce=False returns per-token losses (fairseq's (B*T) x 1 column, 0 at pads)
  that sum to the reduced loss, or (seq_kd with a weighted distilled term) refuses;
- nat_word_kd at alpha 0 never runs the teacher and is nat_loss;
- word_kd logs the teacher's accuracy on the gold words beside the student's.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.data import Dictionary, data_utils

import utils
from fairseq_kd.data import array_store, prior, soft_labels

STORE_K = 3


def _train_targets(data_bin):
    """The binarized train targets (EOS included), in dataset order, and the dictionary."""
    d = Dictionary.load(os.path.join(data_bin, "dict.tgt.txt"))
    return data_utils.load_indexed_dataset(os.path.join(data_bin, "train.src-tgt.tgt"), d), d


def _teacher_right(row):
    """Whether the synthetic store's top-1 word is the gold word at global token row ``row``."""
    return row % 4 != 0


@pytest.fixture(scope="module")
def store(tiny_data, tmp_path_factory):
    """A K = 3 soft-label store of tiny_data's train split whose top-1 word is the gold
    word at 3 rows in 4 (``_teacher_right``) and the next word id otherwise."""
    targets, d = _train_targets(tiny_data)
    sizes = np.asarray(targets.sizes, dtype=np.int64)
    gold = torch.cat([targets[i] for i in range(len(targets))]).numpy()  # tokens
    rows = np.arange(len(gold))
    first = np.where(_teacher_right(rows), gold, (gold + 1) % len(d))
    ids = (first[:, None] + np.arange(STORE_K)[None, :]) % len(d)  # distinct in a row
    logits = np.sort(np.random.RandomState(0).randn(len(gold), STORE_K), axis=1)[:, ::-1]  # descending
    path = str(tmp_path_factory.mktemp("store") / "k3")
    header = soft_labels.make_header("train", STORE_K, 0, d, sizes, teacher_checksum="synthetic")
    pending = soft_labels.create_or_resume(path, header, sizes)
    pending["ids"][:] = ids.astype(np.int32)
    pending["logits"][:] = logits.astype(np.float16)
    pending.mark_done(slice(None))
    array_store.finish(pending)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return path, offsets


@pytest.fixture(scope="module")
def prior_k4(tiny_data, tmp_path_factory):
    d = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    path = str(tmp_path_factory.mktemp("prior") / "k4")
    emb = torch.randn(len(d), 8, generator=torch.Generator().manual_seed(0))
    prior.build(path, emb, ~prior.special_symbols(d), 4, 1.0,
                {"dictionary_checksum": array_store.dictionary_checksum(d)})
    return path


def _word_kd(data, *extra):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--cpu", *extra,
    ])


def _no_checkpoint(save):
    """Nothing that reads as finished (fairseq's trainer saves crash.pt on any error raised
    in a training step that is not a RuntimeError; it is never resumed from)."""
    return not save.exists() or not [p for p in save.rglob("*.pt") if p.name != "crash.pt"]


# ------------------------------------------------------------ top-K larger than the store
def test_kd_topk_larger_than_the_store_is_an_error(tiny_data, store, tmp_path):
    save = tmp_path / "student"
    proc = utils.train(tiny_data, str(save), max_update=5, check=False, criterion=[
        "--task", "translation_kd", "--soft-labels", store[0], "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--kd-topk", "5",
    ])
    utils.usage_error(proc, f"--kd-topk 5 is larger than K = {STORE_K}, the words per token of the soft-label store "
                            f"(--soft-labels): use --kd-topk {STORE_K} or less")
    assert _no_checkpoint(save)


def test_d2gpo_topk_larger_than_the_prior_is_an_error(tiny_data, prior_k4, tmp_path):
    save = tmp_path / "student"
    proc = utils.train(tiny_data, str(save), max_update=5, check=False, criterion=[
        "--task", "translation", "--criterion", "d2gpo", "--label-smoothing", "0.1",
        "--d2gpo-prior", prior_k4, "--d2gpo-topk", "6",
    ])
    utils.usage_error(proc, f"--d2gpo-topk 6 is larger than k = 4, the candidates per word of the prior store "
                            f"{prior_k4}: use --d2gpo-topk 4 or less")
    assert _no_checkpoint(save)


# ------------------------------------------------------------ reduce=False
def _per_token_checks(vec, reduced, sample, prefix=0):
    """vec is fairseq's unreduced column: (B*T') x 1, 0 at pads, summing to the reduced loss,
    and not one value broadcast over the tokens."""
    target = sample["target"][:, prefix:]
    assert vec.shape == (target.numel(), 1)
    pads = target.reshape(-1).eq(1)
    assert pads.any() and vec[pads].eq(0).all()
    assert vec.sum().item() == pytest.approx(reduced.item(), rel=1e-5)
    assert vec[~pads].std().item() > 1e-3 * vec[~pads].abs().mean().item()


def _ls_per_token(task, model, sample, prefix=0):
    baseline = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, ignore_prefix_size=prefix)
    return baseline(model, sample, reduce=False)[0]


@pytest.mark.parametrize("teacher,prefix", [("online", 0), ("online", 1), ("store", 0)])
def test_word_kd_per_token_losses(tiny_data, tiny_teacher, store, teacher, prefix):
    alpha, T = 0.4, 2.0
    source = ["--teacher-path", tiny_teacher] if teacher == "online" else ["--soft-labels", store[0]]
    _, task, model, criterion = _word_kd(
        tiny_data, *source, "--kd-alpha", str(alpha), "--kd-temperature", str(T), "--kd-t2-scaling",
        "--ignore-prefix-size", str(prefix),
    )
    sample = utils.first_batch(task)
    model.eval()
    with torch.no_grad():
        reduced, size, logs = criterion(model, sample)
        vec, size_vec, logs_vec = criterion(model, sample, reduce=False)
        ls = _ls_per_token(task, model, sample, prefix)
        # KD by hand at the non-pad positions after the prefix
        target = sample["target"]
        mask = target.ne(task.target_dictionary.pad())
        mask[:, :prefix] = False
        z_S = model(**sample["net_input"])[0]
        if teacher == "online":
            q = F.softmax(task.teacher.models[0](**sample["net_input"])[0][mask] / T, dim=-1)
            kd = -(q * F.log_softmax(z_S[mask], -1)).sum(-1)
        else:
            ids = sample["soft_labels"]["ids"][mask]
            q = F.softmax(sample["soft_labels"]["logits"][mask].float() / T, dim=-1)
            kd = -(q * F.log_softmax(z_S[mask], -1).gather(-1, ids)).sum(-1)
        kd_full = torch.zeros(mask.shape).masked_scatter(mask, kd * T * T)[:, prefix:].reshape(-1, 1)
    _per_token_checks(vec, reduced, sample, prefix)
    utils.assert_close_by_norm(vec, (1 - alpha) * ls + alpha * kd_full, rtol=1e-5, what="per-token loss")
    assert size_vec == size
    for key in ("loss", "nll_loss", "kd_loss"):  # logs are sums either way
        assert logs_vec[key].dim() == 0 and logs_vec[key].item() == pytest.approx(logs[key].item(), rel=1e-5)


def test_d2gpo_per_token_losses(tiny_data, prior_k4):
    argv = [tiny_data, *utils.TINY_TRANSFORMER, "--criterion", "d2gpo", "--label-smoothing", "0.1",
            "--d2gpo-prior", prior_k4, "--cpu"]
    _, task, model, criterion = utils.build_in_process([*argv, "--kd-alpha", "0.5"])
    sample = utils.first_batch(task)
    model.eval()
    with torch.no_grad():
        reduced, _, logs = criterion(model, sample)
        vec, _, logs_vec = criterion(model, sample, reduce=False)
        ls = _ls_per_token(task, model, sample)
        lprobs = F.log_softmax(model(**sample["net_input"])[0], -1).view(-1, len(task.target_dictionary))
        target = sample["target"].reshape(-1)
        ids, weights = criterion.prior.lookup(target)
        q = F.softmax(weights.float() / 2.0, -1)
        kl = (q * (q.clamp_min(1e-30).log() - lprobs.gather(-1, ids))).sum(-1)
        kl = kl.masked_fill(target.eq(1), 0).unsqueeze(-1)
    _per_token_checks(vec, reduced, sample)
    utils.assert_close_by_norm(vec, 0.5 * ls + 0.5 * 4.0 * kl, rtol=1e-5, what="per-token loss")
    assert logs_vec["d2gpo_kl"].item() == pytest.approx(logs["d2gpo_kl"].item(), rel=1e-5)

    criterion.kd_alpha = 0.0  # kd_alpha = 0: label_smoothed_cross_entropy's column exactly
    with torch.no_grad():
        assert torch.equal(criterion(model, sample, reduce=False)[0], ls)


@pytest.fixture(scope="module")
def distilled(tiny_data, tiny_teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("seq_kd") / "distilled")
    utils.distill_corpus(tiny_data, tiny_teacher, out, ["--beam", "2"])
    return out


def test_seq_kd_per_token_losses_or_a_clear_refusal(tiny_data, distilled):
    _, task, model, criterion = utils.build_in_process([
        tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--distilled-data", distilled,
        "--criterion", "seq_kd", "--label-smoothing", "0.1", "--kd-alpha", "0", "--cpu",
    ])
    sample = utils.first_batch(task)
    assert "distilled" in sample
    model.eval()
    with torch.no_grad():
        reduced, _, logs = criterion(model, sample)
        vec, _, logs_vec = criterion(model, sample, reduce=False)  # alpha = 0: the gold term's losses
        ls = _ls_per_token(task, model, sample)
        _per_token_checks(vec, reduced, sample)
        assert torch.equal(vec, ls)
        assert logs_vec["distilled_loss"].item() == logs["distilled_loss"].item()

        criterion.kd_alpha = 0.5
        with pytest.raises(ValueError, match=r"seq_kd has no per-token losses \(reduce=False\) at --kd-alpha 0.5"):
            criterion(model, sample, reduce=False)
        no_distilled = {k: v for k, v in sample.items() if k != "distilled"}  # the gold term alone
        vec = criterion(model, no_distilled, reduce=False)[0]
        _per_token_checks(vec, criterion(model, no_distilled)[0], sample)


# ------------------------------------------------------------ nat_word_kd at alpha 0
@pytest.fixture(scope="module")
def nat_setup(tmp_path_factory):
    """A joined-dictionary copy task and a briefly trained AR teacher (only its calls matter)."""
    root = tmp_path_factory.mktemp("nat_checks")
    text = utils.make_copy_task(str(root / "text"), n_train=100, n_valid=10, n_test=10)
    data_bin = utils.preprocess(text, str(root / "bin"), extra=["--joined-dictionary"])
    utils.train(data_bin, str(root / "teacher"), max_update=3, extra=["--share-all-embeddings"])
    return data_bin, str(root / "teacher" / "checkpoint_last.pt")


def test_nat_word_kd_at_alpha_0_never_runs_the_teacher(nat_setup):
    from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion

    data_bin, teacher = nat_setup
    _, task, model, criterion = utils.build_in_process([
        data_bin, "--task", "translation_lev_kd", "--noise", "random_mask", "--arch", "cmlm_kd_iwslt_de_en",
        *utils.TINY_NAT_SIZES, "--criterion", "nat_word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0",
        "--teacher-path", teacher, "--cpu", "--max-tokens", "400",
    ])
    calls = []
    for m in task.teacher.models:
        for module in m.modules():
            module.register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(3)
    sample = utils.first_batch(task)
    sample["prev_target"] = task.inject_noise(sample["target"])
    model.eval()
    with torch.no_grad():
        loss, size, logs = criterion(model, sample)
        assert not calls, "the teacher ran at --kd-alpha 0"
        loss_nat, size_nat, logs_nat = LabelSmoothedDualImitationCriterion(task, 0.1)(model, sample)
        assert torch.equal(loss, loss_nat) and size == size_nat
        assert logs == logs_nat  # nat_loss's logs, no kd-loss
        criterion.kd_alpha = 0.5  # the hooks do see a teacher that runs
        assert "kd-loss" in criterion(model, sample)[2] and calls


# ------------------------------------------------------------ teacher accuracy
@pytest.mark.parametrize("student_T", ["1", "2"])  # fused path, unfused path
def test_teacher_and_student_accuracy_from_a_store(tiny_data, store, student_T):
    path, offsets = store
    _, task, model, criterion = _word_kd(
        tiny_data, "--soft-labels", path, "--report-accuracy", "--kd-student-temperature", student_T,
    )
    sample = utils.first_batch(task)
    model.eval()
    with torch.no_grad():
        _, _, logs = criterion(model, sample)
        z_S = model(**sample["net_input"])[0]
    assert criterion.fused_kd(model, sample) == (student_T == "1")
    # from the store's construction: the rows of the batch's sentences where its top-1 is gold
    expected = sum(int(_teacher_right(np.arange(offsets[i], offsets[i + 1])).sum()) for i in sample["id"].tolist())
    mask = sample["target"].ne(1)
    assert logs["teacher_correct"] == expected
    assert logs["kd_tokens"] == logs["total"] == int(mask.sum())
    assert 0 < expected < logs["kd_tokens"]
    assert logs["n_correct"] == int((z_S.argmax(-1) == sample["target"])[mask].sum())


@pytest.mark.parametrize("extra", [[], ["--kd-topk", "4", "--kd-temperature", "3"], ["--kd-student-temperature", "2"]])
def test_teacher_accuracy_of_an_online_teacher(tiny_data, tiny_teacher, extra):
    _, task, model, criterion = _word_kd(tiny_data, "--teacher-path", tiny_teacher, "--report-accuracy", *extra)
    sample = utils.first_batch(task)
    model.eval()
    with torch.no_grad():
        _, _, logs = criterion(model, sample)
        z_T = task.teacher.models[0](**sample["net_input"])[0]
    mask = sample["target"].ne(1)
    expected = int((z_T.argmax(-1) == sample["target"])[mask].sum())
    assert logs["teacher_correct"] == expected and 0 < expected <= int(mask.sum())


def test_reduce_metrics_teacher_accuracy_in_percent():
    from fairseq.logging import metrics

    from fairseq_kd.criterions.word_kd import WordKDCriterion

    logs = [
        {"loss": 4.0, "nll_loss": 3.0, "ntokens": 10, "sample_size": 10, "kd_loss": 2.0, "kd_tokens": 10,
         "teacher_agree": 5, "teacher_correct": 9, "n_correct": 4, "total": 10},
        {"loss": 2.0, "nll_loss": 1.0, "ntokens": 6, "sample_size": 6, "kd_loss": 1.0, "kd_tokens": 6,
         "teacher_agree": 1, "teacher_correct": 3, "n_correct": 4, "total": 6},
    ]
    with metrics.aggregate(new_root=True) as agg:  # only this aggregator: not the process-wide default
        WordKDCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["teacher_accuracy"] == pytest.approx(100.0 * 12 / 16, abs=1e-3)
    assert values["accuracy"] == pytest.approx(100.0 * 8 / 16, abs=1e-3)


def test_fairseq_train_logs_teacher_and_student_accuracy(tiny_data, store, tmp_path):
    path, offsets = store
    proc = utils.train(tiny_data, str(tmp_path / "student"), max_update=12, criterion=[
        "--task", "translation_kd", "--soft-labels", path, "--criterion", "word_kd", "--label-smoothing", "0.1",
        "--report-accuracy",
    ], extra=["--required-batch-size-multiple", "1"])
    records = utils.json_logs(proc.stdout + proc.stderr)
    updates = [r for r in records if "num_updates" in r and "teacher_accuracy" in r and "accuracy" in r]
    assert updates, "teacher_accuracy and accuracy are not both logged"
    for r in updates:
        assert 0 <= float(r["accuracy"]) <= 100 and 60 <= float(r["teacher_accuracy"]) <= 90
    # an epoch sees every train token once: the store's own fraction of right top-1 words
    epochs = [r for r in records if "train_teacher_accuracy" in r]
    assert epochs and "train_accuracy" in epochs[0]
    right = 100.0 * _teacher_right(np.arange(offsets[-1])).sum() / offsets[-1]
    assert float(epochs[0]["train_teacher_accuracy"]) == pytest.approx(right, abs=1e-3)
