"""--kd-divergence and --kd-selection (issue 15, sections 1 and 2).

- losses: golden values by hand for every divergence (full vocabulary and a top-K
  teacher with its tail bucket), identities (D(p, p) = 0, skew 0 = plain KL,
  JSD's ends = forward / reverse KL as TRL's GKD), gradcheck, refusals;
  selection (batch, global queue) on hand-made scores;
- word_kd / nat_word_kd in process: the loss equals the formula, the fused path is
  kept for forward_kl without selection, per-token losses, logs;
- fairseq-train for each option on tiny data (the loss falls, the logged config
  names the option) and a clear error for each unsupported combination.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd import losses
from test_criterion_checks import _no_checkpoint, nat_setup, store  # noqa: F401  (fixtures)

OTHERS = ["reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]
ln = math.log


def _lp(p):
    return torch.tensor([p], dtype=torch.float64).log()


def _q(q):
    return torch.tensor([q], dtype=torch.float64)


# ------------------------------------------------------------ golden values, full vocabulary
# q (teacher) = [1/2, 1/2], p (student) = [1/4, 3/4]
FULL_GOLDEN = {
    "forward_kl": 0.5 * ln(4) + 0.5 * ln(4 / 3),  # the cross-entropy H(q, p)
    "reverse_kl": 0.25 * ln(0.5) + 0.75 * ln(1.5),
    # m = [3/8, 5/8]
    "jsd": 0.5 * (0.5 * ln(0.5 / 0.375) + 0.5 * ln(0.5 / 0.625))
    + 0.5 * (0.25 * ln(0.25 / 0.375) + 0.75 * ln(0.75 / 0.625)),
    # a = 0.1: m = 0.1 q + 0.9 p = [0.275, 0.725]
    "skew_forward_kl": 0.5 * ln(0.5 / 0.275) + 0.5 * ln(0.5 / 0.725),
    # m = 0.1 p + 0.9 q = [0.475, 0.525]
    "skew_reverse_kl": 0.25 * ln(0.25 / 0.475) + 0.75 * ln(0.75 / 0.525),
    "tvd": 0.25,
}

# V = 3, p = [1/2, 1/4, 1/4]; a top-2 teacher on ids [1, 0] with q_K = [0.6, 0.4]:
# p_K = [1/4, 1/2], p_tail = 1/4, q_tail = 0
TOPK_GOLDEN = {
    "forward_kl": -(0.6 * ln(0.25) + 0.4 * ln(0.5)),
    # m_K = [0.425, 0.45], m_tail = 0.125
    "jsd": 0.5 * (0.6 * ln(0.6 / 0.425) + 0.4 * ln(0.4 / 0.45))
    + 0.5 * (0.25 * ln(0.25 / 0.425) + 0.5 * ln(0.5 / 0.45) + 0.25 * ln(0.25 / 0.125)),
    # m_K = 0.1 q + 0.9 p = [0.285, 0.49]; the tail adds 0 log 0 = 0
    "skew_forward_kl": 0.6 * ln(0.6 / 0.285) + 0.4 * ln(0.4 / 0.49),
    # m = 0.1 p + 0.9 q: m_K = [0.565, 0.41], m_tail = 0.025
    "skew_reverse_kl": 0.25 * ln(0.25 / 0.565) + 0.5 * ln(0.5 / 0.41) + 0.25 * ln(0.25 / 0.025),
    "tvd": 0.5 * (0.35 + 0.1 + 0.25),
}


@pytest.mark.parametrize("divergence", list(FULL_GOLDEN))
def test_golden_full_vocabulary(divergence):
    got = losses.kd_divergence(_lp([0.25, 0.75]), _q([0.5, 0.5]), None, divergence, beta=0.5, skew=0.1)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(FULL_GOLDEN[divergence], rel=1e-6)


@pytest.mark.parametrize("divergence", list(TOPK_GOLDEN))
def test_golden_topk_with_the_tail_bucket(divergence):
    got = losses.kd_divergence(
        _lp([0.5, 0.25, 0.25]), _q([0.6, 0.4]), torch.tensor([[1, 0]]), divergence, beta=0.5, skew=0.1
    )
    assert got.item() == pytest.approx(TOPK_GOLDEN[divergence], rel=1e-6)


def test_golden_numbers_are_what_the_formulas_give():
    """A guard on the hand computations above: the symmetric JSD is at most log 2 and
    the skew KLs are below the plain ones."""
    assert 0 < FULL_GOLDEN["jsd"] < ln(2)
    kl = 0.5 * ln(4 / 3)
    assert FULL_GOLDEN["forward_kl"] - kl == pytest.approx(ln(2))  # H(q, p) = KL + H(q)
    assert 0 < FULL_GOLDEN["skew_forward_kl"] < kl
    assert 0 < FULL_GOLDEN["skew_reverse_kl"] < FULL_GOLDEN["reverse_kl"]


# ------------------------------------------------------------ identities and limits
def _random(N=5, V=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lp = F.log_softmax(torch.randn(N, V, generator=g, dtype=dtype) * 2, -1)
    q = F.softmax(torch.randn(N, V, generator=g, dtype=dtype) * 2, -1)
    return lp, q


@pytest.mark.parametrize("divergence", OTHERS)
def test_divergence_of_a_distribution_with_itself_is_zero(divergence):
    lp, _ = _random()
    got = losses.kd_divergence(lp, lp.exp(), None, divergence, beta=0.3, skew=0.2)
    assert torch.allclose(got, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    lp, q = _random(seed=1)
    assert (losses.kd_divergence(lp, q, None, divergence, beta=0.3, skew=0.2) > 1e-3).all()


def test_skew_zero_is_the_plain_kl():
    lp, q = _random()
    assert torch.allclose(losses.kd_skew_forward_kl(lp, q, skew=0.0), losses.kd_kl_divergence(lp, q), atol=1e-12)
    assert torch.allclose(losses.kd_skew_reverse_kl(lp, q, skew=0.0), losses.kd_reverse_kl(lp, q), atol=1e-12)
    # a top-K teacher: the skew forward KL at 0 is kd_kl_divergence over the K words
    ids = torch.arange(9).flip(0)[:4].expand(5, 4)
    q_K = q.gather(-1, ids) / q.gather(-1, ids).sum(-1, keepdim=True)
    assert torch.allclose(losses.kd_skew_forward_kl(lp, q_K, ids, 0.0), losses.kd_kl_divergence(lp, q_K, ids), atol=1e-12)
    # and the skew KLs fall towards 0 as the skew grows towards 1
    values = [losses.kd_skew_forward_kl(lp, q, skew=a).sum().item() for a in (0.0, 0.5, 0.9, 0.999)]
    assert values == sorted(values, reverse=True) and values[-1] < 1e-2 * values[0]


def test_jsd_ends_are_forward_and_reverse_kl_as_trl_does():
    """beta = 0 and 1 return KL(q || p) and KL(p || q) exactly (TRL's special cases);
    these are the limits of JSD(beta) / beta and JSD(beta) / (1 - beta), while the
    formula itself tends to 0 at both ends."""
    lp, q = _random()
    forward, reverse = losses.kd_kl_divergence(lp, q), losses.kd_reverse_kl(lp, q)
    assert torch.equal(losses.kd_generalized_jsd(lp, q, beta=0.0), forward)
    assert torch.equal(losses.kd_generalized_jsd(lp, q, beta=1.0), reverse)
    b = 1e-5
    near_0, near_1 = losses.kd_generalized_jsd(lp, q, beta=b), losses.kd_generalized_jsd(lp, q, beta=1 - b)
    assert (near_0 < 1e-3 * forward).all() and (near_1 < 1e-3 * reverse).all()
    utils.assert_close_by_norm(near_0 / b, forward, rtol=1e-3)
    utils.assert_close_by_norm(near_1 / b, reverse, rtol=1e-3)
    # the symmetric JSD is symmetric in p and q, and at most log 2
    sym = losses.kd_generalized_jsd(lp, q, beta=0.5)
    assert torch.allclose(sym, losses.kd_generalized_jsd(q.log(), lp.exp(), beta=0.5), atol=1e-12)
    assert (sym <= ln(2)).all()
    # GKD's convention: beta is the teacher's weight, JSD(beta)(q, p) = JSD(1 - beta)(p, q)
    assert torch.allclose(
        losses.kd_generalized_jsd(lp, q, beta=0.2), losses.kd_generalized_jsd(q.log(), lp.exp(), beta=0.8), atol=1e-12
    )


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"])
def test_topk_with_every_word_equals_the_full_vocabulary(divergence):
    """K = V in a shuffled order: the tail bucket is empty and the values are the full ones."""
    lp, q = _random()
    ids = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(i)) for i in range(5)])
    full = losses.kd_divergence(lp, q, None, divergence, beta=0.3, skew=0.2)
    topk = losses.kd_divergence(lp, q.gather(-1, ids), ids, divergence, beta=0.3, skew=0.2)
    assert torch.allclose(topk, full, atol=1e-10)


def test_forward_kl_is_the_cross_entropy_and_tvd_is_bounded():
    lp, q = _random()
    assert torch.equal(losses.kd_divergence(lp, q), losses.kd_cross_entropy(lp, q))
    tv = losses.kd_total_variation(lp, q)
    assert ((tv > 0) & (tv <= 1)).all()
    # disjoint supports: TV = 1
    assert losses.kd_total_variation(_lp([1.0, 1e-300]), _q([0.0, 1.0])).item() == pytest.approx(1.0)


def test_a_teacher_zero_is_floored_not_infinite():
    """q underflowed to 0 at a word: log q is taken as log 1e-30 (finite value and gradient)."""
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    q = _q([1.0, 0.0])
    for divergence in OTHERS:
        value = losses.kd_divergence(F.log_softmax(z, -1), q, None, divergence)
        (g,) = torch.autograd.grad(value.sum(), z)
        assert torch.isfinite(value).all() and torch.isfinite(g).all(), divergence
    assert losses.kd_reverse_kl(F.log_softmax(z, -1), q).item() == pytest.approx(0.5 * ln(0.5) + 0.5 * ln(0.5 / 1e-30))


@pytest.mark.parametrize("divergence", OTHERS)
@pytest.mark.parametrize("topk", [False, True])
def test_gradcheck(divergence, topk):
    if topk and divergence == "reverse_kl":
        pytest.skip("refused against a top-K teacher (test_reverse_kl_refuses_a_topk_teacher)")
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    q = F.softmax(torch.randn(4, 7, generator=g, dtype=torch.float64) * 2, -1)
    ids = None
    if topk:
        q, ids = losses.soft_targets(q.log(), topk=3)
    assert torch.autograd.gradcheck(
        lambda x: losses.kd_divergence(F.log_softmax(x, -1), q, ids, divergence, beta=0.3, skew=0.2), (z,)
    )


def test_reverse_kl_refuses_a_topk_teacher_and_bad_parameters_are_refused():
    lp, q, ids = _lp([0.5, 0.25, 0.25]), _q([0.6, 0.4]), torch.tensor([[1, 0]])
    for divergence, beta, skew in (("reverse_kl", 0.5, 0.1), ("jsd", 1.0, 0.1), ("skew_reverse_kl", 0.5, 0.0)):
        assert losses.needs_full_teacher(divergence, beta, skew)
        with pytest.raises(ValueError, match="infinite against a top-K teacher"):
            losses.kd_divergence(lp, q, ids, divergence, beta, skew)
    assert not losses.needs_full_teacher("jsd", 0.9, 0.1) and not losses.needs_full_teacher("skew_reverse_kl", 0.5, 0.1)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        losses.kd_generalized_jsd(lp, _q([0.2, 0.3, 0.5]), beta=1.5)
    with pytest.raises(ValueError, match=r"skew must be in \[0, 1\)"):
        losses.kd_skew_forward_kl(lp, _q([0.2, 0.3, 0.5]), skew=1.0)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        losses.kd_divergence(lp, _q([0.2, 0.3, 0.5]), divergence="kl")


# ------------------------------------------------------------ selection on hand-made scores
def test_select_batch_takes_the_top_ratio():
    ce = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 0.2, 0.3, 0.4, 0.6])
    assert losses.select_batch(ce, 0.3).nonzero().view(-1).tolist() == [1, 3, 5]  # ceil(3.0000000000000004) = 3
    assert losses.select_batch(ce, 0.25).nonzero().view(-1).tolist() == [1, 3, 5]  # ceil(2.5) = 3
    assert losses.select_batch(ce, 0.01).nonzero().view(-1).tolist() == [5]  # at least one
    assert losses.select_batch(ce, 1.0).all()
    assert losses.select_batch(torch.zeros(0), 0.5).numel() == 0


def test_fifo_queue_and_global_threshold():
    queue = losses.fifo_push(None, torch.tensor([1.0, 2.0, 3.0]), capacity=5)
    assert queue.tolist() == [1.0, 2.0, 3.0]
    queue = losses.fifo_push(queue, torch.tensor([4.0, 5.0, 6.0]), capacity=5)
    assert queue.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]  # the oldest word left
    # r = 0.4: the ceil(0.4 * 5) = 2nd largest of the queue, 5.0, is the threshold
    batch = torch.tensor([4.0, 5.0, 6.0])
    assert losses.select_global(batch, queue, 0.4).tolist() == [False, True, True]
    # an easy batch against a queue of hard words: nothing above the threshold
    queue = losses.fifo_push(torch.tensor([9.0] * 8), torch.tensor([1.0, 2.0]), capacity=10)
    assert losses.select_global(torch.tensor([1.0, 2.0]), queue, 0.5).tolist() == [False, False]
    # r = 1 selects every word of the batch (its own words are in the queue)
    assert losses.select_global(torch.tensor([1.0, 2.0]), queue, 1.0).all()
    # ties at the threshold are all selected
    assert losses.select_global(torch.tensor([2.0, 2.0, 1.0]), torch.tensor([2.0, 2.0, 1.0]), 0.3).tolist() == [
        True, True, False]


# ------------------------------------------------------------ word_kd in process
def _word_kd(data, *extra):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--cpu", *extra,
    ])


def _by_hand(task, model, sample, T=1.0, T_S=1.0):
    """(z_S, q, nll, ls): the student's logits, the online teacher's q, the student's
    NLL of the gold words and label_smoothed_cross_entropy's loss, at the non-pad positions."""
    target = sample["target"]
    mask = target.ne(task.target_dictionary.pad())
    z_S = model(**sample["net_input"])[0][mask]
    z_T = task.teacher.models[0](**sample["net_input"])[0][mask]
    q = F.softmax(z_T / T, -1)
    lprobs = F.log_softmax(z_S, -1)
    nll = -lprobs.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1)
    eps = 0.1 / (lprobs.size(-1) - 1)
    ls = (1 - 0.1 - eps) * nll + eps * (-lprobs.sum(-1))
    return z_S, q, nll, ls


@pytest.mark.parametrize("divergence", OTHERS)
def test_word_kd_loss_is_the_formula(tiny_data, tiny_teacher, divergence):
    alpha, T, T_S = 0.4, 2.0, 1.5
    _, task, model, criterion = _word_kd(
        tiny_data, "--teacher-path", tiny_teacher, "--kd-alpha", str(alpha), "--kd-temperature", str(T),
        "--kd-student-temperature", str(T_S), "--kd-t2-scaling", "--kd-divergence", divergence,
        "--kd-beta", "0.3", "--kd-skew", "0.2",
    )
    sample = utils.first_batch(task)
    model.eval()
    assert not criterion.fused_kd(model, sample)
    with torch.no_grad():
        loss, _, logs = criterion(model, sample)
        vec, _, _ = criterion(model, sample, reduce=False)
        z_S, q, _, ls = _by_hand(task, model, sample, T)
        p = F.softmax(z_S / T_S, -1).double()
        q = q.double()
        m_jsd = 0.3 * q + 0.7 * p
        kl = lambda a, b: (a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())).sum(-1)  # noqa: E731
        kd = {
            "reverse_kl": kl(p, q),
            "jsd": 0.3 * kl(q, m_jsd) + 0.7 * kl(p, m_jsd),
            "skew_forward_kl": kl(q, 0.2 * q + 0.8 * p),
            "skew_reverse_kl": kl(p, 0.2 * p + 0.8 * q),
            "tvd": 0.5 * (q - p).abs().sum(-1),
        }[divergence].sum() * T * T
    assert loss.item() == pytest.approx(((1 - alpha) * ls.sum() + alpha * kd).item(), rel=1e-5)
    assert logs["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert vec.sum().item() == pytest.approx(loss.item(), rel=1e-5)
    assert "kd_selected" not in logs


def test_forward_kl_keeps_the_fused_path_and_others_leave_it(tiny_data, tiny_teacher):
    _, task, model, criterion = _word_kd(tiny_data, "--teacher-path", tiny_teacher)
    assert criterion.kd_divergence == "forward_kl" and criterion.kd_selection == "none"
    sample = utils.first_batch(task)
    assert criterion.fused_kd(model, sample)
    for option in (["--kd-divergence", "jsd"], ["--kd-selection", "batch"]):
        _, task, model, criterion = _word_kd(tiny_data, "--teacher-path", tiny_teacher, *option)
        assert not criterion.fused_kd(model, utils.first_batch(task))


def test_jsd_and_tvd_from_a_store(tiny_data, store):
    """A top-K store: the divergences over the K ids plus the tail bucket."""
    _, task, model, criterion = _word_kd(tiny_data, "--soft-labels", store[0], "--kd-divergence", "jsd",
                                         "--kd-alpha", "1", "--label-smoothing", "0")
    sample = utils.first_batch(task)
    model.eval()
    mask = sample["target"].ne(1)
    with torch.no_grad():
        loss, _, logs = criterion(model, sample)
        lp = F.log_softmax(model(**sample["net_input"])[0][mask], -1).double()
        ids = sample["soft_labels"]["ids"][mask]
        q = F.softmax(sample["soft_labels"]["logits"][mask].float(), -1).double()
        p_K = lp.gather(-1, ids).exp()
        tail = 1 - p_K.sum(-1)
        m = 0.5 * q + 0.5 * p_K
        want = (0.5 * (q * (q / m).log()).sum(-1) + 0.5 * (p_K * (p_K / m).log()).sum(-1)
                + 0.5 * tail * math.log(2)).sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    criterion.kd_divergence = "tvd"
    with torch.no_grad():
        tv = criterion(model, sample)[0]
    assert tv.item() == pytest.approx((0.5 * ((q - p_K).abs().sum(-1) + tail)).sum().item(), rel=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_batch_selection_puts_kd_on_the_hardest_words_only(tiny_data, tiny_teacher, divergence):
    alpha, ratio = 0.5, 0.3
    _, task, model, criterion = _word_kd(
        tiny_data, "--teacher-path", tiny_teacher, "--kd-alpha", str(alpha), "--kd-divergence", divergence,
        "--kd-selection", "batch", "--kd-selection-ratio", str(ratio),
    )
    sample = utils.first_batch(task)
    model.eval()
    with torch.no_grad():
        loss, _, logs = criterion(model, sample)
        vec, _, _ = criterion(model, sample, reduce=False)
        z_S, q, nll, ls = _by_hand(task, model, sample)
        kd = losses.kd_divergence(F.log_softmax(z_S, -1), q, None, divergence)
    N = nll.numel()
    k = math.ceil(ratio * N - 1e-6)
    selected = torch.zeros(N, dtype=torch.bool)
    selected[nll.argsort(descending=True)[:k]] = True
    assert logs["kd_selected"] == k and logs["kd_tokens"] == N
    assert loss.item() == pytest.approx(((1 - alpha) * ls.sum() + alpha * kd[selected].sum()).item(), rel=1e-5)
    assert logs["kd_loss"].item() == pytest.approx(kd.sum().item(), rel=1e-5)  # logged over every position
    # the gold term is on every word, KD on the selected ones only
    mask = sample["target"].reshape(-1).ne(1)
    assert vec.sum().item() == pytest.approx(loss.item(), rel=1e-5) and vec.view(-1)[~mask].eq(0).all()
    utils.assert_close_by_norm(vec.view(-1)[mask], (1 - alpha) * ls + alpha * kd * selected, rtol=1e-5)


def test_global_selection_queue(tiny_data, tiny_teacher):
    _, task, model, criterion = _word_kd(
        tiny_data, "--teacher-path", tiny_teacher, "--kd-selection", "global", "--kd-selection-ratio", "0.5",
    )
    sample = utils.first_batch(task)
    with torch.no_grad():
        model.eval()  # validation: thresholds against the queue and its batch, stores nothing
        _, _, logs = criterion(model, sample)
        assert criterion.selection_queue is None
        N = logs["kd_tokens"]
        assert N > 50 and logs["kd_selected"] == math.ceil(0.5 * N)  # the batch alone: its own median
        criterion(model, sample)
        assert criterion.selection_queue is None

        criterion.kd_selection_queue = 50
        model.train()
        criterion(model, sample)
    queue = criterion.selection_queue
    assert queue.numel() == 50 and not queue.requires_grad  # the last 50 words of the batch
    assert "selection_queue" not in dict(criterion.state_dict()) and not list(criterion.parameters())
    # the batch against a queue of more hard words than it has: nothing selected
    criterion.kd_selection_queue = 20000
    criterion.selection_queue = torch.full((10000,), 1e3)
    model.eval()
    with torch.no_grad():
        _, _, logs = criterion(model, sample)
    assert logs["kd_selected"] == 0 and criterion.selection_queue.eq(1e3).all()  # eval: nothing pushed
    criterion.selection_queue = torch.zeros(10000)  # against a queue of easy words: every word selected
    with torch.no_grad():
        _, _, logs = criterion(model, sample)
    assert logs["kd_selected"] == N


def test_reduce_metrics_selected_fraction():
    from fairseq.logging import metrics

    from fairseq_kd.criterions.word_kd import WordKDCriterion

    logs = [
        {"loss": 4.0, "nll_loss": 3.0, "ntokens": 10, "sample_size": 10, "kd_loss": 2.0, "kd_tokens": 10,
         "teacher_agree": 5, "teacher_correct": 9, "kd_selected": 3},
        {"loss": 2.0, "nll_loss": 1.0, "ntokens": 6, "sample_size": 6, "kd_loss": 1.0, "kd_tokens": 6,
         "teacher_agree": 1, "teacher_correct": 3, "kd_selected": 5},
    ]
    with metrics.aggregate(new_root=True) as agg:  # only this aggregator: not the process-wide default
        WordKDCriterion.reduce_metrics(logs)
    assert agg.get_smoothed_values()["kd_selected_fraction"] == pytest.approx(8 / 16, abs=1e-4)
    with metrics.aggregate(new_root=True) as agg:  # only this aggregator: not the process-wide default
        WordKDCriterion.reduce_metrics([{k: v for k, v in log.items() if k != "kd_selected"} for log in logs])
    assert "kd_selected_fraction" not in agg.get_smoothed_values()


# ------------------------------------------------------------ unsupported combinations
@pytest.mark.parametrize("extra,message", [
    (["--kd-divergence", "reverse_kl", "--kd-topk", "4"],
     "--kd-divergence reverse_kl is the reverse KL, infinite against a top-K teacher"),
    (["--kd-divergence", "jsd", "--kd-beta", "1", "--kd-topk", "4"],
     "--kd-divergence jsd --kd-beta 1 is the reverse KL"),
    (["--kd-divergence", "skew_reverse_kl", "--kd-skew", "0", "--kd-topk", "4"],
     "--kd-divergence skew_reverse_kl --kd-skew 0 is the reverse KL"),
    (["--kd-beta", "1.5"], r"--kd-beta must be in [0, 1], got 1.5"),
    (["--kd-skew", "1"], r"--kd-skew must be in [0, 1), got 1.0"),
    (["--kd-selection", "batch", "--kd-selection-ratio", "0"], r"--kd-selection-ratio must be in (0, 1], got 0.0"),
    (["--kd-selection", "global", "--kd-selection-ratio", "1.2"], r"--kd-selection-ratio must be in (0, 1]"),
    (["--kd-selection", "global", "--kd-selection-queue", "0"], "--kd-selection-queue must be >= 1"),
])
def test_word_kd_refuses_unsupported_settings(tiny_data, tiny_teacher, extra, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _word_kd(tiny_data, "--teacher-path", tiny_teacher, *extra)


def test_a_store_refuses_reverse_kl(tiny_data, store, tmp_path):
    with pytest.raises(ValueError, match=re.escape("(--soft-labels or --kd-topk > 0): use an online teacher")):
        _word_kd(tiny_data, "--soft-labels", store[0], "--kd-divergence", "reverse_kl")
    save = tmp_path / "student"
    proc = utils.train(tiny_data, str(save), max_update=5, check=False, criterion=[
        "--task", "translation_kd", "--soft-labels", store[0], "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--kd-divergence", "reverse_kl",
    ])
    utils.usage_error(proc, "--kd-divergence reverse_kl is the reverse KL, infinite against a top-K teacher")
    assert _no_checkpoint(save)


# ------------------------------------------------------------ fairseq-train, each option
@pytest.mark.parametrize("option", [
    ["--kd-divergence", "reverse_kl", "--kd-selection", "batch"],
    ["--kd-divergence", "jsd", "--kd-beta", "0.5", "--kd-selection", "global", "--kd-selection-queue", "2000"],
    ["--kd-divergence", "skew_forward_kl", "--kd-skew", "0.1", "--kd-topk", "4"],
    ["--kd-divergence", "skew_reverse_kl", "--kd-skew", "0.1"],
    ["--kd-divergence", "tvd"],
])
def test_fairseq_train_with_each_option(tiny_data, tiny_teacher, tmp_path, option):
    proc = utils.train(tiny_data, str(tmp_path / "student"), max_update=30, criterion=[
        "--task", "translation_kd", "--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5",
        *option,
    ], extra=["--teacher-path", tiny_teacher])
    out = proc.stdout + proc.stderr
    config = next(line for line in out.splitlines() if "'criterion': {'_name': 'word_kd'" in line)
    selection = option[option.index("--kd-selection") + 1] if "--kd-selection" in option else "none"
    assert re.search(rf"'kd_divergence': '?{option[1]}\b", config)
    assert re.search(rf"'kd_selection': '?{selection}\b", config)
    records = [r for r in utils.json_logs(out) if "num_updates" in r and "kd_loss" in r]
    assert len(records) >= 2
    assert float(records[-1]["loss"]) < float(records[0]["loss"])
    assert all(math.isfinite(float(r["kd_loss"])) for r in records)
    if selection == "none":
        assert "kd_selected_fraction" not in records[-1]
    else:
        fraction = float(records[-1]["kd_selected_fraction"])
        assert 0 < fraction <= 1
        if selection == "batch":
            assert fraction == pytest.approx(0.5, abs=0.02)  # ceil(N / 2) of each batch


# ------------------------------------------------------------ nat_word_kd
def _nat(data_bin, teacher, *extra):
    return utils.build_in_process([
        data_bin, "--task", "translation_lev_kd", "--noise", "random_mask", "--arch", "cmlm_kd_iwslt_de_en",
        *utils.TINY_NAT_SIZES, "--criterion", "nat_word_kd", "--label-smoothing", "0.1",
        "--teacher-path", teacher, "--cpu", "--max-tokens", "400", *extra,
    ])


@pytest.mark.parametrize("divergence,topk", [("jsd", "0"), ("skew_reverse_kl", "3"), ("forward_kl", "0")])
def test_nat_word_kd_divergence_is_the_mean_over_kd_positions(nat_setup, divergence, topk):
    data_bin, teacher = nat_setup
    _, task, model, criterion = _nat(data_bin, teacher, "--kd-divergence", divergence, "--kd-topk", topk,
                                     "--kd-temperature", "2")
    torch.manual_seed(3)
    sample = utils.first_batch(task)
    sample["prev_target"] = task.inject_noise(sample["target"])
    model.eval()
    with torch.no_grad():
        _, _, logs = criterion(model, sample)
        outputs = model(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"],
                        sample["prev_target"], sample["target"])
        mask = criterion.kd_positions(outputs["word_ins"], sample["target"])
        probs, ids, _ = task.teacher_soft_targets(sample, model, mask, temperature=2.0, topk=int(topk))
        lp = F.log_softmax(outputs["word_ins"]["out"][mask].float(), -1)
        want = losses.kd_divergence(lp, probs, ids, divergence, 0.5, 0.1).mean()
    assert (ids is None) == (topk == "0")
    assert logs["kd-loss"] == pytest.approx(want.item(), rel=1e-5)
    if divergence == "forward_kl":
        assert logs["kd-loss"] == pytest.approx(losses.kd_cross_entropy(lp, probs, ids).mean().item(), rel=1e-6)


def test_nat_word_kd_refuses_reverse_kl_with_topk(nat_setup):
    data_bin, teacher = nat_setup
    with pytest.raises(ValueError, match=re.escape("--kd-divergence reverse_kl is the reverse KL")):
        _nat(data_bin, teacher, "--kd-divergence", "reverse_kl", "--kd-topk", "4")
    with pytest.raises(ValueError, match=re.escape("--kd-skew must be in [0, 1)")):
        _nat(data_bin, teacher, "--kd-divergence", "skew_forward_kl", "--kd-skew", "-0.1")


def test_nat_word_kd_fairseq_train_with_a_divergence(nat_setup, tmp_path):
    data_bin, teacher = nat_setup
    proc = utils.train(
        data_bin, str(tmp_path / "nat"), max_update=30, arch=["--arch", "cmlm_kd_iwslt_de_en", *utils.TINY_NAT_SIZES],
        criterion=["--criterion", "nat_word_kd", "--label-smoothing", "0.1", "--kd-divergence", "jsd",
                   "--kd-beta", "0.3"],
        extra=["--task", "translation_lev_kd", "--noise", "random_mask", "--teacher-path", teacher],
    )
    out = proc.stdout + proc.stderr
    config = next(line for line in out.splitlines() if "'criterion': {'_name': 'nat_word_kd'" in line)
    assert re.search(r"'kd_divergence': '?jsd\b", config) and "'kd_beta': 0.3" in config
    records = [r for r in utils.json_logs(out) if "num_updates" in r and "kd" in r]
    assert len(records) >= 2 and float(records[-1]["loss"]) < float(records[0]["loss"])
