"""Knowledge-distillation losses as pure tensor functions.

No fairseq import: criterions gather tensors, call these functions and log
each term unweighted. ``_S`` marks student tensors, ``_T`` teacher tensors.
Shapes use N for the number of (flattened, non-pad) target positions, V for
the vocabulary, K for a teacher's top-K and C for classes.

References
- Hinton, Vinyals, Dean (2015), Distilling the Knowledge in a Neural Network:
  soft targets at temperature T, the T^2 factor.
- Kim & Rush (2016), Sequence-Level Knowledge Distillation: word-level KD is
  the cross-entropy between the teacher's and the student's word distributions
  at every target position.
- Chen, Gan, Cheng, Liu, Liu (2020), Distilling Knowledge Learned in BERT for
  Text Generation: the teacher's top-K logits, renormalized over K at
  temperature T, against the student's full-vocabulary log-probabilities.
- Tang, Lu, Liu, Mou, Vechtomova, Lin (2019), Distilling Task-Specific
  Knowledge from BERT into Simple Neural Networks: MSE between logits.
- Agarwal, Vieillard, Zhou, Stanczyk, Ramos Garea, Geist, Bachem (2024), On-Policy
  Distillation of Language Models: Learning from Self-Generated Mistakes (GKD),
  ICLR: the generalized Jensen-Shannon divergence JSD(beta).
- Ko, Kim, Chen, Yun (2024), DistiLLM: Towards Streamlined Distillation for Large
  Language Models, ICML: skew KL and skew reverse KL.
- Wang, Zhang, Zhou, Li, Gu, Zhou, Sun (2021), Selective Knowledge Distillation for
  Neural Machine Translation, ACL: KD on the words of highest student cross-entropy.

Divergences against a top-K teacher. A teacher known on K word ids only (a
soft-label store, or ``--kd-topk``) is a distribution q_K over those K ids
(renormalized: its mass off them is 0). Every divergence below then compares two
distributions over K + 1 buckets: the K ids, and one tail bucket holding all the
other words, with teacher mass q_tail = 0 and student mass p_tail = 1 - sum_K p.
The forward KL keeps its meaning (the tail adds q_tail log(q_tail / p_tail) = 0);
the reverse KL would add p_tail log(p_tail / 0) = infinity, so the reverse KL (and
JSD at beta = 1, skew reverse KL at skew 0, which are the reverse KL) refuse a
top-K teacher.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor


def softmax_(x: Tensor) -> Tensor:
    """softmax over the last axis of a scratch buffer such as a teacher's fresh logits.

    On a CPU it is written into ``x`` itself (float32/float64; returns x): filling a
    new N x V tensor costs more there than the softmax. Elsewhere (where the
    caching allocator makes a new tensor cheap) a new tensor is returned.
    """
    if x.device.type != "cpu":
        return F.softmax(x, dim=-1)
    return torch.ops.aten._softmax.out(x, -1, False, out=x)


def soft_targets(
    logits_T: Union[Tensor, Sequence[Tensor]],
    temperature: float = 1.0,
    topk: int = 0,
    overwrite: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Teacher distribution q from full-vocabulary logits (one model or an ensemble).

    Args:
        logits_T: N x V raw teacher logits, or a sequence of them (an ensemble).
        temperature: T; each model's q_m = softmax(z_m / T).
        topk: K > 0 keeps the K most probable words of the (averaged) q and
            renormalizes over them; 0 keeps the whole vocabulary.
        overwrite: the logits are scratch (e.g. fresh from the teacher's forward)
            and are turned into probabilities in place when float32 (other
            dtypes are copied to float32 either way, and the copy is reused).

    Returns:
        (probs_T, ids_T): N x K probabilities summing to 1 and their N x K word
        ids, or (N x V probabilities, None) when topk = 0.

    An ensemble averages probabilities, q = 1/M sum_m softmax(z_m / T), as
    fairseq's ensemble decoding does. Computed in float32 whatever the
    teacher's dtype.
    """
    if isinstance(logits_T, Tensor):
        logits_T = [logits_T]
    probs_T = None
    for z_T in logits_T:
        scratch = overwrite or z_T.dtype != torch.float32  # a float32 copy is ours as well
        z_T = z_T.float()
        if scratch:
            q_m = softmax_(z_T if temperature == 1 else z_T.div_(temperature))  # N x V
        else:
            q_m = F.softmax(z_T if temperature == 1 else z_T / temperature, dim=-1)  # N x V
        probs_T = q_m if probs_T is None else probs_T.add_(q_m)
    if len(logits_T) > 1:
        probs_T /= len(logits_T)
    if topk <= 0 or topk >= probs_T.size(-1):
        return probs_T, None
    probs_T, ids_T = probs_T.topk(topk, dim=-1)  # N x K, sorted descending
    return probs_T / probs_T.sum(-1, keepdim=True), ids_T


def teacher_targets(
    logits_T: Union[Tensor, Sequence[Tensor]],
    gold: Tensor,
    temperature: float = 1.0,
    topk: int = 0,
    overwrite: bool = False,
) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """``soft_targets`` plus the teacher's own NLL of the gold words.

    Args:
        logits_T, temperature, topk, overwrite: as for :func:`soft_targets`.
        gold: N gold word ids.

    Returns:
        (probs_T, ids_T, nll_T): as ``soft_targets``, and N values
        -log q_1(gold) of the teacher (an ensemble's averaged probabilities) at
        temperature 1 and full vocabulary, whatever T and K are.
    """
    if isinstance(logits_T, Tensor):
        logits_T = [logits_T]
    index = gold.unsqueeze(-1)
    if temperature == 1 and topk <= 0:  # q itself is the temperature-1 distribution
        probs_T, ids_T = soft_targets(logits_T, overwrite=overwrite)
        gold_probs = probs_T.gather(-1, index).squeeze(-1)
    else:  # p_m(gold) = exp(z_gold - logsumexp z), before the logits are overwritten
        gold_probs = sum(
            (z.float().gather(-1, index).squeeze(-1) - torch.logsumexp(z.float(), dim=-1)).exp() for z in logits_T
        ) / len(logits_T)
        probs_T, ids_T = soft_targets(logits_T, temperature, topk, overwrite=overwrite)
    return probs_T, ids_T, -gold_probs.clamp_min(1e-30).log()


def topk_soft_targets(
    ids_T: Tensor, logits_T: Tensor, temperature: float = 1.0, topk: int = 0
) -> Tuple[Tensor, Tensor]:
    """Teacher distribution q from stored top-K logits (the soft-label store).

    Args:
        ids_T: N x K word ids, sorted by descending teacher logit.
        logits_T: N x K raw teacher logits for those ids (any float dtype).
        temperature: T, applied here at training time (the store keeps raw logits).
        topk: use only the first k <= K columns; 0 uses all K.

    Returns:
        (probs_T, ids_T): N x k, q = softmax(z_topk / T). This is exactly the
        full-vocabulary softmax(z / T) restricted to the top k and renormalized,
        so it equals ``soft_targets(z, T, k)`` for a single teacher.
    """
    if topk > 0:
        ids_T, logits_T = ids_T[:, :topk], logits_T[:, :topk]
    return F.softmax(logits_T.float() / temperature, dim=-1), ids_T


def sampled_soft_targets(
    probs_T: Tensor, num_samples: int, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """An unbiased sparse teacher: ``num_samples`` words drawn from q per position.

    Args:
        probs_T: N x V teacher probabilities q (at the dump's temperature; rows sum to 1).
        num_samples: S, draws per position, with replacement.
        generator: the random stream (a seeded ``torch.Generator`` makes a dump reproducible).

    Returns:
        (ids_T, weights_T): N x S word ids and N x S weights w = count / S, the
        distinct drawn words first (by descending count), then slots of weight 0
        (their ids repeat a drawn word). Each row's weights sum to 1.

    Random-sampling KD (Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating
    Knowledge Distillation in LLMs", ACL): with x_1..x_S ~ q,
    E[-sum_v w_v log p_v] = E[-1/S sum_i log p_{x_i}] = -sum_v q_v log p_v, the
    full-vocabulary cross-entropy, and its gradient in the student's logits,
    p - w, has expectation p - q: unbiased where a renormalized top-K q is not.
    Only the cross-entropy (forward KL up to a constant) has this property; the
    other divergences are non-linear in q and refuse a sampled teacher.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    draws = torch.multinomial(probs_T.float(), num_samples, replacement=True, generator=generator)  # N x S
    draws, _ = draws.sort(-1)
    counts = (draws.unsqueeze(-1) == draws.unsqueeze(-2)).sum(-1)  # N x S: how often each slot's word was drawn
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    weights = counts.float().div_(num_samples).masked_fill_(~first, 0.0)  # each distinct word once
    weights, order = weights.sort(dim=-1, descending=True, stable=True)
    return draws.gather(-1, order), weights


def kd_cross_entropy(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """Word-level KD term: the cross-entropy H(q, p) at each position.

    Args:
        lprobs_S: N x V student log-probabilities log p (at the student's temperature).
        probs_T: N x V teacher probabilities q, or N x K when ``ids_T`` is given.
        ids_T: N x K word ids of ``probs_T`` (top-K teacher), or None.

    Returns:
        N losses, KD_n = - sum_v q_nv log p_nv (Kim & Rush 2016, eq. 4; with top-K
        ids the sum runs over the teacher's K words only, as in Chen et al. 2020).
    """
    if ids_T is not None:
        lprobs_S = lprobs_S.gather(-1, ids_T)  # N x K
    return -(probs_T * lprobs_S.float()).sum(-1)


def kd_kl_divergence(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """KL(q || p) at each position: ``kd_cross_entropy`` minus the teacher's entropy.

    Same arguments as :func:`kd_cross_entropy`; returns N values, each >= 0 when
    q is a distribution over the words it covers and p a distribution over V.
    Its gradient in the student equals that of the cross-entropy.
    """
    entropy_T = -(probs_T * probs_T.clamp_min(1e-30).log()).sum(-1)  # N
    return kd_cross_entropy(lprobs_S, probs_T, ids_T) - entropy_T


# Divergence choice (``--kd-divergence``): the names, and the functions that compute them.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")

# log q is taken as log max(q, 1e-30): a teacher probability that underflowed to 0
# (or a word off a top-K teacher's support) costs at most 69 nats a unit of p there
_LOG_FLOOR = 1e-30


def _on_teacher_support(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor]):
    """(lp, q, log_q, tail): the student's log p and the teacher's q and log q on the
    teacher's support (N x V, or N x K with ``ids_T``), and the student's mass off it
    (N values, p_tail = 1 - sum_K p clamped at 0; None for a full-vocabulary teacher).
    In float32 (float64 when an input is)."""
    dtype = torch.promote_types(torch.promote_types(lprobs_S.dtype, probs_T.dtype), torch.float32)  # float32 or 64
    lp = (lprobs_S if ids_T is None else lprobs_S.gather(-1, ids_T)).to(dtype)
    q = probs_T.to(dtype)
    tail = None if ids_T is None else (1.0 - lp.exp().sum(-1)).clamp_min(0.0)
    return lp, q, q.clamp_min(_LOG_FLOOR).log(), tail


def _refuse_topk(ids_T: Optional[Tensor], what: str) -> None:
    if ids_T is not None:
        raise ValueError(
            f"{what} is infinite against a top-K teacher (the student's mass off the K words has teacher "
            "probability 0): it needs the teacher on the whole vocabulary"
        )


def kd_reverse_kl(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """Reverse KL, KL(p || q) = sum_v p_v (log p_v - log q_v), at each position.

    Args:
        lprobs_S: N x V student log-probabilities log p.
        probs_T: N x V teacher probabilities q.
        ids_T: must be None: against a top-K teacher the reverse KL is infinite
            (see the module docstring), a ValueError.

    Returns:
        N values >= 0; mode-seeking (the student is pushed off words the teacher
        finds unlikely), as used by MiniLLM (Gu et al. 2024) and GKD (Agarwal et
        al. 2024) for generation. log q is floored at log 1e-30.
    """
    _refuse_topk(ids_T, "the reverse KL")
    lp, _, log_q, _ = _on_teacher_support(lprobs_S, probs_T, None)
    return (lp.exp() * (lp - log_q)).sum(-1)


def kd_generalized_jsd(
    lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None, beta: float = 0.5
) -> Tensor:
    """Generalized Jensen-Shannon divergence JSD(beta) of GKD (Agarwal et al. 2024, eq. 3).

    Args:
        lprobs_S: N x V student log-probabilities log p.
        probs_T: N x V teacher probabilities q, or N x K with ``ids_T``.
        ids_T: N x K word ids of a top-K teacher, or None.
        beta: in [0, 1], the teacher's weight in the mixture.

    Returns:
        N values, for 0 < beta < 1:
        JSD(beta) = beta KL(q || m) + (1 - beta) KL(p || m),  m = beta q + (1 - beta) p,
        TRL's ``GKDTrainer.generalized_jsd_loss`` convention (teacher weight beta);
        beta = 0.5 is the symmetric Jensen-Shannon divergence, at most log 2.
        At the ends, as TRL does, beta = 0 returns the forward KL(q || p)
        (``kd_kl_divergence``) and beta = 1 the reverse KL(p || q) (``kd_reverse_kl``).
        These are not the formula's values there (it tends to 0 at both ends:
        JSD(beta) ~ beta KL(q || p) as beta -> 0 and ~ (1 - beta) KL(p || q) as
        beta -> 1): the ends are the limits of JSD(beta) / beta and
        JSD(beta) / (1 - beta), a jump in scale that a beta sweep must expect.

    With a top-K teacher (K + 1 buckets, module docstring) the tail bucket adds
    (1 - beta) p_tail log(p_tail / ((1 - beta) p_tail)) = -(1 - beta) log(1 - beta) p_tail;
    beta = 1 (the reverse KL) is refused there.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return kd_kl_divergence(lprobs_S, probs_T, ids_T)
    if beta == 1.0:
        return kd_reverse_kl(lprobs_S, probs_T, ids_T)
    lp, q, log_q, tail = _on_teacher_support(lprobs_S, probs_T, ids_T)
    log_m = torch.logaddexp(log_q + math.log(beta), lp + math.log1p(-beta))
    jsd = beta * (q * (log_q - log_m)).sum(-1) + (1.0 - beta) * (lp.exp() * (lp - log_m)).sum(-1)
    if tail is not None:
        jsd = jsd - (1.0 - beta) * math.log1p(-beta) * tail
    return jsd


def _check_skew(skew: float) -> None:
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")


def kd_skew_forward_kl(
    lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None, skew: float = 0.1
) -> Tensor:
    """Skew KL of DistiLLM (Ko et al. 2024, eq. 3): KL(q || a q + (1 - a) p), a = ``skew``.

    Args:
        lprobs_S, probs_T, ids_T: as for :func:`kd_cross_entropy`.
        skew: a in [0, 1); 0 is the plain forward KL(q || p) (``kd_kl_divergence``),
            and the value falls to 0 as a -> 1 (a = 1 compares q with itself: refused).
            DistiLLM uses a = 0.1.

    Returns:
        N values >= 0, sum_v q_v (log q_v - log(a q_v + (1 - a) p_v)). The mixture
        bounds the ratio q / m by 1 / a, which keeps the gradient finite where
        p is near 0. With a top-K teacher the tail bucket adds q_tail log(...) = 0.
    """
    _check_skew(skew)
    lp, q, log_q, _ = _on_teacher_support(lprobs_S, probs_T, ids_T)
    log_m = lp if skew == 0.0 else torch.logaddexp(log_q + math.log(skew), lp + math.log1p(-skew))
    return (q * (log_q - log_m)).sum(-1)


def kd_skew_reverse_kl(
    lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None, skew: float = 0.1
) -> Tensor:
    """Skew reverse KL of DistiLLM (Ko et al. 2024): KL(p || a p + (1 - a) q), a = ``skew``.

    Args:
        lprobs_S, probs_T, ids_T: as for :func:`kd_cross_entropy`.
        skew: a in [0, 1); 0 is the plain reverse KL(p || q) (``kd_reverse_kl``).

    Returns:
        N values >= 0, sum_v p_v (log p_v - log(a p_v + (1 - a) q_v)). With a
        top-K teacher the tail bucket adds p_tail log(p_tail / (a p_tail)) =
        -log(a) p_tail, finite for a > 0; a = 0 (the reverse KL) is refused there.
    """
    _check_skew(skew)
    if skew == 0.0:
        return kd_reverse_kl(lprobs_S, probs_T, ids_T)
    lp, _, log_q, tail = _on_teacher_support(lprobs_S, probs_T, ids_T)
    log_m = torch.logaddexp(lp + math.log(skew), log_q + math.log1p(-skew))
    skl = (lp.exp() * (lp - log_m)).sum(-1)
    if tail is not None:
        skl = skl - math.log(skew) * tail
    return skl


def kd_total_variation(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """Total variation distance TV(q, p) = 1/2 sum_v |q_v - p_v| at each position.

    Args:
        lprobs_S, probs_T, ids_T: as for :func:`kd_cross_entropy`.

    Returns:
        N values in [0, 1]. With a top-K teacher the tail bucket adds
        1/2 |0 - p_tail| = p_tail / 2. Its gradient in p is sign(p - q) / 2
        (0 where p = q exactly), bounded whatever q is.
    """
    lp, q, _, tail = _on_teacher_support(lprobs_S, probs_T, ids_T)
    tv = 0.5 * (q - lp.exp()).abs().sum(-1)
    return tv if tail is None else tv + 0.5 * tail


def kd_divergence(
    lprobs_S: Tensor,
    probs_T: Tensor,
    ids_T: Optional[Tensor] = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew: float = 0.1,
) -> Tensor:
    """The KD term named by ``divergence`` (one of ``DIVERGENCES``) at each position.

    Args:
        lprobs_S, probs_T, ids_T: as for :func:`kd_cross_entropy`.
        divergence: ``forward_kl`` is the cross-entropy H(q, p) (``kd_cross_entropy``,
            the KL plus the teacher's entropy, which has no gradient); ``reverse_kl``,
            ``jsd`` (with ``beta``), ``skew_forward_kl`` / ``skew_reverse_kl`` (with
            ``skew``) and ``tvd`` are the functions above.

    Returns:
        N values.
    """
    if divergence == "forward_kl":
        return kd_cross_entropy(lprobs_S, probs_T, ids_T)
    if divergence == "reverse_kl":
        return kd_reverse_kl(lprobs_S, probs_T, ids_T)
    if divergence == "jsd":
        return kd_generalized_jsd(lprobs_S, probs_T, ids_T, beta)
    if divergence == "skew_forward_kl":
        return kd_skew_forward_kl(lprobs_S, probs_T, ids_T, skew)
    if divergence == "skew_reverse_kl":
        return kd_skew_reverse_kl(lprobs_S, probs_T, ids_T, skew)
    if divergence == "tvd":
        return kd_total_variation(lprobs_S, probs_T, ids_T)
    raise ValueError(f"unknown divergence {divergence!r}: one of {', '.join(DIVERGENCES)}")


def needs_full_teacher(divergence: str, beta: float = 0.5, skew: float = 0.1) -> bool:
    """Whether ``divergence`` is the reverse KL, infinite against a top-K teacher:
    ``reverse_kl``, ``jsd`` at beta = 1, ``skew_reverse_kl`` at skew 0."""
    return (
        divergence == "reverse_kl"
        or (divergence == "jsd" and beta == 1.0)
        or (divergence == "skew_reverse_kl" and skew == 0.0)
    )


# Selective distillation (Wang et al. 2021): which positions get the KD term.
def _top_fraction_count(n: int, ratio: float) -> int:
    """ceil(ratio * n), at least 1 and at most n (n > 0); rounding noise such as
    0.3 * 10 = 3.0000000000000004 does not add a position."""
    return min(n, max(1, math.ceil(ratio * n - 1e-6)))


def select_batch(ce_S: Tensor, ratio: float) -> Tensor:
    """Batch-level selection: the ceil(ratio * N) positions of highest student cross-entropy.

    Args:
        ce_S: N values, the student's cross-entropy -log p(gold) at each position.
        ratio: r in (0, 1].

    Returns:
        N booleans with exactly ceil(r N) True (at least 1 when N > 0; ties are
        broken by ``topk``'s order).
    """
    selected = torch.zeros_like(ce_S, dtype=torch.bool)
    if ce_S.numel():
        selected[ce_S.topk(_top_fraction_count(ce_S.numel(), ratio)).indices] = True
    return selected


def fifo_push(queue: Optional[Tensor], ce_S: Tensor, capacity: int) -> Tensor:
    """The last ``capacity`` values of ``queue`` (None = empty) followed by ``ce_S`` (detached)."""
    ce_S = ce_S.detach().float().reshape(-1)
    joined = ce_S if queue is None else torch.cat([queue.to(ce_S.device), ce_S])
    return joined[-capacity:]


def select_global(ce_S: Tensor, queue: Tensor, ratio: float) -> Tensor:
    """Global-level selection: the positions whose student cross-entropy is among the
    top r of a queue of recent words' cross-entropies.

    Args:
        ce_S: N values, this batch's student cross-entropies.
        queue: Q values, the recent words' cross-entropies, this batch's included
            (``fifo_push`` before selecting, as Wang et al. do, so that the first batch
            has a threshold).
        ratio: r in (0, 1].

    Returns:
        N booleans, ce_S >= t, where t is the ceil(r Q)-th largest value of the queue
        (its (1 - r) quantile, taken at a queue element). Positions tied at t are all
        selected.
    """
    if not queue.numel():
        return torch.ones_like(ce_S, dtype=torch.bool)
    threshold = queue.topk(_top_fraction_count(queue.numel(), ratio)).values[-1]
    return ce_S >= threshold.to(ce_S.dtype)


def argmax_agreement(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """N booleans: the student's most probable word is the teacher's.

    With ``ids_T`` (top-K, sorted descending) the teacher's argmax is ids_T[:, 0].
    """
    return lprobs_S.argmax(-1) == teacher_argmax(probs_T, ids_T)


def teacher_argmax(probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """N ids: the teacher's most probable word (ids_T[:, 0] for a top-K teacher, sorted descending)."""
    return ids_T[:, 0] if ids_T is not None else probs_T.argmax(-1)


class _GoldAndKDCrossEntropy(torch.autograd.Function):
    """Forward and backward of :func:`gold_and_kd_cross_entropy` (see there)."""

    @staticmethod
    def forward(ctx, logits_S, target, probs_T, ids_T, weight, gold_weight, kd_weight, epsilon):
        V = logits_S.size(-1)
        max_S = logits_S.amax(-1)  # N
        probs_S = torch.softmax(logits_S, dim=-1)  # N x V, the only new N x V tensor
        # log-sum-exp from the softmax: log p_j = z_j - lse at the argmax j, where p_j >= 1/V
        lse = max_S - probs_S.amax(-1).log()
        # the student agrees when the teacher's argmax word has the student's largest logit
        argmax_T = teacher_argmax(probs_T, ids_T)
        agree = logits_S.gather(-1, argmax_T.unsqueeze(-1)).squeeze(-1).ge(max_S) & weight.bool()
        nll = lse - logits_S.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        eps_i = epsilon / (V - 1)
        smooth = V * lse - logits_S.sum(-1)  # - sum_v log p_v
        if ids_T is None:  # q . z row by row, without an N x V product
            qz = torch.bmm(probs_T.unsqueeze(1), logits_S.unsqueeze(2)).view(-1)
        else:
            qz = (probs_T * logits_S.gather(-1, ids_T)).sum(-1)
        kd = lse - qz  # - sum_v q_v log p_v, as sum_v q_v = 1
        gold = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
        loss = (weight * (gold_weight * gold + kd_weight * kd)).sum()
        ctx.probs_S = probs_S  # reused in place by the first backward
        ctx.save_for_backward(logits_S, target, probs_T, ids_T, weight)
        ctx.coefficients = (gold_weight, kd_weight, 1.0 - epsilon - eps_i, eps_i)
        nll_sum, kd_sum = (weight * nll).sum(), (weight * kd).sum()
        ctx.mark_non_differentiable(nll_sum, kd_sum, agree)
        return loss, nll_sum, kd_sum, agree

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *_):
        logits_S, target, probs_T, ids_T, weight = ctx.saved_tensors
        gold_weight, kd_weight, gold_coef, eps_i = ctx.coefficients
        mass = gold_weight + kd_weight
        # d loss_n / d z_n = mass * p - kd_weight * q - gold_weight * (eps_i + gold_coef * onehot(gold)),
        # written into the softmax buffer divided by mass, then scaled row by row.
        grad, ctx.probs_S = ctx.probs_S, None
        if grad is None:  # a second backward through the graph (retain_graph=True)
            grad = torch.softmax(logits_S, dim=-1)
        if kd_weight:
            if ids_T is None:
                grad.add_(probs_T, alpha=-kd_weight / mass)
            else:
                grad.scatter_add_(-1, ids_T, probs_T * (-kd_weight / mass))
        if gold_weight:
            if eps_i:
                grad.sub_(gold_weight * eps_i / mass)
            grad.scatter_add_(
                -1, target.unsqueeze(-1), grad.new_full((grad.size(0), 1), -gold_weight * gold_coef / mass)
            )
        grad.mul_((weight * (grad_loss * mass)).unsqueeze(-1))
        return grad, None, None, None, None, None, None, None


def gold_and_kd_cross_entropy(
    logits_S: Tensor,
    target: Tensor,
    probs_T: Tensor,
    ids_T: Optional[Tensor],
    weight: Tensor,
    alpha: float,
    epsilon: float,
    kd_scale: float = 1.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Label-smoothed NLL and word-level KD of one student distribution, fused.

    Args:
        logits_S: N x V student logits z (float32; the student's temperature is 1).
        target: N gold word ids.
        probs_T: N x V teacher probabilities q, or N x K with ``ids_T``; each row sums to 1.
        ids_T: N x K word ids of a top-K teacher, or None.
        weight: N floats, 1 for a position to score and 0 for a pad.
        alpha: the KD weight; epsilon: fairseq's label smoothing.
        kd_scale: a factor on the KD term (T^2 for Hinton et al.'s scaling).

    Returns:
        (loss, nll, kd, agree): the scalar
        sum_n weight_n [(1 - alpha) LS_n + alpha * kd_scale * KD_n], with
        LS_n = (1 - eps - eps_i) NLL_n + eps_i sum_v -log p_nv, eps_i = eps / (V - 1)
        (fairseq's ``label_smoothed_nll_loss``) and KD_n = -sum_v q_nv log p_nv
        (``kd_cross_entropy``); the weighted sums of NLL_n and KD_n (detached); and
        N booleans, the student's most probable word is the teacher's (at weight-1 rows;
        ``argmax_agreement``).

    The same numbers as ``interpolate(label_smoothed_nll_loss(log_softmax(z)), kd_cross_entropy(...))``
    at a fraction of the memory traffic: the loss is one cross-entropy against the
    mixed target (1 - alpha) LS-onehot + alpha q, so the gradient is p - target row
    by row, written into the softmax buffer, and the only N x V tensor created is
    that softmax (no log-probabilities, no q * log p product, no gradient buffers).
    """
    return _GoldAndKDCrossEntropy.apply(
        logits_S,
        target,
        probs_T.to(logits_S.dtype),
        ids_T,
        weight.to(logits_S.dtype),
        1.0 - alpha,
        alpha * kd_scale,
        epsilon,
    )


def interpolate(loss_gold: Tensor, loss_kd: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * loss_gold + alpha * loss_kd: alpha = 0 is plain training, 1 pure KD."""
    return (1.0 - alpha) * loss_gold + alpha * loss_kd


def logit_mse(logits_S: Tensor, logits_T: Tensor) -> Tensor:
    """Tang et al. (2019) distillation term ||z_T - z_S||_2^2 per example.

    Args:
        logits_S: N x C student logits; logits_T: N x C teacher logits.

    Returns:
        N values, sum_c (z_T,c - z_S,c)^2.
    """
    return (logits_T.float() - logits_S.float()).pow(2).sum(-1)


def logit_mse_objective(
    logits_S: Tensor, logits_T: Tensor, target: Tensor, alpha: float = 0.0
) -> Tuple[Tensor, Tensor, Tensor]:
    """Tang et al. (2019) eq. 2, per example, with unlabelled examples.

    Args:
        logits_S: N x C student logits; logits_T: N x C teacher logits.
        target: N gold classes, -1 where an example has no gold label
            (augmented transfer set).
        alpha: weight of the gold cross-entropy; 0 is BiLSTM_SOFT (pure MSE).

    Returns:
        (loss, ce, mse), each N values:
        loss_n = alpha * CE(z_S,n, y_n) + (1 - alpha) * ||z_T,n - z_S,n||^2 when y_n >= 0,
        loss_n = ||z_T,n - z_S,n||^2 when y_n = -1 (only the teacher knows it);
        ce is 0 where y_n = -1.
    """
    labelled = target >= 0
    ce = F.cross_entropy(logits_S.float(), target.clamp(min=0), reduction="none") * labelled
    mse = logit_mse(logits_S, logits_T)
    loss = torch.where(labelled, alpha * ce + (1.0 - alpha) * mse, mse)
    return loss, ce, mse


def gaussian_rank_weights(k: int, sigma: float = 1.0) -> Tensor:
    """D2GPo prior weights by similarity rank (Li et al. 2020, ICLR).

    Args:
        k: number of ranks; rank 0 is the gold word itself, rank r its r-th
            nearest neighbour by embedding cosine similarity.
        sigma: standard deviation of the Gaussian over ranks.

    Returns:
        k float64 values, the normal density N(r; 0, sigma^2) =
        exp(-r^2 / (2 sigma^2)) / (sigma sqrt(2 pi)), as the paper's code
        (``generate_d2gpo_distribution.py``, gaussian mode, offset 0) stores
        them. The prior is then q_T = softmax(weights / T) over the stored
        candidates (:func:`topk_soft_targets` with the weights as logits).
    """
    if k < 1 or sigma <= 0:
        raise ValueError(f"need k >= 1 and sigma > 0, got k={k}, sigma={sigma}")
    rank = torch.arange(k, dtype=torch.float64)
    return torch.exp(-rank.pow(2) / (2.0 * sigma**2)) / (sigma * (2.0 * torch.pi) ** 0.5)
