"""word_kd --kd-on-policy-ratio: on-policy (generalized) distillation (issue 15, section 3).

- translation_kd's decoding (``decode``, ``on_policy_sample``): greedy equals an
  independent full-forward argmax loop sentence by sentence, sampling from the top
  1 word is greedy, the batch layout is fairseq's, no gradient, eval mode restored;
- word_kd in process: at ratio 1 the loss is the gold term on the gold batch plus
  the divergence on the student's own greedy output scored by the teacher, built
  by hand with both models' forwards on that output (values and gradients); at
  ratio 0 (and in validation) the numbers are plain word_kd's; the coin is
  deterministic given the seed and the update;
- fairseq-train at ratio 1 and 0.5 (greedy and sampled): the loss falls, the log
  names the option and shows ``on_policy``; the unsupported combinations are
  refused with one line.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd.tasks.translation_kd import decode
from test_criterion_checks import _no_checkpoint, store  # noqa: F401  (fixture)

PAD, EOS = 1, 2


def _word_kd(data, teacher, *extra):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--dropout", "0", "--task", "translation_kd", "--teacher-path", teacher,
        "--criterion", "word_kd", "--label-smoothing", "0.1", "--cpu", *extra,
    ])


def _greedy_by_hand(model, sample, a=1.2, b=10):
    """Each sentence alone, unpadded, by full forwards over the growing prefix: the words
    up to and including EOS (forced after int(a * source length + b) words)."""
    src = sample["net_input"]["src_tokens"]
    rows = []
    with torch.no_grad():
        for i in range(src.size(0)):
            s = src[i][src[i].ne(PAD)].unsqueeze(0)
            n = s.size(1)
            out = [EOS]
            while out[-1] != EOS or len(out) == 1:
                logits = model(s, torch.tensor([n]), torch.tensor([out]))[0][0, -1]
                logits[PAD] = float("-inf")
                out.append(EOS if len(out) - 1 >= int(a * n + b) else int(logits.argmax()))
            rows.append(out[1:])
    return rows


def _rows(tokens):
    return [row[row.ne(PAD)].tolist() for row in tokens]


def _batch(rows):
    """target and prev_output_tokens (fairseq's layout) of the given token rows."""
    width = max(len(r) for r in rows)
    target = torch.full((len(rows), width), PAD)
    prev = torch.full((len(rows), width), PAD)
    for i, r in enumerate(rows):
        target[i, : len(r)] = torch.tensor(r)
        prev[i, : len(r)] = torch.tensor([EOS] + r[:-1])
    return target, prev


# ------------------------------------------------------------ decoding
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_greedy_decode_equals_a_full_forward_argmax(tiny_data, tiny_teacher, which):
    _, task, model, _ = _word_kd(tiny_data, tiny_teacher)
    model = task.teacher.models[0] if which == "teacher" else model.eval()
    sample = utils.first_batch(task, max_tokens=200)
    max_lens = (1.2 * sample["net_input"]["src_lengths"].double() + 10).long()
    got = decode(model, sample["net_input"], max_lens, EOS, PAD)
    want = _greedy_by_hand(model, sample)
    assert _rows(got) == want
    lengths = [len(r) for r in want]
    if which == "teacher":  # a trained model mostly stops by itself, at varied lengths
        stopped = sum(n - 1 < m for n, m in zip(lengths, max_lens.tolist()))
        assert len(set(lengths)) > 1 and stopped > len(lengths) / 2
    assert got.size(1) == max(lengths)


def test_on_policy_sample_layout_no_gradient_and_eval_mode(tiny_data, tiny_teacher):
    _, task, model, criterion = _word_kd(tiny_data, tiny_teacher, "--kd-on-policy-ratio", "1")
    sample = utils.first_batch(task, max_tokens=200)
    seen = []  # (grad enabled, training) at each decoder call
    hook = model.decoder.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_grad_enabled(), module.training)))
    model.train()
    op = task.on_policy_sample(model, sample)
    hook.remove()
    assert seen and all(state == (False, False) for state in seen)
    assert model.training and model.decoder.training  # restored
    target, prev = op["target"], op["net_input"]["prev_output_tokens"]
    assert target.dtype == torch.long and not target.requires_grad
    rows = _rows(target)
    assert all(r[-1] == EOS and EOS not in r[:-1] for r in rows)
    want_target, want_prev = _batch(rows)
    assert torch.equal(target, want_target) and torch.equal(prev, want_prev)
    assert op["ntokens"] == sum(len(r) for r in rows) and op["nsentences"] == len(rows)
    assert op["net_input"]["src_tokens"] is sample["net_input"]["src_tokens"]
    # sampling from the top 1 word is greedy; a sampled translation follows torch's seed
    model.eval()
    greedy = _rows(task.on_policy_sample(model, sample)["target"])
    assert _rows(task.on_policy_sample(model, sample, sampling=True, topk=1)["target"]) == greedy
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        draws.append(_rows(task.on_policy_sample(model, sample, sampling=True, temperature=2.0)["target"]))
    assert draws[0] == draws[1] and draws[0] != greedy
    short = _rows(task.on_policy_sample(model, sample, max_len_a=0, max_len_b=2)["target"])
    assert all(len(r) <= 3 for r in short)


# ------------------------------------------------------------ the loss, by hand
def _by_hand(task, model, sample, rows, T, alpha, divergence, beta=0.3):
    """(loss, gold LS, gold NLL, KD, teacher NLL of the student's words, agreements, grads)
    from separate forwards: the student on the gold batch, both models on ``rows``."""
    target = sample["target"]
    mask = target.ne(PAD)
    lprobs = F.log_softmax(model(**sample["net_input"])[0][mask], -1)
    nll = -lprobs.gather(-1, target[mask].unsqueeze(-1)).sum()
    eps = 0.1 / (lprobs.size(-1) - 1)
    ls = (1 - 0.1 - eps) * nll + eps * (-lprobs.sum())
    y, prev = _batch(rows)
    net_input = dict(sample["net_input"], prev_output_tokens=prev)
    on = y.ne(PAD)
    z_S = model(**net_input)[0][on]
    with torch.no_grad():
        z_T = task.teacher.models[0](**net_input)[0][on]
    q, p = F.softmax(z_T / T, -1), F.softmax(z_S, -1)
    lp = F.log_softmax(z_S, -1)
    if divergence == "forward_kl":
        kd = -(q * lp).sum()
    else:  # jsd with the teacher's weight beta
        m = beta * q + (1 - beta) * p
        kd = (beta * (q * (q.log() - m.log())).sum(-1) + (1 - beta) * (p * (lp - m.log())).sum(-1)).sum()
    loss = (1 - alpha) * ls + alpha * kd
    teacher_nll = -F.log_softmax(z_T, -1).gather(-1, y[on].unsqueeze(-1)).sum()
    agree = int((z_S.argmax(-1) == z_T.argmax(-1)).sum())
    return loss, ls, nll, kd, teacher_nll, agree, int(on.sum())


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_ratio_one_kd_is_the_divergence_on_the_students_greedy_output(tiny_data, tiny_teacher, divergence):
    alpha, T = 0.4, 2.0
    _, task, model, criterion = _word_kd(
        tiny_data, tiny_teacher, "--kd-on-policy-ratio", "1", "--kd-alpha", str(alpha), "--kd-temperature", str(T),
        "--kd-divergence", divergence, "--kd-beta", "0.3",
    )
    sample = utils.first_batch(task, max_tokens=200)
    model.train()  # dropout 0: train mode for the coin, deterministic forwards
    loss, sample_size, logs = criterion(model, sample)
    rows = _greedy_by_hand(model, sample)
    want, ls, nll, kd, teacher_nll, agree, n = _by_hand(task, model, sample, rows, T, alpha, divergence)
    assert logs["on_policy"] == 1 and logs["batches"] == 1 and logs["on_policy_gen_ms"] > 0
    assert logs["kd_tokens"] == logs["on_policy_tokens"] == n and logs["teacher_tokens"] == 0
    assert logs["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert logs["on_policy_teacher_nll"].item() == pytest.approx(teacher_nll.item(), rel=1e-5)
    assert logs["teacher_agree"] == agree
    # the gold term stays on the gold batch
    assert sample_size == sample["ntokens"] == logs["ntokens"]
    assert logs["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() != pytest.approx(((1 - alpha) * ls).item(), rel=1e-3)  # KD is a real part of it


def test_no_gradient_flows_through_the_generation(tiny_data, tiny_teacher):
    """The criterion's gradients are those of the hand-built loss from two plain forwards on
    fixed integer inputs: none comes from the decoding."""
    alpha = 0.5
    _, task, model, criterion = _word_kd(tiny_data, tiny_teacher, "--kd-on-policy-ratio", "1", "--kd-alpha",
                                         str(alpha))
    sample = utils.first_batch(task, max_tokens=200)
    model.train()
    model.zero_grad()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    rows = _greedy_by_hand(model, sample)
    model.zero_grad()
    want = _by_hand(task, model, sample, rows, 1.0, alpha, "forward_kl")[0]
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    for (name, p), g in zip(model.named_parameters(), got):
        utils.assert_close_by_norm(g, p.grad, rtol=1e-4, atol=1e-6 * total, what=name)


def test_ratio_zero_and_validation_are_plain_word_kd_exactly(tiny_data, tiny_teacher):
    _, task, model, plain = _word_kd(tiny_data, tiny_teacher, "--dropout", "0.3")
    sample = utils.first_batch(task)
    results = {}
    for name, ratio in (("plain", None), ("zero", "0"), ("half", "0.5")):
        extra = [] if ratio is None else ["--kd-on-policy-ratio", ratio]
        criterion = _word_kd(tiny_data, tiny_teacher, "--dropout", "0.3", *extra)[3]
        criterion.task.on_policy_sample = None  # never asked below
        for mode in ("train", "eval"):
            if name == "half" and mode == "train":
                continue
            getattr(model, mode)()
            torch.manual_seed(0)
            loss, size, logs = criterion(model, sample)
            results[name, mode] = (loss.item(), size, logs, torch.rand(1).item())  # the generator is untouched
    for mode in ("train", "eval"):
        assert results["zero", mode][:2] == results["plain", mode][:2]
        assert results["zero", mode][3] == results["plain", mode][3]
        assert results["zero", mode][2].keys() == results["plain", mode][2].keys()
        for key, value in results["plain", mode][2].items():
            assert float(results["zero", mode][2][key]) == float(value), key
    loss, size, logs, _ = results["half", "eval"]  # validation: always the gold batch
    assert (loss, size) == results["plain", "eval"][:2] and logs["on_policy"] == 0 and logs["batches"] == 1
    assert logs["teacher_tokens"] == logs["kd_tokens"] and logs["on_policy_tokens"] == 0
    assert "on_policy" not in results["plain", "eval"][2]


def test_gold_and_on_policy_batches_log_the_same_keys_in_the_same_order(tiny_data, tiny_teacher):
    """fairseq's DDP sums the ranks' logs as one flat buffer in key order: a rank whose batch
    was on-policy and one whose batch was not must log the same keys in the same order
    (found by tests/test_distributed.py: unsorted, rank 0 logged on_policy = 2.0)."""
    _, task, model, criterion = _word_kd(tiny_data, tiny_teacher, "--kd-on-policy-ratio", "1")
    sample = utils.first_batch(task)
    model.train()
    on_policy = criterion(model, sample)[2]
    model.eval()
    gold = criterion(model, sample)[2]
    assert on_policy["on_policy"] == 1 and gold["on_policy"] == 0
    assert list(on_policy) == list(gold)


def test_coin_is_deterministic_given_the_seed_and_the_update(tiny_data, tiny_teacher):
    from fairseq import utils as fairseq_utils

    criterion = _word_kd(tiny_data, tiny_teacher, "--kd-on-policy-ratio", "0.5")[3]

    def coins(seed, updates=60, update_freq=2):
        flips = []
        for update in range(updates):
            fairseq_utils.set_torch_seed(seed + update)  # as fairseq's Trainer._set_seed
            flips.append(tuple(criterion.on_policy_coin() for _ in range(update_freq)))
        return flips

    first = coins(1)
    assert coins(1) == first and coins(2) != first
    fraction = sum(map(sum, first)) / (2 * len(first))
    assert 0.3 < fraction < 0.7
    assert any(a != b for a, b in first)  # the batches of one update flip their own coins
    fairseq_utils.set_torch_seed(3)
    criterion.on_policy_coin()
    after = torch.rand(1)
    fairseq_utils.set_torch_seed(3)
    assert torch.equal(torch.rand(1), after)  # dropout's generator is not drawn from


def test_reduce_metrics_on_policy():
    from fairseq.logging import metrics

    from fairseq_kd.criterions.word_kd import WordKDCriterion, on_policy_logs

    gold = on_policy_logs({"loss": 4.0, "nll_loss": 3.0, "ntokens": 10, "sample_size": 10, "kd_loss": 2.0,
                           "kd_tokens": 10, "teacher_agree": 5, "teacher_correct": 8, "teacher_nll": 1.0})
    on = on_policy_logs({"loss": 2.0, "nll_loss": 1.0, "ntokens": 6, "sample_size": 6, "kd_loss": 3.0,
                         "kd_tokens": 12, "teacher_agree": 7, "on_policy_teacher_nll": 6.0}, gen_ms=30.0)
    assert gold.keys() == on.keys()  # DDP sums equal key sets
    with metrics.aggregate(new_root=True) as agg:
        WordKDCriterion.reduce_metrics([gold, on, dict(gold)])
    got = agg.get_smoothed_values()
    assert got["on_policy"] == pytest.approx(1 / 3, abs=1e-3)
    assert got["on_policy_gen_ms"] == pytest.approx(30.0)
    assert got["kd_loss"] == pytest.approx(7.0 / 32 / math.log(2), abs=1e-3)  # every KD position
    assert got["teacher_agree"] == pytest.approx(100 * 17 / 32, abs=1e-2)
    assert got["teacher_accuracy"] == pytest.approx(100 * 16 / 20, abs=1e-3)  # the gold positions only
    assert got["teacher_nll"] == pytest.approx(2.0 / 20 / math.log(2), abs=1e-3)
    assert got["on_policy_teacher_nll"] == pytest.approx(6.0 / 12 / math.log(2), abs=1e-3)


# ------------------------------------------------------------ fairseq-train
@pytest.mark.parametrize("option", [
    ["--kd-on-policy-ratio", "1"],
    ["--kd-on-policy-ratio", "0.5", "--kd-on-policy-sampling", "--kd-on-policy-topk", "5",
     "--kd-divergence", "jsd"],
])
def test_fairseq_train_on_policy(tiny_data, tiny_teacher, tmp_path, option):
    ratio = float(option[1])
    proc = utils.train(tiny_data, str(tmp_path / "student"), max_update=30, criterion=[
        "--task", "translation_kd", "--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5",
        *option,
    ], extra=["--teacher-path", tiny_teacher])
    out = proc.stdout + proc.stderr
    config = next(line for line in out.splitlines() if "'criterion': {'_name': 'word_kd'" in line)
    assert f"'kd_on_policy_ratio': {ratio}" in config
    assert f"'kd_on_policy_sampling': {'--kd-on-policy-sampling' in option}" in config
    records = [r for r in utils.json_logs(out) if "num_updates" in r and "kd_loss" in r]
    assert len(records) >= 2
    assert float(records[-1]["loss"]) < float(records[0]["loss"])
    assert all(math.isfinite(float(r["kd_loss"])) and math.isfinite(float(r["on_policy_teacher_nll"]))
               for r in records)
    fractions = [float(r["on_policy"]) for r in records]
    gen_ms = [float(r["on_policy_gen_ms"]) for r in records]
    if ratio == 1:
        assert fractions == [1.0] * len(records) and "teacher_accuracy" not in records[-1]
    else:
        assert 0 < sum(fractions) / len(fractions) < 1
    assert all(ms > 0 for ms in gen_ms)


# ------------------------------------------------------------ refusals
@pytest.mark.parametrize("extra,message", [
    (["--kd-selection", "batch"], "--kd-selection batch ranks words by the student's cross-entropy of the gold word"),
    (["--kd-alpha", "0"], "--kd-on-policy-ratio only changes the KD term, which --kd-alpha 0 turns off"),
    (["--ignore-prefix-size", "1"], "--kd-on-policy-ratio decodes the whole target"),
    (["--kd-on-policy-temperature", "0"], "--kd-on-policy-temperature must be > 0"),
    (["--kd-on-policy-ratio", "1.5"], "--kd-on-policy-ratio must be in [0, 1], got 1.5"),
])
def test_unsupported_settings_are_refused(tiny_data, tiny_teacher, extra, message):
    ratio = [] if "--kd-on-policy-ratio" in extra else ["--kd-on-policy-ratio", "0.5"]
    with pytest.raises(ValueError, match=re.escape(message)):
        _word_kd(tiny_data, tiny_teacher, *ratio, *extra)


def test_a_store_cannot_score_the_students_translations(tiny_data, store, tmp_path):
    message = ("--kd-on-policy-ratio needs an online teacher to score the student's own translations: a "
               "soft-label store (--soft-labels) holds the teacher on the gold prefixes only")
    with pytest.raises(ValueError, match=re.escape(message)):
        utils.build_in_process([tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--soft-labels",
                                store[0], "--criterion", "word_kd", "--kd-on-policy-ratio", "0.5", "--cpu"])
    save = tmp_path / "student"
    proc = utils.train(tiny_data, str(save), max_update=5, check=False, criterion=[
        "--task", "translation_kd", "--soft-labels", store[0], "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--kd-on-policy-ratio", "0.5",
    ])
    assert utils.usage_error(proc, message).count(message) == 1
    assert _no_checkpoint(save)
