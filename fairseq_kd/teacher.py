"""Frozen teachers: the one loader of fairseq checkpoints (ensembles) that run as teachers.

:func:`load_teacher` is how every part of the plugin loads a teacher: the KD
tasks (online distillation, with the student's task) and the commands that
run one (``fairseq-kd-dump-soft-labels``, ``-dump-logits``, ``-distill-corpus``,
``-evaluate``; a task built from the checkpoint pointed at their data). The
commands choose device and dtype with one policy, ``cli/_common.py``'s
:func:`~fairseq_kd.cli._common.device_and_dtype`.

The teacher is never a submodule of the student model or of the criterion:
fairseq's trainer would optimize it, wrap it in DDP and save it in every
student checkpoint. A task owns a :class:`TeacherEnsemble` instead; it keeps
the models in ``eval()`` with ``requires_grad_(False)``, runs them under
``torch.no_grad()`` and follows the student's device and dtype (half with
``--fp16``, bfloat16 with ``--bf16``).

Loading a teacher leaves the random number generators as it found them
(:func:`untouched_rng`): building a fairseq model initializes its weights at
random before the checkpoint's replace them, and a task loads its teacher
after fairseq-train has seeded the generators and before it builds the
student. Without this, a student with an online teacher would start from
other weights than the same seed's student without one (the baseline, or a
student of a soft-label store), and the comparison of the two would carry
the spread between two seeds.
"""
import contextlib
import copy
import logging
import os
import random
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .errors import MissingFileError, UsageError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def untouched_rng():
    """Run the body, then restore the states of Python's, NumPy's and torch's
    random number generators (CPU, and every CUDA device once CUDA is in use) to
    what they were before it."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def split_paths(paths: str) -> List[str]:
    """``a.pt:b.pt`` -> ['a.pt', 'b.pt'] (fairseq's ensemble separator)."""
    return [p for p in paths.split(":") if p]


def check_files_exist(paths: Sequence[str], what: str = "teacher checkpoint") -> None:
    """Each path is a fairseq checkpoint (memory-mapped, cheap): FileNotFoundError
    for a missing file, CheckpointError (a ValueError) naming the file otherwise."""
    from .checkpoint import read_fairseq_checkpoint

    for path in paths:
        if not os.path.exists(path):
            raise MissingFileError(f"{what} not found: {path}")
        read_fairseq_checkpoint(path, what)


def dictionary_mismatch(dict_T, dict_S) -> Optional[str]:
    """None when the two fairseq dictionaries are equal, else a message naming
    both sizes and the first differing symbol."""
    if len(dict_T) == len(dict_S) and list(dict_T.symbols) == list(dict_S.symbols):
        return None
    for i in range(min(len(dict_T), len(dict_S))):
        if dict_T[i] != dict_S[i]:
            return (
                f"teacher dictionary has {len(dict_T)} symbols, student dictionary has "
                f"{len(dict_S)}; first difference at index {i}: {dict_T[i]!r} (teacher) "
                f"vs {dict_S[i]!r} (student)"
            )
    return (
        f"teacher dictionary has {len(dict_T)} symbols, student dictionary has {len(dict_S)}; "
        f"one is a prefix of the other"
    )


def _output_rows(model_state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Size of the decoder's output vocabulary read from a state dict."""
    for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight",
                "output_projection.weight"):  # the last: bert_teacher (conditional_mlm)
        if key in model_state:
            return model_state[key].size(0)
    return None


def _input_rows(model_state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Size of the encoder's input vocabulary read from a state dict."""
    key = "encoder.embed_tokens.weight"
    return model_state[key].size(0) if key in model_state else None


def check_teacher_dictionary(path: str, state: dict, tgt_dict, src_dict=None) -> None:
    """Refuse a teacher whose target (and, given ``src_dict``, source) dictionary is
    not the student's.

    A teacher fed a source dictionary of the same size in another order reads other
    words than the student's data holds: the symbols are compared, not only sizes.
    The teacher's dictionaries are read from the data directory it was trained on
    when that still exists; otherwise the sizes of its output layer (target) and
    encoder embeddings (source) are compared, with a warning.
    """
    from fairseq.data import Dictionary

    cfg = state.get("cfg") or {}
    task_cfg = cfg.get("task", {}) if isinstance(cfg, dict) else getattr(cfg, "task", {})
    get = task_cfg.get if isinstance(task_cfg, dict) else (lambda k, d=None: getattr(task_cfg, k, d))
    data, src, tgt = get("data", None), get("source_lang", None), get("target_lang", None)
    data = str(data).split(":")[0] if data else None
    if data and (src is None or tgt is None) and os.path.isdir(data):
        from fairseq.data import data_utils

        inferred = data_utils.infer_language_pair(data)  # as fairseq's translation task does
        src, tgt = src or inferred[0], tgt or inferred[1]
    model_state = state.get("model", {})
    sides = [("target", tgt, tgt_dict, _output_rows(model_state), "--tgtdict")]
    if src_dict is not None:
        sides.append(("source", src, src_dict, _input_rows(model_state), "--srcdict"))
    for side, lang, student_dict, rows, option in sides:
        fix = (
            f"use a teacher trained on data binarized with the student's {side} dictionary "
            f"(fairseq-preprocess {option} <student data>/dict.{lang or '<lang>'}.txt)"
        )
        dict_path = os.path.join(data, f"dict.{lang}.txt") if data and lang else None
        if dict_path and os.path.isfile(dict_path):
            message = dictionary_mismatch(Dictionary.load(dict_path), student_dict)
            if message:
                raise UsageError(f"{path}: {side} dictionaries differ: {message} (teacher: {dict_path}); {fix}")
            continue
        if rows is not None and rows != len(student_dict):
            raise UsageError(
                f"{path}: {side} dictionaries differ: teacher dictionary has {rows} symbols, student dictionary has "
                f"{len(student_dict)} (the teacher's data directory is gone, so only sizes were compared); {fix}"
            )
        logger.warning(
            f"{path}: the teacher's {side} dictionary ({dict_path or 'its data directory'}) is gone: "
            + ("only its size was compared with the student's" if rows is not None else "not compared")
        )


# A teacher trained with KD options of its own (its own teacher, stores, distilled
# data) needs none of them to run: they are switched off when a task is built for it.
TEACHER_KD_OPTIONS = ("teacher_path", "soft_labels", "distilled_data", "teacher_logits")


def load_teacher(
    paths: Union[str, Sequence[str]],
    *,
    task=None,
    data: Optional[str] = None,
    overrides: Optional[Dict[str, Any]] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    what: str = "teacher checkpoint",
    generation: bool = False,
) -> "TeacherEnsemble":
    """Load fairseq checkpoints ``a.pt:b.pt`` (or a list) as one frozen :class:`TeacherEnsemble`.

    Args:
        paths: checkpoint file(s); colon-separated for an ensemble.
        task: build the models with this task (the student's: dictionaries shared).
        data: without ``task``: build the task from the first checkpoint's config
            pointed at this data directory, with the KD options of
            :data:`TEACHER_KD_OPTIONS` switched off; every checkpoint is built with it.
        overrides: fairseq ``arg_overrides`` applied to each checkpoint's config
            (task and model; keys the config lacks are ignored), e.g. ``source_lang``.
        device, dtype: where the models run (default: CPU, float32); the caller
            decides (commands: ``_common.device_and_dtype``, tasks: the student's).
        what: names the files in errors ("teacher checkpoint not found: ...").
        generation: also run fairseq's ``prepare_for_inference_`` (as
            ``fairseq-generate``), for decoding with ``task.build_generator``.

    For a task that reads language pairs (fairseq's ``TranslationTask`` and its
    subclasses: translation, translation_kd, translation_lev, conditional_mlm)
    each checkpoint's dictionaries are checked against the task's
    (:func:`check_teacher_dictionary`). Raises FileNotFoundError for a missing
    file or data directory, ValueError (CheckpointError) naming the file for a
    file that is not a fairseq checkpoint or a dictionary mismatch.
    """
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import overwrite_args_by_name
    from fairseq.tasks.translation import TranslationTask

    files = split_paths(paths) if isinstance(paths, str) else [p for p in paths if p]
    if not files:
        raise UsageError(f"no {what} given: --path is empty")
    check_files_exist(files, what)
    if task is None:
        if data is None:
            raise TypeError("load_teacher needs task= (the student's) or data= (a data directory)")
        if not os.path.isdir(data):
            raise MissingFileError(f"data directory not found: {data}")
        overrides = {"data": data, **{key: None for key in TEACHER_KD_OPTIONS}, **(overrides or {})}
    with untouched_rng():  # building each model draws its initial weights (module docstring)
        models = []
        for path in files:
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
            # The teacher's own data and languages (for the dictionary check) before the overrides.
            dictionary_state = {"cfg": copy.deepcopy(state["cfg"]), "model": state["model"]}
            if overrides:
                overwrite_args_by_name(state["cfg"], overrides)
            if task is None:
                task = tasks.setup_task(state["cfg"].task)
            if isinstance(task, TranslationTask):
                check_teacher_dictionary(path, dictionary_state, task.target_dictionary, task.source_dictionary)
            ensemble, cfg = checkpoint_utils.load_model_ensemble([path], task=task, state=state)
            if generation:
                for model in ensemble:
                    model.prepare_for_inference_(cfg)
            models.extend(ensemble)
    teacher = TeacherEnsemble(models, files, task)
    teacher.follow(device or torch.device("cpu"), dtype or torch.float32)
    n_params = sum(p.numel() for m in models for p in m.parameters())
    logger.info(f"teacher: {len(models)} model(s), {n_params:,} parameters, {teacher.dtype} on {teacher.device}, "
                f"from {files}")
    return teacher


class TeacherEnsemble:
    """One or more frozen fairseq models whose logits the criterion distills from.

    ``models`` (frozen: ``eval()``, no gradients), ``paths`` (their files) and
    ``task`` (the task they were built with). Not an ``nn.Module`` on purpose
    (see the module docstring). Made by :func:`load_teacher`.
    """

    def __init__(self, models: List[torch.nn.Module], paths: Sequence[str] = (), task=None):
        self.models = models
        self.paths = list(paths)
        self.task = task
        for model in self.models:
            model.eval()
            model.requires_grad_(False)
        self._device, self._dtype = None, None

    @property
    def device(self) -> Optional[torch.device]:
        return self._device

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return self._dtype

    def follow(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move to the student's device and floating-point dtype (once)."""
        if (device, dtype) != (self._device, self._dtype):
            for model in self.models:
                model.to(device=device, dtype=dtype)
            self._device, self._dtype = device, dtype

    @torch.no_grad()
    def logits(self, net_input: dict) -> List[torch.Tensor]:
        """Teacher-forced output logits of each model, each B x T x V (new tensors,
        which the caller may overwrite)."""
        return [teacher_forward(model, net_input) for model in self.models]

    def __len__(self) -> int:
        return len(self.models)


def teacher_forward(model: torch.nn.Module, net_input: dict) -> torch.Tensor:
    """``model(**net_input)[0]``, with a Transformer decoder's output layer applied to
    contiguous features.

    fairseq's decoder hands its output projection B x T x C features transposed from
    T x B x C. For a frozen projection (no weight gradient) ``torch.matmul`` cannot
    fold such a tensor into one matrix product and runs a batched product with the
    weight expanded B times instead: on a CPU that makes the teacher's vocabulary
    projection, the largest product of its forward, about twice as slow.
    """
    from fairseq.models.transformer import TransformerDecoderBase

    decoder = getattr(model, "decoder", None)
    if isinstance(decoder, TransformerDecoderBase) and decoder.adaptive_softmax is None:
        features, _ = model(**net_input, features_only=True)
        return decoder.output_layer(features.contiguous())
    return model(**net_input)[0]
