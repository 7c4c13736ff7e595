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
