"""The teacher interface of the KD tasks: what a KD criterion may ask its task for.

Registers nothing: the leading underscore keeps this module out of the task
modules that ``--user-dir`` (fairseq's ``import_tasks``) and this folder's
``__init__`` import.

:class:`TeacherTask` is a mixin that ``translation_kd`` and
``translation_lev_kd`` put before their fairseq task class. It owns

- the one ``--teacher-path`` option (:class:`TeacherConfig`) and its setup:
  ``setup_task`` runs the task's own checks (``check_kd_config``), checks the
  teacher checkpoints before the dictionaries are read and loads the frozen
  teacher (``TeacherEnsemble``) once the task exists;
- what a criterion asks (``word_kd``, ``nat_word_kd``, ``seq_kd``), never by
  probing the task's attributes or reading its config:

  ``has_teacher(sample)``          this batch has a teacher distribution
  ``teacher_soft_targets(...)``    its rows at the positions of a B x T mask
  ``teacher_soft_targets_all_rows(...)``   every position's row, pads included
  ``teacher_is_topk()``            the teacher is known on its top-K words only
  ``teacher_is_sampled()``         ... on words drawn from it (a sampled store)
  ``has_distilled_targets()``      training batches carry ``sample["distilled"]``
  ``teacher_scores_any_prefix()``  the teacher can score prefixes not in the data
  ``on_policy_sample(...)``        the batch with the student's own translations as
                                   targets (on-policy distillation), no gradient

Both ``teacher_soft_targets`` methods return one :class:`SoftTargets`; given an
``on_policy_sample`` they return the teacher's distribution on the student's
own prefixes (the sample carries no soft labels, so an online teacher scores it). Rows
are the teacher's distribution over the word at a position of
``sample["target"]`` (each task maps its own target frame to the teacher's:
``translation_lev_kd`` shifts past ``<s>``). Criterions refuse a task without
the interface with :func:`require_teacher_task`.
"""
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from .. import losses
from ..errors import UsageError
from ..teacher import TeacherEnsemble, check_files_exist, load_teacher, split_paths


class SoftTargets(NamedTuple):
    """The teacher's distribution at N target positions (rows).

    probs_T: N x K probabilities of the words ``ids_T`` (a top-K teacher: a
        soft-label store or ``--kd-topk``, renormalized over the K words), or
        N x V over the whole vocabulary when ``ids_T`` is None; float32.
    ids_T: N x K word ids of ``probs_T``, or None (full vocabulary).
    teacher_nll: 0-dim, the teacher's NLL of the gold words at temperature 1
        and full vocabulary, summed over the non-pad rows; None when only the
        teacher's top-K logits are known (a soft-label store).
    """

    probs_T: Tensor
    ids_T: Optional[Tensor]
    teacher_nll: Optional[Tensor]


@dataclass
class TeacherConfig(FairseqDataclass):
    """``--teacher-path``, the online teacher of every KD task (put it first among the
    config's bases so that its field follows the fairseq task's in ``--help``)."""

    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "fairseq checkpoint(s) of an online teacher trained with --task translation on the "
            "student's dictionaries, colon-separated for an ensemble (probabilities are averaged)"
        },
    )


class TeacherTask:
    """The teacher interface (see the module docstring); a mixin before a fairseq task class.

    ``self.teacher`` is the online teacher (None without ``--teacher-path``): frozen,
    owned by the task, never a submodule of the student or the criterion.
    """

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.teacher: Optional[TeacherEnsemble] = None

    # ----------------------------------------------------------------- setup
    @classmethod
    def setup_task(cls, cfg, **kwargs):
        # Fail before anything is read, trained or written when an input is missing or wrong.
        if cfg.teacher_path:
            check_files_exist(split_paths(cfg.teacher_path))
        cls.check_kd_config(cfg)
        task = super().setup_task(cfg, **kwargs)
        if cfg.teacher_path:
            task.teacher = load_teacher(cfg.teacher_path, task=task)
        return task

    @classmethod
    def check_kd_config(cls, cfg) -> None:
        """The task's own checks of its KD options, before the task is built (raise on an error)."""

    # ------------------------------------------------------------- interface
    def has_teacher(self, sample) -> bool:
        """Whether ``sample`` has a teacher distribution (else the criterion scores it on gold alone)."""
        return self.teacher is not None

    def teacher_is_topk(self) -> bool:
        """Whether the teacher is known on its top-K words only (then no divergence that
        needs the teacher's whole distribution, such as the reverse KL, is defined)."""
        return False

    def teacher_is_sampled(self) -> bool:
        """Whether the teacher is a sampled store's draws (``--store sampled``): an unbiased
        estimate of the full distribution for the cross-entropy (forward KL) only, at the
        dump's temperature only, with all its columns (no ``--kd-topk``)."""
        return False

    def has_distilled_targets(self) -> bool:
        """Whether the training batches carry the teacher's output (``sample["distilled"]``)."""
        return False

    def teacher_soft_targets(self, sample, model, mask, temperature=1.0, topk=0) -> SoftTargets:
        """The teacher's distribution at the positions of ``sample["target"]`` where ``mask``
        (B x T booleans) is True: N = mask.sum() rows in row-major order.

        ``model`` is the student, whose device and dtype an online teacher follows;
        ``temperature`` and ``topk`` are the criterion's (``losses.soft_targets``).
        Ask :meth:`has_teacher` first: a batch without a teacher is an error here.
        """
        raise NotImplementedError(f"{type(self).__name__} has no teacher_soft_targets")

    def teacher_soft_targets_all_rows(self, sample, model, temperature=1.0, topk=0) -> SoftTargets:
        """:meth:`teacher_soft_targets` at every position of the B x T target: B*T rows,
        pads included (finite; the caller weights them 0), ``teacher_nll`` summed over the
        non-pad ones. No row gathering: cheaper for a full-vocabulary teacher."""
        raise NotImplementedError(f"{type(self).__name__} has no teacher_soft_targets_all_rows")

    def teacher_scores_any_prefix(self) -> bool:
        """Whether the teacher can score target prefixes that are not in the data, such as
        the student's own translations: an online teacher (a store holds the gold prefixes only)."""
        return self.teacher is not None

    def on_policy_sample(
        self, model, sample, sampling=False, temperature=1.0, topk=0, max_len_a=1.2, max_len_b=10
    ) -> dict:
        """``sample`` with the student's own translations of its sources as targets: a new
        batch dict whose ``target`` (B x T', EOS included, right-padded), ``ntokens`` and
        ``net_input["prev_output_tokens"]`` come from ``model``'s output, in the task's batch
        layout (on-policy distillation; the criterion passes its own decoding options).

        Greedy, or sampled at ``temperature`` from the ``topk`` most likely words (0 = all);
        at most ``int(max_len_a * source length + max_len_b)`` words then EOS per sentence.
        Decoded in eval mode under ``torch.no_grad()`` (the model's mode is restored):
        integer tokens, no gradient. Training batches only; ask :meth:`teacher_scores_any_prefix`
        whether the teacher can score them.
        """
        raise NotImplementedError(f"{type(self).__name__} has no on_policy_sample")

    # --------------------------------------------------------------- helpers
    def check_has_teacher(self, sample) -> None:
        """Raise when ``sample`` has no teacher distribution (a caller that did not ask
        :meth:`has_teacher`)."""
        if not self.has_teacher(sample):
            raise RuntimeError(
                f"{type(self).__name__}: this batch has no teacher distribution (no --teacher-path, and no "
                "soft labels for its split): ask has_teacher(sample) first"
            )

    def run_teacher(self, model, net_input) -> List[Tensor]:
        """The online teacher's logits on ``net_input``, one B x T x V tensor per model of the
        ensemble, on the student's device and in its dtype; they are this call's own."""
        param = next(model.parameters())
        self.teacher.follow(param.device, param.dtype)
        return self.teacher.logits(net_input)

    @staticmethod
    def online_soft_targets(
        logits_T: List[Tensor], gold: Tensor, temperature: float, topk: int, weight: Optional[Tensor] = None
    ) -> SoftTargets:
        """``SoftTargets`` of an online teacher from its N x V logits (M of them, this call's own:
        q is written over them) and the N gold words; ``weight`` (N booleans) selects the
        rows whose NLL counts, all of them when None."""
        probs_T, ids_T, nll = losses.teacher_targets(logits_T, gold, temperature, topk, overwrite=True)
        return SoftTargets(probs_T, ids_T, (nll if weight is None else nll * weight).sum())


def require_teacher_task(task, criterion: str, needs: str, base: Optional[type] = None) -> None:
    """Raise one line unless ``task`` has the teacher interface (and is a ``base``, the fairseq
    task class whose batches the criterion reads): ``--criterion {criterion} needs {needs}
    (it provides the teacher), got --task <name>``."""
    if isinstance(task, TeacherTask) and (base is None or isinstance(task, base)):
        return
    name = getattr(getattr(task, "cfg", None), "_name", None) or type(task).__name__
    raise UsageError(f"--criterion {criterion} needs {needs} (it provides the teacher), got --task {name}")
