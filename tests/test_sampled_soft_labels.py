"""Sampled soft labels (losses.sampled_soft_targets): an unbiased sparse teacher.

The statistical tests draw with fixed seeds, so they are deterministic; their
tolerance is stated in standard errors of the Monte-Carlo mean (5 SE: a correct
estimator fails one such comparison with probability below 1e-6, a biased one
whose bias is larger than that fails always).
"""
import torch
import torch.nn.functional as F

from fairseq_kd import losses

N, V, S = 4, 50, 12  # positions, vocabulary, samples per position
DRAWS = 4000  # independent sampled stores averaged


def _teacher_and_student():
    g = torch.Generator().manual_seed(0)
    # a flat-ish teacher: its top 12 words hold well under all of its mass, so a top-K
    # store is visibly biased
    probs_T = F.softmax(torch.randn(N, V, generator=g, dtype=torch.float64), dim=-1)
    logits_S = torch.randn(N, V, generator=g, dtype=torch.float64)
    return probs_T, logits_S


def test_weights_are_counts_over_samples():
    probs_T, _ = _teacher_and_student()
    g = torch.Generator().manual_seed(1)
    draws = torch.multinomial(probs_T.float(), S, replacement=True, generator=torch.Generator().manual_seed(1))
    ids_T, w_T = losses.sampled_soft_targets(probs_T, S, generator=g)
    assert ids_T.shape == (N, S) and w_T.shape == (N, S)
    assert torch.allclose(w_T.sum(-1), torch.ones(N, dtype=w_T.dtype))
    for n in range(N):
        want = torch.bincount(draws[n], minlength=V).float() / S
        got = torch.zeros(V).index_add_(0, ids_T[n], w_T[n].float())
        assert torch.equal(got, want)
        positive = ids_T[n][w_T[n] > 0]
        assert len(set(positive.tolist())) == len(positive)  # each drawn word once
        assert torch.all(w_T[n][:-1] >= w_T[n][1:])  # by descending count


def test_one_sample_is_one_hot():
    probs_T, _ = _teacher_and_student()
    ids_T, w_T = losses.sampled_soft_targets(probs_T, 1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(w_T, torch.ones(N, 1))


def _mean_loss_and_grad(ids_T, w_T, logits_S):
    """Monte-Carlo mean over DRAWS stores of the KD cross-entropy and its gradient."""
    z = logits_S.clone().requires_grad_(True)
    lprobs = F.log_softmax(z, dim=-1).repeat(DRAWS, 1)  # DRAWS*N x V
    kd = losses.kd_cross_entropy(lprobs, w_T.double(), ids_T).view(DRAWS, N).mean(0)  # N
    (grad,) = torch.autograd.grad(kd.sum(), z)
    return kd.detach(), grad


def test_sampled_loss_and_gradient_are_unbiased():
    probs_T, logits_S = _teacher_and_student()
    lprobs_S = F.log_softmax(logits_S, dim=-1)
    dense = losses.kd_cross_entropy(lprobs_S, probs_T)  # N
    dense_grad = lprobs_S.exp() - probs_T  # d/dz of -sum q log softmax(z)
    ids_T, w_T = losses.sampled_soft_targets(probs_T.repeat(DRAWS, 1), S, generator=torch.Generator().manual_seed(3))
    mean, mean_grad = _mean_loss_and_grad(ids_T, w_T, logits_S)
    draws = DRAWS * S  # the mean is an average of this many single-word losses
    loss_se = ((probs_T * lprobs_S**2).sum(-1) - dense**2).sqrt() / draws**0.5
    grad_se = (probs_T * (1 - probs_T)).sqrt() / draws**0.5
    assert torch.all((mean - dense).abs() <= 5 * loss_se), (mean - dense) / loss_se
    assert torch.all((mean_grad - dense_grad).abs() <= 5 * grad_se + 1e-12)


def test_topk_of_the_same_teacher_is_biased():
    """A renormalized top-12 teacher moves every gradient row by q - q_K, far beyond the
    sampling error of the estimator above (its loss bias depends on the student and
    may be small by chance; its gradient bias does not)."""
    probs_T, logits_S = _teacher_and_student()
    top_T, top_ids = losses.soft_targets(probs_T.log(), topk=S)  # renormalized top-12, as a store holds
    q_K = torch.zeros_like(probs_T).scatter_(-1, top_ids, top_T.double())
    grad_se = (probs_T * (1 - probs_T)).sqrt() / (DRAWS * S) ** 0.5
    bias = (q_K - probs_T).abs()  # = |grad_topK - grad_dense|
    assert torch.all((bias / grad_se).amax(-1) > 20)
    assert probs_T.topk(S, dim=-1).values.sum(-1).max() < 0.7  # the tail the top-K store drops


def test_bad_num_samples():
    probs_T, _ = _teacher_and_student()
    try:
        losses.sampled_soft_targets(probs_T, 0)
    except ValueError as e:
        assert "num_samples" in str(e)
    else:
        raise AssertionError("num_samples 0 accepted")


# ---------------------------------------------------------------- the sampled store (dump)
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import utils  # noqa: E402

from fairseq_kd.cli import dump_soft_labels, merge_shards  # noqa: E402
from fairseq_kd.data.soft_labels import SoftLabelStore  # noqa: E402

BATCHING = ("--max-tokens", "300", "--sort-window", "64")  # several sentences a forward, padded
ARRAYS = ("ids", "logits", "gold_logprob", "offsets")


def _dump(data, path, out, *extra):
    args = dump_soft_labels.build_parser().parse_args([data, "--path", path, "--out", str(out), "--cpu", *BATCHING,
                                                     *extra])
    return dump_soft_labels.run(args)


def _arrays(path):
    return {name: np.load(os.path.join(path, f"{name}.npy")) for name in ARRAYS}


@pytest.fixture(scope="module")
def sampled(tiny_data, tiny_teacher, tmp_path_factory):
    """A 12-sample store of the train split at T = 2 (through the real command), the same
    dumped as 2 shards and merged, another seed, and the top-8 store of the same teacher."""
    root = tmp_path_factory.mktemp("sampled")
    proc = utils.run([utils.command("fairseq-kd-dump-soft-labels"), tiny_data, "--path", tiny_teacher,
                      "--store", "sampled", "--samples", "12", "--temperature", "2", "--out", str(root / "s12"),
                      "--cpu", *BATCHING])
    for shard in (0, 1):
        _dump(tiny_data, tiny_teacher, root / "sharded", "--store", "sampled", "--samples", "12", "--temperature", "2",
              "--num-shards", "2", "--shard-id", str(shard), "--sort-window", "64")
    merge_shards.merge(str(root / "sharded"))
    _dump(tiny_data, tiny_teacher, root / "seed2", "--store", "sampled", "--samples", "12", "--temperature", "2",
          "--seed", "2")
    _dump(tiny_data, tiny_teacher, root / "top8", "--topk", "8")
    return {"stdout": proc.stdout, **{n: str(root / n) for n in ("s12", "sharded", "seed2", "top8")}}


def test_sampled_header_and_weights(sampled):
    header = json.load(open(os.path.join(sampled["s12"], "header.json")))
    assert (header["values"], header["topk"], header["temperature"], header["seed"]) == ("sampled", 12, 2.0, 1)
    store = SoftLabelStore(sampled["s12"])
    assert store.sampled and store.temperature == 2.0
    a = _arrays(sampled["s12"])
    w = np.exp(a["logits"].astype(np.float64) / 2.0)  # T log(count / S) -> count / S (0 where no draw)
    counts = w * 12
    assert np.abs(counts - np.round(counts)).max() < 0.02  # float16 values of whole counts
    assert np.allclose(w.sum(1), 1.0, atol=0.01)
    assert np.all(np.diff(np.round(counts), axis=1) <= 0)  # distinct drawn words first, by count
    # the teacher's own quality does not depend on how the store samples
    assert np.array_equal(a["gold_logprob"], _arrays(sampled["top8"])["gold_logprob"])
    assert "among the 12 draws" in sampled["stdout"] and "--kd-temperature 2" in sampled["stdout"]


def test_sampled_draws_are_reproducible_and_sharding_does_not_change_them(sampled):
    one, merged, other = _arrays(sampled["s12"]), _arrays(sampled["sharded"]), _arrays(sampled["seed2"])
    for name in ARRAYS:
        assert np.array_equal(one[name], merged[name]), name
    assert not np.array_equal(one["ids"], other["ids"])  # another --seed draws other words


def test_sampled_weights_follow_the_teacher(sampled, tiny_data, tiny_teacher):
    """Pooled over the split, a word's mean weight is its teacher probability at T: the
    12-sample weights of the top-1 word average its (tempered) probability."""
    import torch.nn.functional as F
    from fairseq_kd.teacher import load_teacher

    teacher = load_teacher(tiny_teacher, data=tiny_data)
    task = teacher.task
    task.load_dataset("train")
    dataset = task.dataset("train")
    a = _arrays(sampled["s12"])
    w = np.exp(a["logits"].astype(np.float64) / 2.0)
    got, want = [], []
    for i in range(60):
        item = dataset[i]
        src, tgt = item["source"], item["target"]
        prev = torch.cat([tgt.new_tensor([tgt[-1]]), tgt[:-1]])
        with torch.no_grad():
            z = teacher.models[0](src_tokens=src[None], src_lengths=torch.tensor([len(src)]),
                                  prev_output_tokens=prev[None])[0][0].double()
        q = F.softmax(z / 2.0, dim=-1)  # T x V
        rows = slice(int(a["offsets"][i]), int(a["offsets"][i + 1]))
        top = q.argmax(-1).numpy()
        weight_of_top = (w[rows] * (a["ids"][rows] == top[:, None])).sum(1)
        got.extend(weight_of_top)
        want.extend(q.max(-1).values.numpy())
    got, want = np.array(got), np.array(want)
    se = np.sqrt((want * (1 - want)).sum() / 12) / len(want)  # of the mean weight
    assert abs(got.mean() - want.mean()) < 5 * se + 0.01  # float16 rounding of the stored weights


def _cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        dump_soft_labels.cli_main([str(a) for a in argv])
    return exit_.value.code, err.getvalue()


@pytest.mark.parametrize("extra, message", [
    (["--store", "sampled", "--topk", "8"], "--topk is for --store topk"),
    (["--samples", "12"], "--samples is for --store sampled"),
    (["--store", "sampled", "--samples", "0"], "--samples must be > 0"),
])
def test_sampled_refusals(tiny_data, tiny_teacher, tmp_path, extra, message):
    code, err = _cli([tiny_data, "--path", tiny_teacher, "--out", tmp_path / "out", "--cpu", *extra])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "header.json")


# ---------------------------------------------------------------- the student from a sampled store
def _student(data, store, *extra):
    argv = [data, "--task", "translation_kd", "--soft-labels", store, "--criterion", "word_kd", "--kd-alpha", "0.5",
            "--label-smoothing", "0.1", *utils.TINY_TRANSFORMER, "--cpu", *extra]
    return utils.build_in_process(argv)


def test_the_student_distills_the_draws_weights(sampled, tiny_data):
    """The teacher rows of a batch are the stored weights count / S (at --kd-temperature 2,
    the dump's), and the KD term is -sum_v w_v log p_v over the drawn words."""
    _, task, model, criterion = _student(tiny_data, sampled["s12"], "--kd-temperature", "2")
    assert task.teacher_is_sampled()
    model.eval()
    sample = utils.first_batch(task)
    mask = sample["target"].ne(task.target_dictionary.pad())
    probs_T, ids_T, nll_T = task.teacher_soft_targets(sample, model, mask, 2.0, 0)
    a = _arrays(sampled["s12"])
    rows = np.concatenate([np.arange(a["offsets"][i], a["offsets"][i + 1]) for i in sample["id"].tolist()])
    want = torch.from_numpy(np.exp(a["logits"][rows].astype(np.float64) / 2.0))
    assert torch.equal(ids_T, torch.from_numpy(a["ids"][rows]).long())
    assert torch.allclose(probs_T.double(), want / want.sum(-1, keepdim=True), atol=1e-6) and nll_T is None
    loss, sample_size, logs = criterion(model, sample)
    with torch.no_grad():
        lprobs = F.log_softmax(model(**sample["net_input"])[0][mask].float(), dim=-1)  # the student at T 1
    kd = losses.kd_cross_entropy(lprobs, probs_T, ids_T).sum()
    utils.assert_close_by_norm(torch.as_tensor(logs["kd_loss"]), kd, rtol=1e-4, what="kd_loss")


@pytest.mark.parametrize("extra, message", [
    (["--kd-temperature", "1"], "holds words drawn from the teacher at temperature 2"),
    (["--kd-temperature", "2", "--kd-topk", "4"], "--kd-topk would bias them"),
    (["--kd-temperature", "2", "--kd-divergence", "tvd"], "not linear in the teacher's distribution"),
])
def test_the_student_refuses_what_the_draws_cannot_give(sampled, tiny_data, extra, message):
    try:
        _, task, model, criterion = _student(tiny_data, sampled["s12"], *extra)
        sample = utils.first_batch(task)
        criterion(model, sample)
    except ValueError as e:
        assert message in str(e), e
    else:
        raise AssertionError(f"{extra} accepted")


def test_fairseq_train_from_a_sampled_store(sampled, tiny_data, tmp_path):
    proc = utils.train(tiny_data, str(tmp_path / "s"), max_update=40, criterion=(
        "--task", "translation_kd", "--soft-labels", sampled["s12"], "--criterion", "word_kd", "--kd-alpha", "0.5",
        "--kd-temperature", "2", "--label-smoothing", "0.1"))
    logs = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "kd_loss" in r]
    assert len(logs) >= 3 and float(logs[-1]["kd_loss"]) < float(logs[0]["kd_loss"])
    assert "12 draws at T=2" in proc.stdout + proc.stderr
