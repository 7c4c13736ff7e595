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
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def soft_targets(
    logits_T: Union[Tensor, Sequence[Tensor]],
    temperature: float = 1.0,
    topk: int = 0,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Teacher distribution q from full-vocabulary logits (one model or an ensemble).

    Args:
        logits_T: N x V raw teacher logits, or a sequence of them (an ensemble).
        temperature: T; each model's q_m = softmax(z_m / T).
        topk: K > 0 keeps the K most probable words of the (averaged) q and
            renormalizes over them; 0 keeps the whole vocabulary.

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
        z_T = z_T.float()
        q_m = F.softmax(z_T if temperature == 1 else z_T / temperature, dim=-1)  # N x V
        probs_T = q_m if probs_T is None else probs_T + q_m
    probs_T = probs_T / len(logits_T)
    if topk <= 0 or topk >= probs_T.size(-1):
        return probs_T, None
    probs_T, ids_T = probs_T.topk(topk, dim=-1)  # N x K, sorted descending
    return probs_T / probs_T.sum(-1, keepdim=True), ids_T


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


def argmax_agreement(lprobs_S: Tensor, probs_T: Tensor, ids_T: Optional[Tensor] = None) -> Tensor:
    """N booleans: the student's most probable word is the teacher's.

    With ``ids_T`` (top-K, sorted descending) the teacher's argmax is ids_T[:, 0].
    """
    argmax_T = ids_T[:, 0] if ids_T is not None else probs_T.argmax(-1)
    return lprobs_S.argmax(-1) == argmax_T


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
