"""Golden values and identities for fairseq_kd.losses (pure tensor functions)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_kd import losses


def log(x):
    return torch.tensor(x, dtype=torch.float64).log()


def test_soft_targets_full_vocab_is_softmax():
    probs, ids = losses.soft_targets(log([[1.0, 2.0, 1.0]]))
    assert ids is None
    assert torch.allclose(probs, torch.tensor([[0.25, 0.5, 0.25]]))


def test_soft_targets_temperature():
    # softmax([0, ln 4] / 2) = softmax([0, ln 2]) = [1/3, 2/3]
    probs, _ = losses.soft_targets(torch.tensor([[0.0, math.log(4.0)]]), temperature=2.0)
    assert torch.allclose(probs, torch.tensor([[1 / 3, 2 / 3]]))


def test_soft_targets_topk_renormalizes():
    # q = [1/6, 1/2, 1/3]: top-2 ids [1, 2], renormalized [0.6, 0.4]
    probs, ids = losses.soft_targets(log([[1.0, 3.0, 2.0]]), topk=2)
    assert ids.tolist() == [[1, 2]]
    assert torch.allclose(probs, torch.tensor([[0.6, 0.4]]))


def test_soft_targets_ensemble_averages_probabilities():
    z1 = torch.tensor([[0.0, 0.0]])  # [0.5, 0.5]
    z2 = torch.tensor([[math.log(3.0), 0.0]])  # [0.75, 0.25]
    probs, _ = losses.soft_targets([z1, z2])
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375]]))


def test_topk_soft_targets_equals_full_softmax_restricted():
    torch.manual_seed(0)
    z = torch.randn(5, 50) * 3
    for T in (1.0, 10.0):
        full_probs, full_ids = losses.soft_targets(z, temperature=T, topk=8)
        top_logits, top_ids = z.topk(8, dim=-1)
        probs, ids = losses.topk_soft_targets(top_ids, top_logits.half(), temperature=T)
        assert torch.equal(ids, full_ids)
        assert torch.allclose(probs, full_probs, atol=2e-3)
        # a smaller k uses the first k stored columns
        probs4, ids4 = losses.topk_soft_targets(top_ids, top_logits, temperature=T, topk=4)
        assert torch.equal(ids4, full_ids[:, :4])
        assert torch.allclose(probs4, losses.soft_targets(z, temperature=T, topk=4)[0], atol=1e-6)


def test_kd_cross_entropy_golden():
    q = torch.tensor([[0.25, 0.5, 0.25]])
    lp = log([[0.5, 0.25, 0.25]]).float()
    expected = -(0.25 * math.log(0.5) + 0.5 * math.log(0.25) + 0.25 * math.log(0.25))
    assert losses.kd_cross_entropy(lp, q).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.2130076, rel=1e-6)
    # top-K: q over ids [1, 2] = [0.6, 0.4] -> -(0.6 + 0.4) ln 0.25 = ln 4
    ce = losses.kd_cross_entropy(lp, torch.tensor([[0.6, 0.4]]), torch.tensor([[1, 2]]))
    assert ce.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_kl_of_identical_distributions_is_zero_and_golden_otherwise():
    torch.manual_seed(0)
    lp = F.log_softmax(torch.randn(4, 11), dim=-1)
    assert torch.allclose(losses.kd_kl_divergence(lp, lp.exp()), torch.zeros(4), atol=1e-6)
    q = torch.tensor([[0.25, 0.5, 0.25]])
    kl = losses.kd_kl_divergence(log([[0.5, 0.25, 0.25]]).float(), q)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_kl_and_cross_entropy_have_the_same_student_gradient():
    torch.manual_seed(0)
    z = torch.randn(3, 7, requires_grad=True)
    q = F.softmax(torch.randn(3, 7), dim=-1)
    g_ce = torch.autograd.grad(losses.kd_cross_entropy(F.log_softmax(z, -1), q).sum(), z)[0]
    g_kl = torch.autograd.grad(losses.kd_kl_divergence(F.log_softmax(z, -1), q).sum(), z)[0]
    assert torch.allclose(g_ce, g_kl, atol=1e-6)
    # and the gradient of H(q, softmax(z)) w.r.t. z is softmax(z) - q
    assert torch.allclose(g_ce, F.softmax(z, -1).detach() - q, atol=1e-6)


def test_argmax_agreement():
    lp = log([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]).float()
    q = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    assert losses.argmax_agreement(lp, q).tolist() == [True, False]
    assert losses.argmax_agreement(lp, q[:, :2], torch.tensor([[2, 0], [2, 0]])).tolist() == [False, True]


def test_interpolate_limits():
    gold, kd = torch.tensor(3.0), torch.tensor(5.0)
    assert losses.interpolate(gold, kd, 0.0).item() == 3.0
    assert losses.interpolate(gold, kd, 1.0).item() == 5.0
    assert losses.interpolate(gold, kd, 0.25).item() == pytest.approx(3.5)


def test_logit_mse_golden():
    z_S = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z_T = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert losses.logit_mse(z_S, z_T).tolist() == [5.0, 9.0]


def _reference_gold_and_kd(z, target, q, ids, weight, alpha, eps, kd_scale):
    """The unfused formula: fairseq's label_smoothed_nll_loss + kd_cross_entropy."""
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    lp = F.log_softmax(z, -1)
    ls, nll = label_smoothed_nll_loss(lp, target, eps, ignore_index=-1, reduce=False)
    kd = losses.kd_cross_entropy(lp, q, ids)
    loss = (weight * ((1 - alpha) * ls.view(-1) + alpha * kd_scale * kd)).sum()
    return loss, (weight * nll.view(-1)).sum(), (weight * kd).sum()


@pytest.mark.parametrize("topk", [0, 3])
@pytest.mark.parametrize("alpha,eps,kd_scale", [(0.5, 0.1, 1.0), (1.0, 0.0, 1.0), (0.3, 0.0, 4.0), (0.0, 0.1, 1.0)])
def test_gold_and_kd_cross_entropy_equals_the_unfused_formula(topk, alpha, eps, kd_scale):
    torch.manual_seed(0)
    N, V = 6, 11
    z = torch.randn(N, V, dtype=torch.float64) * 3
    target = torch.randint(0, V, (N,))
    weight = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.float64)
    # a teacher that shares some of the student's argmaxes
    q, ids = losses.soft_targets(z + 2.5 * torch.randn(N, V, dtype=torch.float64), temperature=2.0, topk=topk)
    z_ref, z_fused = z.clone().requires_grad_(), z.clone().requires_grad_()
    ref = _reference_gold_and_kd(z_ref, target, q, ids, weight, alpha, eps, kd_scale)
    loss, nll, kd, agree = losses.gold_and_kd_cross_entropy(z_fused, target, q, ids, weight, alpha, eps, kd_scale)
    for got, want in zip((loss, nll, kd), ref):
        assert got.item() == pytest.approx(want.item(), rel=1e-6)  # kd_cross_entropy sums in float32
    expected_agree = losses.argmax_agreement(z, q, ids) & weight.bool()
    assert agree.tolist() == expected_agree.tolist() and 0 < int(expected_agree.sum()) < 4
    ref[0].backward()
    (2.5 * loss).backward()  # the upstream gradient scales every row
    assert torch.allclose(z_fused.grad, 2.5 * z_ref.grad, atol=1e-6)
    assert z_fused.grad[2].abs().max().item() == 0.0  # a weight-0 row gets no gradient


def test_gold_and_kd_cross_entropy_gradcheck_and_second_backward():
    torch.manual_seed(1)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    q = F.softmax(torch.randn(4, 5, dtype=torch.float64), -1)
    target, weight = torch.tensor([0, 4, 2, 1]), torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: losses.gold_and_kd_cross_entropy(x, target, q, None, weight, 0.4, 0.1)[0], (z,)
    )
    loss = losses.gold_and_kd_cross_entropy(z, target, q, None, weight, 0.4, 0.1)[0]
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward()  # the first backward reused the softmax buffer; the second recomputes it
    assert torch.allclose(z.grad, 2 * first, atol=1e-12)


def test_gold_and_kd_cross_entropy_golden():
    # V = 2, no smoothing, alpha = 0.5: z = [0, ln 3] -> p = [1/4, 3/4]; gold 1; q = [1/2, 1/2]
    z = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    loss, nll, kd, _ = losses.gold_and_kd_cross_entropy(
        z, torch.tensor([1]), torch.tensor([[0.5, 0.5]]), None, torch.ones(1), 0.5, 0.0
    )
    assert nll.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    assert kd.item() == pytest.approx(0.5 * math.log(4) + 0.5 * math.log(4 / 3), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * nll.item() + 0.5 * kd.item(), rel=1e-6)
    loss.backward()  # p - (0.5 onehot(1) + 0.5 q) = [1/4 - 1/4, 3/4 - 3/4] = 0
    assert z.grad.abs().max().item() < 1e-7


def test_softmax_in_place_and_overwriting_soft_targets():
    torch.manual_seed(2)
    z = torch.randn(5, 9) * 4
    scratch = z.clone()
    out = losses.softmax_(scratch)
    assert out.data_ptr() == scratch.data_ptr() and torch.allclose(out, F.softmax(z, -1), atol=1e-7)
    kept = z.clone()
    for T, k in ((1.0, 0), (3.0, 0), (2.0, 4)):
        want = losses.soft_targets([z, 2 * z], T, k)
        assert torch.equal(z, kept)  # without overwrite the caller's logits are left alone
        losses.soft_targets(z.half(), T, k)
        got = losses.soft_targets([z.clone(), 2 * z.clone()], T, k, overwrite=True)
        assert torch.allclose(got[0], want[0], atol=1e-6)
        assert (got[1] is None and want[1] is None) or torch.equal(got[1], want[1])


@pytest.mark.parametrize("T,k", [(1.0, 0), (3.0, 0), (1.0, 4), (2.0, 4)])
def test_teacher_targets_nll_is_at_temperature_one_and_full_vocabulary(T, k):
    torch.manual_seed(3)
    z1, z2 = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3
    gold = torch.randint(0, 10, (6,))
    probs, ids, nll = losses.teacher_targets([z1.clone(), z2.clone()], gold, T, k, overwrite=True)
    want_probs, want_ids = losses.soft_targets([z1, z2], T, k)
    assert torch.allclose(probs, want_probs, atol=1e-6)
    p1 = (F.softmax(z1, -1) + F.softmax(z2, -1)) / 2
    assert torch.allclose(nll, -p1.gather(-1, gold[:, None]).squeeze(-1).log(), atol=1e-5)
