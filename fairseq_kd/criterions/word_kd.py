"""``--criterion word_kd``: word-level knowledge distillation.

Kim & Rush (2016), Sequence-Level Knowledge Distillation (word-level KD);
Hinton et al. (2015) for temperatures; Chen et al. (2020) for top-K soft labels.

    loss = (1 - alpha) * LS-NLL(gold) + alpha * KD
    KD   = sum over non-pad target positions t (EOS included) of
           - sum_v q_t(v) log p_t(v)      [times T^2 with --kd-t2-scaling]
    q_t  = softmax(z_T / T)   (teacher; ensembles average q; top-K renormalized)
    p_t  = softmax(z_S / T_S) (student, full vocabulary)

Normalization follows fairseq's autoregressive criterions: both terms are sums
over target tokens and ``sample_size = ntokens``. With alpha = 0 the loss is
exactly ``label_smoothed_cross_entropy``'s.

When the student's temperature is 1 (the default) the two terms are computed
together by ``losses.gold_and_kd_cross_entropy``: one softmax of the student's
logits, the gradient written into it, no log-probability or q * log p tensors
(BENCHMARKS.md 1); other settings take the plain two-term path.

The teacher comes from the task (``--task translation_kd``, through the teacher
interface ``tasks/_kd_teacher.py``): an online teacher (``--teacher-path``) or a
soft-label store (``--soft-labels``). A batch with
no teacher (validation with a store) is scored on the gold loss alone.
``--kd-topk`` larger than the store's K is an error (at the first batch: the
task loads the store after the criterion is built). With
``--ignore-prefix-size N`` the first N target positions are left out of both
terms.

Logged, unweighted: ``kd_loss`` and ``teacher_nll`` (online teacher) per
token in base 2; ``teacher_agree``, the percent of KD positions where the
student's top-1 word is the teacher's; ``teacher_accuracy``, the percent where
the teacher's top-1 word (the first stored id of a store, the argmax of an
online teacher's q) is the gold word, beside fairseq's student ``accuracy``
on the same positions with ``--report-accuracy``.

``reduce=False`` returns per-token losses as ``label_smoothed_cross_entropy``
does (see ``_common``): (B*T) x 1, 0 at pads, summing to the reduced loss.

Divergence choice (``--kd-divergence``, ``losses.kd_divergence``): ``forward_kl``
(the default) is the cross-entropy above and keeps the fused path; ``reverse_kl``,
``jsd`` (``--kd-beta``, Agarwal et al. 2024), ``skew_forward_kl`` /
``skew_reverse_kl`` (``--kd-skew``, Ko et al. 2024) and ``tvd`` replace
H(q_t, p_t) in KD and take the unfused path. ``--kd-t2-scaling`` multiplies
whichever divergence. Against a top-K teacher (a store or ``--kd-topk``) each is
taken over the K words plus one tail bucket (``losses`` module docstring); the
reverse KL is infinite there and is refused when the criterion is built.

Selective distillation (Wang et al. 2021, ``--kd-selection``): KD is summed only
over the selected positions, the gold term over all of them. The selection
score is the student's cross-entropy of the gold word at temperature 1
(detached). ``batch`` takes the ceil(r * N) highest of the batch's N positions;
``global`` pushes the batch's scores into a FIFO queue of the last
``--kd-selection-queue`` words' scores, then keeps the positions whose score
is at least the queue's ceil(r * Q)-th largest (its 1 - r quantile). The queue
is the criterion's state: not a parameter, not saved in checkpoints (a resumed
run starts with an empty queue), one per rank under DDP (each rank's
threshold comes from its own batches), filled from training batches only
(validation thresholds against it and its own batch without storing them).
Selection takes the unfused path. ``kd_loss``, ``teacher_agree`` and
``teacher_accuracy`` are still over every KD position (what the divergence
is); ``kd_selected_fraction`` is the fraction of them that carried the KD
term.

On-policy (generalized) distillation (``--kd-on-policy-ratio lambda``; GKD,
Agarwal et al., ICLR 2024; ImitKD, Lin et al., EMNLP 2020). With probability
lambda a training batch is on-policy: its KD term is taken on the student's own
translation y' of each source instead of the gold target,

    loss = (1 - alpha) * LS-NLL(gold) + alpha * sum over the non-pad positions t
           of y' (EOS included) of D(q_t, p_t)
    q_t, p_t: teacher and student, both teacher-forced on y'_<t

with D the ``--kd-divergence`` (any of them; ``--kd-temperature``, ``--kd-topk``,
``--kd-student-temperature`` and ``--kd-t2-scaling`` as above). y' is greedy, or
sampled with ``--kd-on-policy-sampling`` (``--kd-on-policy-temperature``,
``--kd-on-policy-topk``), at most ``int(a * source length + b)`` words then EOS
(``--kd-on-policy-max-len-a 1.2``, ``-b 10``). The gold term stays on the gold
batch; ``sample_size`` stays its ``ntokens``.

Who does what. The criterion owns the options and the coin; the task decodes
(``task.on_policy_sample``, the teacher interface: batched and incremental, under
``torch.no_grad()`` with the model in eval mode, its mode restored, so y' is
integer tokens and no gradient flows through the decoding) and its teacher
scores y' as it scores a gold batch (``teacher_soft_targets`` on that batch).
All of it runs inside the criterion's forward, that is inside the task's
``train_step`` (fairseq's ``FairseqTask.train_step`` calls the criterion): the
task needs no criterion option and no ``train_step`` of its own. The student
then runs once over the gold batch and y' stacked (``stacked_forward``), so
that under DDP there is one forward per backward.

The coin is drawn only while training with ``reduce=True`` (validation and
per-token losses are always the gold path, so validation losses compare across
lambda), from numpy seeded with torch's seed, which fairseq's trainer sets to
``--seed`` + the update number before each update, and the batch's index within
the update: deterministic given the seed and the update, and it leaves dropout's
generator alone. Lambda 0 (the default) draws nothing: plain word_kd.

Online teachers only: a soft-label store holds the teacher on the gold prefixes
and cannot score y', so ``--soft-labels`` with lambda > 0 is an error when the
criterion is built; so are ``--kd-alpha 0`` (no KD term to move),
``--ignore-prefix-size`` > 0 (y' has no gold prefix) and ``--kd-selection``
(Wang et al. rank words by the student's cross-entropy of the gold word, which y'
does not have; ranking y' by another score would be another method).

Logged with lambda > 0 (every batch logs the same keys, DDP sums them):
``on_policy``, the fraction of batches that were on-policy; ``on_policy_gen_ms``,
the decoding time of an on-policy batch (wall clock); ``on_policy_teacher_nll``,
the teacher's NLL of the student's words per word (base 2: how good the
teacher finds y'). ``kd_loss`` and ``teacher_agree`` are over every KD position,
gold or on-policy; ``teacher_accuracy`` and ``teacher_nll`` over the gold
positions of gold batches (about (1 - lambda) of them).
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics

from .. import losses
from ..errors import UsageError
from ..tasks._kd_teacher import require_teacher_task
from ._common import (
    KDConfig,
    KDDivergenceConfig,
    LabelSmoothedBaseCriterion,
    check_divergence,
    check_sampled_teacher,
    check_weight,
    log_per_count_base2,
    sum_logs,
    summed_data,
)

SELECTIONS = ("none", "batch", "global")


@dataclass
class WordKDCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig, KDConfig, KDDivergenceConfig):
    kd_student_temperature: float = field(
        default=1.0, metadata={"help": "temperature applied to the student's logits in the KD term"}
    )
    kd_t2_scaling: bool = field(
        default=False,
        metadata={"help": "multiply the KD term by T^2 (Hinton et al. 2015); off as in Chen et al. 2020"},
    )
    kd_selection: ChoiceEnum(SELECTIONS) = field(
        default="none",
        metadata={
            "help": "selective distillation (Wang et al. 2021): KD only on the words of highest student "
            "cross-entropy, the top --kd-selection-ratio of the batch (batch) or above the queue's "
            "1 - ratio quantile (global); none = every word"
        },
    )
    kd_selection_ratio: float = field(
        default=0.5, metadata={"help": "the fraction r in (0, 1] of words that get the KD term"}
    )
    kd_selection_queue: int = field(
        default=30000,
        metadata={"help": "--kd-selection global: the number of recent words whose cross-entropies set the "
                  "threshold (per rank; not saved in checkpoints)"},
    )
    kd_on_policy_ratio: float = field(
        default=0.0,
        metadata={"help": "on-policy distillation (GKD, Agarwal et al. 2024; ImitKD, Lin et al. 2020): the "
                  "probability lambda that a training batch's KD term is taken on the student's own "
                  "translations of its sources, scored by the online teacher; 0 = off"},
    )
    kd_on_policy_sampling: bool = field(
        default=False,
        metadata={"help": "on-policy translations are sampled (--kd-on-policy-temperature, --kd-on-policy-topk) "
                  "instead of greedy"},
    )
    kd_on_policy_temperature: float = field(
        default=1.0, metadata={"help": "--kd-on-policy-sampling: the student's sampling temperature"}
    )
    kd_on_policy_topk: int = field(
        default=0,
        metadata={"help": "--kd-on-policy-sampling: sample from the K most likely words; 0 = all"},
    )
    kd_on_policy_max_len_a: float = field(
        default=1.2,
        metadata={"help": "on-policy translations have at most a * source length + b words (then EOS)"},
    )
    kd_on_policy_max_len_b: int = field(default=10, metadata={"help": "see --kd-on-policy-max-len-a"})


@register_criterion("word_kd", dataclass=WordKDCriterionConfig)
class WordKDCriterion(LabelSmoothedBaseCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_alpha=0.5,
        kd_temperature=1.0,
        kd_student_temperature=1.0,
        kd_topk=0,
        kd_t2_scaling=False,
        kd_divergence="forward_kl",
        kd_beta=0.5,
        kd_skew=0.1,
        kd_selection="none",
        kd_selection_ratio=0.5,
        kd_selection_queue=30000,
        kd_on_policy_ratio=0.0,
        kd_on_policy_sampling=False,
        kd_on_policy_temperature=1.0,
        kd_on_policy_topk=0,
        kd_on_policy_max_len_a=1.2,
        kd_on_policy_max_len_b=10,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        check_weight("--kd-alpha", kd_alpha)
        if kd_temperature <= 0 or kd_student_temperature <= 0:
            raise UsageError("--kd-temperature and --kd-student-temperature must be > 0")
        require_teacher_task(task, "word_kd", "--task translation_kd")
        check_divergence(kd_divergence, kd_beta, kd_skew, topk_teacher=kd_topk > 0 or task.teacher_is_topk())
        if task.teacher_is_sampled():
            check_sampled_teacher(str(kd_divergence), kd_topk)
        if str(kd_selection) not in SELECTIONS:
            raise UsageError(f"--kd-selection {kd_selection} is unknown: use one of {', '.join(SELECTIONS)}")
        if not 0.0 < kd_selection_ratio <= 1.0:
            raise UsageError(f"--kd-selection-ratio must be in (0, 1], got {kd_selection_ratio}")
        if kd_selection_queue < 1:
            raise UsageError(f"--kd-selection-queue must be >= 1, got {kd_selection_queue}")
        check_weight("--kd-on-policy-ratio", kd_on_policy_ratio)
        if kd_on_policy_ratio > 0:
            check_on_policy(task, kd_alpha, str(kd_selection), ignore_prefix_size, kd_on_policy_temperature,
                            kd_on_policy_topk)
        self.kd_on_policy_ratio = kd_on_policy_ratio
        self.on_policy_options = dict(  # on_policy_sample's arguments
            sampling=kd_on_policy_sampling, temperature=kd_on_policy_temperature, topk=kd_on_policy_topk,
            max_len_a=kd_on_policy_max_len_a, max_len_b=kd_on_policy_max_len_b,
        )
        self.coin_seed, self.coin_index = None, 0  # the coin's seed and sub-batch index within it
        self.kd_divergence = str(kd_divergence)
        self.kd_beta = kd_beta
        self.kd_skew = kd_skew
        self.kd_selection = str(kd_selection)
        self.kd_selection_ratio = kd_selection_ratio
        self.kd_selection_queue = kd_selection_queue
        self.selection_queue = None  # global selection: recent words' cross-entropies (not state_dict)
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_student_temperature = kd_student_temperature
        self.kd_topk = kd_topk
        self.kd_t2_scaling = kd_t2_scaling

    def forward(self, model, sample, reduce=True):
        if self.kd_on_policy_ratio > 0:
            if reduce and model.training and self.on_policy_coin():
                return self.forward_on_policy(model, sample)
            loss, sample_size, logging_output = self.forward_gold(model, sample, reduce)
            return loss, sample_size, on_policy_logs(logging_output)
        return self.forward_gold(model, sample, reduce)

    def forward_gold(self, model, sample, reduce=True):
        """The loss on the gold batch: KD at the gold target's positions."""
        self.check_store_topk(sample)
        net_output = model(**sample["net_input"])
        if reduce and self.fused_kd(model, sample):
            return self.forward_fused(model, net_output, sample)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        kd = self.compute_kd(model, net_output, sample, reduce=reduce)
        if kd is not None:
            kd_loss, kd_logs = kd
            loss = losses.interpolate(loss, kd_loss, self.kd_alpha)
            logging_output["loss"] = summed_data(loss)
            logging_output.update(kd_logs)
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def on_policy_coin(self) -> bool:
        """Whether this training batch is on-policy: True with probability ``--kd-on-policy-ratio``.

        Deterministic given ``--seed`` and the update number: fairseq's trainer seeds torch
        with seed + updates before each update (``Trainer._set_seed``), and the coin is drawn
        from a numpy generator seeded with that seed and the batch's index within the
        update, leaving torch's generator (dropout) untouched. The index counts the batches
        of the whole update across data-parallel ranks, ``j * world_size + rank`` for a
        rank's j-th batch (``--update-freq``), the order in which fairseq shards an epoch's
        batches: W ranks with ``--update-freq F`` flip the coins of one process with
        ``--update-freq F*W`` (tests/test_distributed.py), and each rank flips its own.
        """
        seed = torch.initial_seed()
        self.coin_index = self.coin_index + 1 if seed == self.coin_seed else 0
        self.coin_seed = seed
        world, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = distributed_utils.get_data_parallel_world_size(), distributed_utils.get_data_parallel_rank()
        index = self.coin_index * world + rank
        with data_utils.numpy_seed(seed % 2**32, index):
            return bool(np.random.rand() < self.kd_on_policy_ratio)

    def forward_on_policy(self, model, sample):
        """The loss of an on-policy batch: the gold term on the gold batch, KD on the student's
        own translation of it (``task.on_policy_sample``, decoded without gradient) scored by
        the teacher teacher-forced on it. One student forward over both batches stacked
        (each padded on the right to the longer: a causal decoder's outputs at a position do
        not depend on later ones), so that DDP sees one forward per backward."""
        start = time.perf_counter()
        sample_S = self.task.on_policy_sample(model, sample, **self.on_policy_options)
        gen_ms = 1000.0 * (time.perf_counter() - start)
        net_output, net_output_S = stacked_forward(model, sample["net_input"], sample_S["net_input"],
                                                   self.padding_idx)
        loss, nll_loss = self.compute_loss(model, net_output, sample)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        kd_loss, kd_logs = self.compute_kd(model, net_output_S, sample_S, on_policy=True)
        loss = losses.interpolate(loss, kd_loss, self.kd_alpha)
        logging_output["loss"] = summed_data(loss)
        logging_output.update(kd_logs)
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, on_policy_logs(logging_output, gen_ms=gen_ms)

    def check_store_topk(self, sample) -> None:
        """Raise when ``--kd-topk`` asks for more words than the soft-label store holds
        (a size lookup per batch; the store is loaded by the task after this criterion)."""
        soft_labels = sample.get("soft_labels") if sample else None
        if soft_labels is None:
            return
        K = soft_labels["ids"].size(-1)
        if self.kd_topk > K:
            raise UsageError(
                f"--kd-topk {self.kd_topk} is larger than K = {K}, the words per token of the soft-label "
                f"store (--soft-labels): use --kd-topk {K} or less (0 = all {K}), or dump a store with "
                f"fairseq-kd-dump-soft-labels --topk {self.kd_topk}"
            )

    def fused_kd(self, model, sample) -> bool:
        """Whether this batch takes the fused path (``losses.gold_and_kd_cross_entropy``):
        a teacher and alpha > 0, the forward KL without selection, the student's
        temperature 1, no ignored prefix, and logits the student normalizes with a
        plain softmax (no adaptive softmax)."""
        return (
            self.kd_alpha > 0
            and self.kd_divergence == "forward_kl"
            and self.kd_selection == "none"
            and self.kd_student_temperature == 1
            and self.ignore_prefix_size == 0
            and getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is None
            and self.task.has_teacher(sample)
        )

    def forward_fused(self, model, net_output, sample):
        """The same loss and logs as the unfused path, in one pass over the student's
        logits: no log-probabilities, no q * log p product, no extra gradient buffers."""
        target = sample["target"].reshape(-1)
        weight = target.ne(self.padding_idx)  # EOS included
        probs_T, ids_T, teacher_nll = self.task.teacher_soft_targets_all_rows(
            sample, model, temperature=self.kd_temperature, topk=self.kd_topk
        )
        logits_S = net_output[0]
        kd_scale = self.kd_temperature**2 if self.kd_t2_scaling else 1.0
        loss, nll_loss, kd_loss, agree = losses.gold_and_kd_cross_entropy(
            logits_S.view(-1, logits_S.size(-1)).float(), target, probs_T, ids_T, weight,
            self.kd_alpha, self.eps, kd_scale,
        )
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        teacher_correct = losses.teacher_argmax(probs_T, ids_T).eq(target) & weight  # pad rows: weight 0
        logging_output.update(
            kd_loss=(kd_loss * kd_scale).data, kd_tokens=int(weight.sum()), teacher_agree=int(agree.sum()),
            teacher_correct=int(teacher_correct.sum()),
        )
        if teacher_nll is not None:
            logging_output["teacher_nll"] = teacher_nll.data
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def compute_kd(self, model, net_output, sample, reduce=True, on_policy=False):
        """KD term and its unweighted logs, or None without a teacher (the unfused path:
        any student temperature, ignored prefixes, adaptive softmax, ``reduce=False``).

        The term is summed, or with ``reduce=False`` a (B*T') x 1 column laid out as
        ``compute_loss``'s (T' = T minus the ignored prefix), 0 at pads. ``on_policy``:
        ``sample`` is an ``on_policy_sample``, whose target is the student's own words;
        the teacher's NLL of them is logged as ``on_policy_teacher_nll`` and the gold-word
        logs (``teacher_nll``, ``teacher_correct``) are left out.
        """
        if not self.task.has_teacher(sample):
            return None
        target = sample["target"]
        mask = target.ne(self.padding_idx)  # B x T, EOS included
        prefix = self.ignore_prefix_size
        if prefix > 0:
            mask[:, :prefix] = False  # positions the gold term ignores
        probs_T, ids_T, teacher_nll = self.task.teacher_soft_targets(
            sample, model, mask, temperature=self.kd_temperature, topk=self.kd_topk
        )
        logits_S = net_output[0][mask].float()  # N x V
        lprobs_S = F.log_softmax(logits_S / self.kd_student_temperature, dim=-1)
        kd = losses.kd_divergence(lprobs_S, probs_T, ids_T, self.kd_divergence, self.kd_beta, self.kd_skew)  # N
        kd_scale = self.kd_temperature**2 if self.kd_t2_scaling else 1.0
        agree = losses.argmax_agreement(lprobs_S.detach(), probs_T, ids_T)
        gold = target[mask]
        teacher_correct = losses.teacher_argmax(probs_T, ids_T).eq(gold)
        logs = {
            "kd_loss": kd.detach().sum() * kd_scale,  # every KD position, selected or not
            "kd_tokens": int(mask.sum()),
            "teacher_agree": int(agree.sum()),
        }
        if on_policy:
            logs["on_policy_teacher_nll"] = teacher_nll.data
        else:
            logs["teacher_correct"] = int(teacher_correct.sum())
            if teacher_nll is not None:
                logs["teacher_nll"] = teacher_nll.data
        if self.kd_selection != "none":
            selected = self.select(logits_S, lprobs_S, gold, training=model.training)
            kd = kd * selected
            logs["kd_selected"] = int(selected.sum())
        kd_loss = kd.sum() * kd_scale
        if not reduce:  # per position, in the gold term's (B*T') x 1 layout
            kd_loss = kd.new_zeros(mask.shape).masked_scatter(mask, kd * kd_scale)[:, prefix:].reshape(-1, 1)
        return kd_loss, logs

    def select(self, logits_S, lprobs_S, gold, training=True):
        """N booleans, the positions that get the KD term (``--kd-selection``; Wang et al. 2021).

        The score is the student's cross-entropy of the gold word at temperature 1,
        detached. ``global`` pushes the scores into the queue only while training.
        """
        with torch.no_grad():
            if self.kd_student_temperature != 1:
                lprobs_S = F.log_softmax(logits_S, dim=-1)
            ce_S = -lprobs_S.gather(-1, gold.unsqueeze(-1)).squeeze(-1)  # N
            if self.kd_selection == "batch":
                return losses.select_batch(ce_S, self.kd_selection_ratio)
            queue = losses.fifo_push(self.selection_queue, ce_S, self.kd_selection_queue)
            if training:
                self.selection_queue = queue
            return losses.select_global(ce_S, queue, self.kd_selection_ratio)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        reduce_kd_metrics(logging_outputs)


def check_on_policy(task, alpha, selection, ignore_prefix_size, temperature, topk) -> None:
    """Raise one line on a setting that ``--kd-on-policy-ratio`` > 0 cannot train."""
    if not task.teacher_scores_any_prefix():
        raise UsageError(
            "--kd-on-policy-ratio needs an online teacher to score the student's own translations: a soft-label "
            "store (--soft-labels) holds the teacher on the gold prefixes only; give --teacher-path without "
            "--soft-labels, or --kd-on-policy-ratio 0"
        )
    if alpha == 0:
        raise UsageError("--kd-on-policy-ratio only changes the KD term, which --kd-alpha 0 turns off: "
                         "give --kd-alpha > 0 or --kd-on-policy-ratio 0")
    if selection != "none":
        raise UsageError(
            f"--kd-selection {selection} ranks words by the student's cross-entropy of the gold word, which the "
            "student's own translations do not have: use --kd-selection none with --kd-on-policy-ratio > 0"
        )
    if ignore_prefix_size > 0:
        raise UsageError("--kd-on-policy-ratio decodes the whole target, --ignore-prefix-size > 0 expects a gold "
                         "prefix: use one or the other")
    if temperature <= 0 or topk < 0:
        raise UsageError(f"--kd-on-policy-temperature must be > 0 and --kd-on-policy-topk >= 0, got "
                         f"{temperature} and {topk}")


def stacked_forward(model, net_input, net_input_S, pad):
    """``model`` on the gold batch and the student's own batch (same sources) in one forward:
    their ``prev_output_tokens`` (B x T and B x T') padded on the right to one width and
    stacked, the sources repeated. Returns each batch's ``(logits, extra)``, logits cut back
    to B x T and B x T' (a causal decoder's outputs do not depend on later positions)."""
    prev, prev_S = net_input["prev_output_tokens"], net_input_S["prev_output_tokens"]
    width = max(prev.size(1), prev_S.size(1))
    stacked = {k: torch.cat([v, v]) for k, v in net_input.items() if k != "prev_output_tokens"}
    stacked["prev_output_tokens"] = torch.cat([F.pad(p, (0, width - p.size(1)), value=pad) for p in (prev, prev_S)])
    logits, extra = model(**stacked)
    B = prev.size(0)
    return (logits[:B, : prev.size(1)], extra), (logits[B:, : prev_S.size(1)], extra)


# the keys every batch logs with --kd-on-policy-ratio > 0, on-policy or not: fairseq's DDP
# sums the ranks' logs as one flat buffer in key order, so every rank's must have the same
# keys in the same order (on_policy_logs sorts them)
ON_POLICY_KEYS = ("kd_loss", "kd_tokens", "teacher_agree", "teacher_correct", "teacher_nll", "teacher_tokens",
                  "on_policy", "batches", "on_policy_tokens", "on_policy_teacher_nll", "on_policy_gen_ms")


def on_policy_logs(logging_output, gen_ms=None):
    """The logs a batch adds with ``--kd-on-policy-ratio`` > 0: ``on_policy`` (1 for an
    on-policy batch, whose ``gen_ms`` is the decoding time) of ``batches`` (1),
    ``teacher_tokens`` (the gold positions that ``teacher_correct`` / ``teacher_nll`` count:
    the KD positions of a gold batch, none of an on-policy one), ``on_policy_tokens``
    (its KD positions, the student's words) and 0 for every other missing key; the keys
    sorted, so that an on-policy batch's logs and a gold batch's line up in DDP's sum."""
    on_policy = gen_ms is not None
    kd_tokens = logging_output.get("kd_tokens", 0)
    logs = dict.fromkeys(ON_POLICY_KEYS, 0)
    logs.update(logging_output)
    logs.update(
        on_policy=int(on_policy), batches=1, on_policy_gen_ms=gen_ms or 0.0,
        teacher_tokens=0 if on_policy else kd_tokens, on_policy_tokens=kd_tokens if on_policy else 0,
    )
    return dict(sorted(logs.items()))


def reduce_kd_metrics(logging_outputs) -> None:
    """Log kd_loss and teacher_nll per token in base 2, teacher_agree and
    teacher_accuracy in percent of the KD positions (fairseq's ``accuracy`` is
    the student's, with ``--report-accuracy``), and with ``--kd-selection``
    ``kd_selected_fraction``, the fraction of KD positions that carried the term.

    With ``--kd-on-policy-ratio`` > 0 the KD positions of on-policy batches are the
    student's words: ``kd_loss`` and ``teacher_agree`` are over every KD position,
    ``teacher_accuracy`` and ``teacher_nll`` over the gold ones (``teacher_tokens``);
    ``on_policy`` is the fraction of batches that were on-policy, ``on_policy_gen_ms``
    the decoding time of an on-policy batch, ``on_policy_teacher_nll`` the teacher's NLL
    of the student's words, per word in base 2."""
    kd_tokens = log_per_count_base2(logging_outputs, ["kd_loss"], "kd_tokens")
    reduce_on_policy_metrics(logging_outputs)
    if kd_tokens == 0:
        return
    if any("kd_selected" in log for log in logging_outputs):
        selected = sum_logs(logging_outputs, "kd_selected")
        metrics.log_scalar("kd_selected_fraction", selected / kd_tokens, kd_tokens, round=4)
    agree = sum_logs(logging_outputs, "teacher_agree")
    metrics.log_scalar("teacher_agree", 100.0 * agree / kd_tokens, kd_tokens, round=2)
    # the gold positions: the KD positions unless on-policy batches logged their own count
    teacher_tokens = sum(log.get("teacher_tokens", log.get("kd_tokens", 0)) for log in logging_outputs)
    if teacher_tokens == 0:
        return
    # weighted by the positions, so that the mean over a log interval is correct / total, as accuracy
    correct = sum_logs(logging_outputs, "teacher_correct")
    metrics.log_scalar("teacher_accuracy", 100.0 * correct / teacher_tokens, teacher_tokens, round=3)
    if any("teacher_nll" in log for log in logging_outputs):
        nll = sum_logs(logging_outputs, "teacher_nll")
        metrics.log_scalar("teacher_nll", nll / teacher_tokens / math.log(2), teacher_tokens, round=3)


def reduce_on_policy_metrics(logging_outputs) -> None:
    """``on_policy``, ``on_policy_gen_ms`` and ``on_policy_teacher_nll`` (see ``reduce_kd_metrics``)."""
    batches = sum_logs(logging_outputs, "batches")
    if batches == 0:
        return
    on_policy = sum_logs(logging_outputs, "on_policy")
    metrics.log_scalar("on_policy", on_policy / batches, batches, round=3)
    if on_policy:
        gen_ms = sum_logs(logging_outputs, "on_policy_gen_ms")
        metrics.log_scalar("on_policy_gen_ms", gen_ms / on_policy, on_policy, round=1)
    log_per_count_base2(logging_outputs, ["on_policy_teacher_nll"], "on_policy_tokens")
