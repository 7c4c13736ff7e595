"""``--criterion d2gpo``: the data-dependent Gaussian prior objective.

Li, Wang, Chen, Utiyama, Sumita, Zhang, Zhao (2020), Data-dependent Gaussian
Prior Objective for Language Generation (ICLR).

    loss = (1 - kd_alpha) * LS-NLL(gold) + kd_alpha * T^2 * KL
    KL   = sum over non-pad target positions t (EOS included) of KL(q_t || p_t)
    q_t  = softmax(w[y_t] / T) over the k candidates stored for the gold word y_t
           (w[y](r) = N(r; 0, sigma^2) at similarity rank r, rank 0 = y itself)
    p_t  = softmax(z_S / T_S), the student over the full vocabulary (T_S = 1 by default)

What follows the paper's code (github.com/bcmi220/d2gpo,
``d2gpo_label_smoothed_cross_entropy.py`` with ``--d2gpo-post-softmax`` and
``generate_d2gpo_distribution.py --d2gpo_mode gaussian --d2gpo_gaussian_std 1
--d2gpo_gaussian_offset 0``, as in its WMT'14 script): the stored weights are
the normal density of the rank, used as logits divided by T (``postsoftmax``);
rank 0 is the gold word itself; sigma = 1, alpha = 0.1 (``--kd-alpha``, the
weight of the prior term, as the paper's alpha and as ``--kd-alpha`` weighs
the KD term of every criterion of this plugin), T = 2; the KL term is
scaled by T^2 and summed over tokens with ``sample_size = ntokens``; the
student enters the KL at temperature T_S = 1 (its log-probabilities are the
ones of the NLL term, so the prior term costs no second softmax over V).
``--d2gpo-student-temperature 2`` gives the student at T as in Hinton et
al.'s KD (one more log-softmax over V per step).

Where this differs: the softmax of q runs over the stored top-k candidates
(``fairseq-kd-build-prior --topk``, default 256), not over all V words: the
paper's dense rows give every word beyond the Gaussian's width a weight of
about 0, i.e. a logit of 0, so its q spreads most of its mass uniformly over
the whole vocabulary; with k = V the two are equal.

The prior is a read-only table loaded from ``--d2gpo-prior`` (written by
``fairseq-kd-build-prior``) and held as plain tensors, not buffers: it is
never saved in a checkpoint. It is copied once to the training device.
Works with ``--task translation`` and ``--task translation_kd``.

``reduce=False`` returns per-token losses as ``label_smoothed_cross_entropy``
does (see ``_common``): a (B*T) x 1 column, 0 at pads, summing to the reduced loss.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)

from .. import losses
from ..errors import UsageError
from ..data import prior
from ._common import LabelSmoothedBaseCriterion, check_weight, log_per_count_base2


@dataclass
class D2GPoCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    d2gpo_prior: Optional[str] = field(
        default=None, metadata={"help": "directory of the prior store written by fairseq-kd-build-prior"}
    )
    kd_alpha: float = field(
        default=0.1,
        metadata={"help": "weight of the prior term: (1-kd_alpha)*NLL + kd_alpha*T^2*KL (the paper's alpha, 0.1)"},
    )
    d2gpo_temperature: float = field(
        default=2.0, metadata={"help": "temperature T of the prior q = softmax(weights / T) and the T^2 factor"}
    )
    d2gpo_student_temperature: float = field(
        default=1.0,
        metadata={"help": "temperature of the student in the KL term: 1 as the paper's code (shares the "
                  "NLL term's log-softmax); set it to --d2gpo-temperature for Hinton-style KD"},
    )
    d2gpo_topk: int = field(
        default=0,
        metadata={"help": "use the first k stored candidates of each word; 0 = all of them "
                  "(more than the store holds is an error)"},
    )


@register_criterion("d2gpo", dataclass=D2GPoCriterionConfig)
class D2GPoCriterion(LabelSmoothedBaseCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        d2gpo_prior=None,
        kd_alpha=0.1,
        d2gpo_temperature=2.0,
        d2gpo_student_temperature=1.0,
        d2gpo_topk=0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not d2gpo_prior:
            raise UsageError("--criterion d2gpo needs --d2gpo-prior DIR (written by fairseq-kd-build-prior)")
        check_weight("--kd-alpha", kd_alpha)
        if d2gpo_temperature <= 0 or d2gpo_student_temperature <= 0:
            raise UsageError("--d2gpo-temperature and --d2gpo-student-temperature must be > 0")
        # Raises StoreError naming the store when it was built for another dictionary.
        self.prior = prior.load(d2gpo_prior, task.target_dictionary)
        if d2gpo_topk > self.prior.k:
            raise UsageError(
                f"--d2gpo-topk {d2gpo_topk} is larger than k = {self.prior.k}, the candidates per word of the "
                f"prior store {d2gpo_prior}: use --d2gpo-topk {self.prior.k} or less (0 = all {self.prior.k}), "
                f"or rebuild the prior with fairseq-kd-build-prior --topk {d2gpo_topk}"
            )
        self.kd_alpha = kd_alpha
        self.temperature = d2gpo_temperature
        self.student_temperature = d2gpo_student_temperature
        self.topk = d2gpo_topk

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)  # B*T x V, B*T
        loss, nll_loss = label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=reduce
        )
        kl = self.compute_prior_kl(lprobs, net_output, target)  # B*T, 0 at pads
        # reduce=False: per position, as label_smoothed_nll_loss's B*T x 1 column
        kl_sum = kl.sum()
        kl_term = kl_sum if reduce else kl.unsqueeze(-1)
        loss = losses.interpolate(loss, self.temperature**2 * kl_term, self.kd_alpha)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        logging_output["d2gpo_kl"] = kl_sum.data
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def compute_prior_kl(self, lprobs, net_output, target):
        """B*T values KL(q_t || p_t), 0 at pads (unweighted by kd_alpha and T^2).

        ``lprobs`` (B*T x V) and ``target`` (B*T) are the NLL term's; every row is
        computed (a pad row looks up the pad's one-candidate prior) and pad rows are
        zeroed, which is cheaper than copying the non-pad rows of a B*T x V tensor.
        """
        if self.student_temperature == 1.0:
            lprobs_S = lprobs
        else:
            logits_S = net_output[0][:, self.ignore_prefix_size:]  # B x T x V
            lprobs_S = F.log_softmax(logits_S.float() / self.student_temperature, dim=-1)
            lprobs_S = lprobs_S.reshape(-1, lprobs_S.size(-1))
        ids, weights = self.prior.lookup(target)  # B*T x k each
        probs_T, ids_T = losses.topk_soft_targets(ids, weights, self.temperature, self.topk)
        kl = losses.kd_kl_divergence(lprobs_S, probs_T, ids_T)  # B*T
        return kl.masked_fill(target.eq(self.padding_idx), 0.0)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        # per token, in base 2 like nll_loss; unweighted by kd_alpha and T^2
        log_per_count_base2(logging_outputs, ["d2gpo_kl"], "ntokens")
