"""Frozen teachers: loading fairseq checkpoints (ensembles) for online distillation.

The teacher is never a submodule of the student model or of the criterion:
fairseq's trainer would optimize it, wrap it in DDP and save it in every
student checkpoint. A task owns a :class:`TeacherEnsemble` instead; it keeps
the models in ``eval()`` with ``requires_grad_(False)``, runs them under
``torch.no_grad()`` and follows the student's device and dtype (half with
``--fp16``, bfloat16 with ``--bf16``).
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


def split_paths(paths: str) -> List[str]:
    """``a.pt:b.pt`` -> ['a.pt', 'b.pt'] (fairseq's ensemble separator)."""
    return [p for p in paths.split(":") if p]


def check_files_exist(paths: Sequence[str], what: str = "teacher checkpoint") -> None:
    """Each path is a fairseq checkpoint (memory-mapped, cheap): FileNotFoundError
    for a missing file, CheckpointError (a ValueError) naming the file otherwise."""
    from .checkpoint import read_fairseq_checkpoint

    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} not found: {path}")
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
    for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight"):
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
                raise ValueError(f"{path}: {side} dictionaries differ: {message} (teacher: {dict_path}); {fix}")
            continue
        if rows is not None and rows != len(student_dict):
            raise ValueError(
                f"{path}: {side} dictionaries differ: teacher dictionary has {rows} symbols, student dictionary has "
                f"{len(student_dict)} (the teacher's data directory is gone, so only sizes were compared); {fix}"
            )
        logger.warning(
            f"{path}: the teacher's {side} dictionary ({dict_path or 'its data directory'}) is gone: "
            + ("only its size was compared with the student's" if rows is not None else "not compared")
        )


class TeacherEnsemble:
    """One or more frozen fairseq models whose logits the criterion distills from.

    Not an ``nn.Module`` on purpose (see the module docstring).
    """

    def __init__(self, models: List[torch.nn.Module], paths: Sequence[str] = ()):
        self.models = models
        self.paths = list(paths)
        for model in self.models:
            model.eval()
            model.requires_grad_(False)
        self._device, self._dtype = None, None

    @classmethod
    def from_checkpoints(cls, paths: str, task) -> "TeacherEnsemble":
        """Load ``a.pt:b.pt`` with the student's task (so dictionaries are shared)."""
        from fairseq import checkpoint_utils

        files = split_paths(paths)
        check_files_exist(files)
        models = []
        for path in files:
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
            check_teacher_dictionary(path, state, task.target_dictionary, task.source_dictionary)
            ensemble, _ = checkpoint_utils.load_model_ensemble([path], task=task, state=state)
            models.extend(ensemble)
        n_params = sum(p.numel() for m in models for p in m.parameters())
        logger.info(f"teacher: {len(models)} model(s), {n_params:,} parameters, from {files}")
        return cls(models, files)

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
