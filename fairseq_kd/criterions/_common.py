"""Plumbing shared by the criterions of this folder; registers nothing.

``LabelSmoothedBaseCriterion`` is ``label_smoothed_cross_entropy`` with its
``forward`` cut into the parts that ``word_kd``, ``seq_kd`` and ``d2gpo`` reuse
around the term each adds; ``KDConfig`` (the KD term's weight, temperature and
top-K) and ``KDDivergenceConfig`` (``--kd-divergence``) hold the options that
``word_kd`` and ``nat_word_kd`` share; the functions below check options and
log sums.

``reduce=False``, in every criterion built on it, returns what fairseq's
``label_smoothed_nll_loss`` returns unreduced: one loss per target position,
a (B*T) x 1 column in ``get_lprobs_and_target``'s order (the batch's B x T
target flattened row by row, after ``--ignore-prefix-size``), 0 at pads; the
column sums to the reduced loss. Logging outputs hold sums either way (fairseq
logs the unreduced column itself, which ``reduce_metrics`` cannot sum).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence

from fairseq import utils
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from .. import losses
from ..errors import UsageError


@dataclass
class KDConfig(FairseqDataclass):
    """``--kd-alpha``, ``--kd-temperature`` and ``--kd-topk``, shared by ``word_kd`` and ``nat_word_kd``."""

    kd_alpha: float = field(
        default=0.5,
        metadata={
            "help": "weight of the KD term: (1-alpha)*gold term + alpha*KD (nat_word_kd: within the word_ins "
            "term); 0 = no KD, 1 = pure KD"
        },
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "temperature T applied to the teacher's logits"}
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "keep the teacher's top-K words and renormalize over them; 0 = full "
            "vocabulary (a soft-label store always gives its own K: a smaller K uses its first K, "
            "a larger one is an error)"
        },
    )


@dataclass
class KDDivergenceConfig(FairseqDataclass):
    """``--kd-divergence`` and its parameters, shared by ``word_kd`` and ``nat_word_kd``
    (``losses.kd_divergence``; the README's "Divergence choice" lists the formulas)."""

    kd_divergence: ChoiceEnum(losses.DIVERGENCES) = field(
        default="forward_kl",
        metadata={
            "help": "the KD term: forward_kl (cross-entropy to the teacher, the default), reverse_kl, "
            "jsd (generalized JSD, --kd-beta), skew_forward_kl / skew_reverse_kl (--kd-skew), tvd"
        },
    )
    kd_beta: float = field(
        default=0.5,
        metadata={"help": "jsd: the teacher's weight in the mixture, in [0, 1]; 0.5 is the symmetric JSD, "
                  "0 the forward KL and 1 the reverse KL (as TRL's GKD)"},
    )
    kd_skew: float = field(
        default=0.1,
        metadata={"help": "skew_forward_kl / skew_reverse_kl: the skew a in [0, 1) (DistiLLM uses 0.1); "
                  "0 is the plain KL"},
    )


class LabelSmoothedBaseCriterion(LabelSmoothedCrossEntropyCriterion):
    """``label_smoothed_cross_entropy``'s gold-term logging, for criterions that add a term.

    Not registered: a subclass registers its own name and config.
    """

    def gold_logging_output(self, loss, nll_loss, sample):
        """``(sample_size, logging_output)`` of the gold term, as fairseq's forward writes them.

        ``sample_size`` is ``ntokens`` (the sentences with ``--sentence-avg``).
        """
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": summed_data(loss),
            "nll_loss": summed_data(nll_loss),
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return sample_size, logging_output

    def log_accuracy(self, model, net_output, sample, logging_output: Dict) -> None:
        """With ``--report-accuracy``, add the gold term's ``n_correct`` and ``total``."""
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)


def summed_data(loss):
    """``loss.data`` summed: a reduced loss as it is, an unreduced one (``reduce=False``) summed."""
    return loss.data if loss.dim() == 0 else loss.data.sum()


def check_weight(option: str, value: float) -> None:
    """Raise unless an interpolation weight (``--kd-alpha`` ...) is in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{option} must be in [0, 1], got {value}")


def check_divergence(divergence: str, beta: float, skew: float, topk_teacher: bool) -> None:
    """Raise on a ``--kd-divergence`` setting without a sound definition: ``--kd-beta``
    outside [0, 1], ``--kd-skew`` outside [0, 1), or the reverse KL (``losses.needs_full_teacher``)
    against a teacher known on its top K words only (a store or ``--kd-topk``)."""
    if str(divergence) not in losses.DIVERGENCES:
        raise UsageError(f"--kd-divergence {divergence} is unknown: use one of {', '.join(losses.DIVERGENCES)}")
    check_weight("--kd-beta", beta)
    if not 0.0 <= skew < 1.0:
        raise UsageError(f"--kd-skew must be in [0, 1), got {skew} (a skew of 1 compares a distribution with itself)")
    if topk_teacher and losses.needs_full_teacher(str(divergence), beta, skew):
        setting = {"jsd": " --kd-beta 1", "skew_reverse_kl": " --kd-skew 0"}.get(str(divergence), "")
        raise UsageError(
            f"--kd-divergence {divergence}{setting} is the reverse KL, infinite against a top-K teacher "
            "(--soft-labels or --kd-topk > 0): use an online teacher with --kd-topk 0, or jsd with --kd-beta < 1, "
            "skew_reverse_kl with --kd-skew > 0, or tvd"
        )


def check_sampled_teacher(divergence: str, topk: int) -> None:
    """Raise unless a sampled store (``--store sampled``) is used as it is unbiased:
    with the forward KL (cross-entropy), which is linear in the teacher's q, and all its
    draws (``losses.sampled_soft_targets``)."""
    if divergence != "forward_kl":
        raise UsageError(f"--kd-divergence {divergence} is not linear in the teacher's distribution, so the draws of a "
                         "sampled store (--store sampled) do not estimate it without bias: use forward_kl, or a "
                         "top-K store / an online teacher")
    if topk > 0:
        raise UsageError("a sampled store holds draws from the teacher, not its top K: --kd-topk would bias them; "
                         "remove --kd-topk")


def sum_logs(logging_outputs: Iterable[Dict], key: str):
    """The sum of ``key`` over the logging outputs (0 where it is missing)."""
    return sum(log.get(key, 0) for log in logging_outputs)


def log_per_count_base2(logging_outputs: List[Dict], keys: Sequence[str], count_key: str):
    """Log each summed ``key`` per summed ``count_key``, in base 2 as fairseq logs
    ``nll_loss`` (rounded to 3 places); nothing when the count is 0. Returns the count."""
    count = sum_logs(logging_outputs, count_key)
    if count:
        for key in keys:
            metrics.log_scalar(key, sum_logs(logging_outputs, key) / count / math.log(2), count, round=3)
    return count
