"""``--task translation_kd``: translation with a teacher.

fairseq's ``translation`` task plus three sources of teacher knowledge, each
optional:

- ``--teacher-path a.pt[:b.pt]``: an online teacher (or ensemble), loaded and
  owned by the task, frozen, run under ``torch.no_grad()`` on the student's
  device and dtype (word-level KD, Kim & Rush 2016);
- ``--soft-labels DIR``: a top-K soft-label store written offline by
  ``fairseq-kd-dump-soft-labels`` (BERT teacher, Chen et al. 2020, or any
  autoregressive teacher / ensemble): no teacher in memory; an ensemble's
  store is exact at its dump temperature only, and another ``--kd-temperature``
  is refused at the first batch;
- ``--distilled-data DIR``: a distilled corpus written by
  ``fairseq-kd-distill-corpus`` (sequence-level KD, Kim & Rush 2016).

Criterions ask the task for the teacher's distribution through
:meth:`TranslationKDTask.teacher_soft_targets`, passing their own temperature
and top-K; the task never reads criterion options.

Alignment. Nothing is matched to its data by sentence count alone. A
soft-label store holds one split: the training split (``--train-subset``)
refuses a store dumped for another split, other splits go without soft labels
(the log says which splits have them). A distilled split is used only with its
``distill.<split>.json``, whose source and target sizes checksums and
dictionary checksums must match the split and dictionaries it is used with.
Soft labels are laid out from target column 0, so ``--soft-labels`` refuses
``--left-pad-target`` (the online teacher and distilled targets follow
any padding: they are collated and run as the batch is).
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.data import data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import losses
from ..data.array_store import StoreError
from ..data.kd_dataset import KDLanguagePairDataset
from ..teacher import TeacherEnsemble, check_files_exist, split_paths

logger = logging.getLogger(__name__)


@dataclass
class TranslationKDConfig(TranslationConfig):
    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "fairseq checkpoint(s) of an online teacher, colon-separated for an "
            "ensemble (probabilities are averaged); must share the target dictionary"
        },
    )
    soft_labels: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory of a top-K soft-label store written by "
            "fairseq-kd-dump-soft-labels for the training split (no teacher in memory)"
        },
    )
    distilled_data: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory of a distilled corpus written by fairseq-kd-distill-corpus; "
            "batches then carry the teacher's output beside the gold target"
        },
    )


def check_distilled_meta(meta_path: str, split: str, dataset, src_dict, tgt_dict, fix: str) -> None:
    """Raise ValueError unless the distilled corpus described by ``meta_path``
    (``distill.<split>.json``) was made from ``dataset`` (the same sentences in the
    same order: source and target sizes checksums) with ``src_dict`` / ``tgt_dict``."""
    from ..data.array_store import dictionary_checksum, sizes_checksum

    with open(meta_path) as f:
        meta = json.load(f)
    other_split = "(another, reordered or refiltered split)"
    made = {  # header field: (how the corpus differs, the value here)
        "source_sizes_checksum": (f"from other source sentences than the data's {other_split}",
                                  lambda: sizes_checksum(dataset.src_sizes)),
        "target_sizes_checksum": (f"from other target sentences than the data's {other_split}",
                                  lambda: sizes_checksum(dataset.tgt_sizes)),
        "source_dictionary_checksum": ("with another source dictionary than the data's",
                                       lambda: dictionary_checksum(src_dict)),
        "target_dictionary_checksum": ("with another target dictionary than the data's",
                                       lambda: dictionary_checksum(tgt_dict)),
    }
    missing = [key for key in made if key not in meta]
    if missing:
        raise ValueError(
            f"{meta_path} was written by an older fairseq-kd-distill-corpus (no {', '.join(missing)}), "
            f"so the distilled {split} split cannot be checked against the data: {fix}"
        )
    for key, (how, actual) in made.items():
        here = actual()
        if meta[key] != here:
            raise ValueError(
                f"the distilled {split} split was made {how}: {key} is {meta[key][:16]} in "
                f"{meta_path}, {here[:16]} here; {fix}"
            )


@register_task("translation_kd", dataclass=TranslationKDConfig)
class TranslationKDTask(TranslationTask):
    cfg: TranslationKDConfig

    def __init__(self, cfg: TranslationKDConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.teacher: Optional[TeacherEnsemble] = None
        # An ensemble's store holds T log q at its dump temperature: exact at that --kd-temperature only.
        self.soft_labels_temperature: Optional[float] = None

    @classmethod
    def setup_task(cls, cfg: TranslationKDConfig, **kwargs):
        # Fail before anything is trained or written when an input is missing.
        if cfg.teacher_path:
            check_files_exist(split_paths(cfg.teacher_path))
        for option, path in (("--soft-labels", cfg.soft_labels), ("--distilled-data", cfg.distilled_data)):
            if path and not os.path.isdir(path):
                raise FileNotFoundError(f"{option} directory not found: {path}")
        if cfg.soft_labels and cfg.left_pad_target:
            raise ValueError(
                "translation_kd --soft-labels expects right-padded targets (soft-label rows are laid out from "
                "target column 0), got --left-pad-target: remove it (targets are right-padded by default)"
            )
        task = super().setup_task(cfg, **kwargs)
        if cfg.teacher_path:
            task.teacher = TeacherEnsemble.from_checkpoints(cfg.teacher_path, task)
        return task

    # ------------------------------------------------------------------ data
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        dataset = self.datasets[split]
        soft_labels = self._load_soft_labels(split, dataset)
        distilled = self._load_distilled(split, dataset)
        if soft_labels is not None or distilled is not None:
            self.datasets[split] = KDLanguagePairDataset(dataset, soft_labels, distilled)

    def _load_soft_labels(self, split, dataset):
        """The store of ``split``; None for another split (scored on the gold NLL only),
        except the training split, which refuses a store dumped for another split."""
        if not self.cfg.soft_labels:
            return None
        from ..data.soft_labels import SoftLabelStore

        store = SoftLabelStore(self.cfg.soft_labels)
        if store.split != split:
            if split == self.cfg.train_subset:
                raise StoreError(
                    f"--soft-labels {self.cfg.soft_labels} was dumped for the {store.split!r} split, the training "
                    f"split (--train-subset) is {split!r}: dump the store of {split!r} "
                    f"(fairseq-kd-dump-soft-labels ... --subset {split}) and pass that"
                )
            logger.info(f"no soft labels for {split} (the store holds {store.split}): gold target only")
            return None
        store.check(dataset, self.tgt_dict)  # raises on any misalignment
        self.soft_labels_temperature = store.temperature
        logger.info(f"soft labels for {split}: {self.cfg.soft_labels} (K={store.topk})")
        return store

    def _load_distilled(self, split, dataset):
        """The distilled targets of ``split`` from ``--distilled-data DIR``, checked against
        the split and dictionaries they were made from (``DIR/distill.<split>.json``).

        The training split must have them. Another split without them, or without its
        ``distill.<split>.json`` (a gold split copied by ``--copy-splits``), has none."""
        if not self.cfg.distilled_data:
            return None
        directory = self.cfg.distilled_data
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        prefix = os.path.join(directory, f"{split}.{src}-{tgt}.{tgt}")
        meta_path = os.path.join(directory, f"distill.{split}.json")
        training = split == self.cfg.train_subset
        rerun = f"re-run fairseq-kd-distill-corpus {self.cfg.data} --subset {split} --out {directory}"
        if not training and not os.path.exists(meta_path):
            logger.info(f"no distilled targets for {split} ({meta_path} not found): gold target only")
            return None
        distilled = data_utils.load_indexed_dataset(prefix, self.tgt_dict, self.cfg.dataset_impl)
        if distilled is None:
            if training:
                raise FileNotFoundError(f"no distilled {split} split at {prefix}.{{bin,idx}}: {rerun}")
            logger.info(f"no distilled targets for {split} ({prefix}.{{bin,idx}} not found): gold target only")
            return None
        if not os.path.exists(meta_path):
            raise ValueError(
                f"distilled {split} split {prefix} has no {meta_path} (not written by fairseq-kd-distill-corpus, "
                f"or unfinished), so its alignment with the data cannot be checked: {rerun}"
            )
        if len(distilled) != len(dataset):
            raise ValueError(
                f"distilled {split} split {prefix} has {len(distilled)} sentences, "
                f"the data has {len(dataset)}: it was not made from this split; {rerun}"
            )
        check_distilled_meta(meta_path, split, dataset, self.src_dict, self.tgt_dict, rerun)
        logger.info(f"distilled targets for {split}: {prefix}")
        return distilled

    # --------------------------------------------------------------- teacher
    def has_teacher(self, sample) -> bool:
        return "soft_labels" in sample or self.teacher is not None

    def teacher_soft_targets(self, sample, model, mask, temperature=1.0, topk=0):
        """The teacher's distribution at the target positions selected by ``mask``.

        Args:
            sample: a batch; its ``soft_labels`` are used when present, else the
                online teacher runs on ``sample["net_input"]``.
            model: the student, whose device and dtype the online teacher follows.
            mask: B x T booleans, the positions to distill (non-pad targets); None
                returns every position's row, B*T of them, with
                the teacher's NLL summed over the non-pad ones (no row gathering: the
                caller weights the rows, which is cheaper for a full-vocabulary teacher).
            temperature, topk: the criterion's options (see ``losses.soft_targets``).

        Returns:
            ``(probs_T, ids_T, teacher_nll)``: N x K (or N x V) probabilities, their
            N x K ids (or None), and the teacher's summed NLL of the gold words at
            temperature 1 (None when only top-K logits are known); or None when
            this batch has no teacher (e.g. validation with a soft-label store).
        """
        if "soft_labels" in sample:
            if self.soft_labels_temperature is not None and temperature != self.soft_labels_temperature:
                raise ValueError(
                    f"--soft-labels {self.cfg.soft_labels} holds an ensemble's probabilities averaged at temperature "
                    f"{self.soft_labels_temperature:g}, the criterion's is {temperature:g}: train with "
                    f"--kd-temperature {self.soft_labels_temperature:g}, or dump the store again with "
                    f"fairseq-kd-dump-soft-labels --temperature {temperature:g}"
                )
            ids_T, logits_T = sample["soft_labels"]["ids"], sample["soft_labels"]["logits"]  # B x T x K
            if mask is None:  # pad rows hold pad ids and zero logits: finite, weighted 0 by the caller
                ids_T, logits_T = ids_T.view(-1, ids_T.size(-1)), logits_T.view(-1, logits_T.size(-1))
            else:
                ids_T, logits_T = ids_T[mask], logits_T[mask]  # N x K
            probs_T, ids_T = losses.topk_soft_targets(ids_T, logits_T, temperature, topk)
            return probs_T, ids_T, None
        if self.teacher is None:
            return None
        param = next(model.parameters())
        self.teacher.follow(param.device, param.dtype)
        if mask is None:
            logits_T = [z.view(-1, z.size(-1)) for z in self.teacher.logits(sample["net_input"])]  # M x [BT x V]
            gold = sample["target"].reshape(-1)
            weight = gold.ne(self.target_dictionary.pad())
        else:
            logits_T = [z[mask] for z in self.teacher.logits(sample["net_input"])]  # M x [N x V]
            gold = sample["target"][mask]
            weight = None
        # the logits are this call's own: q is written over them
        probs_T, ids_T, nll = losses.teacher_targets(logits_T, gold, temperature, topk, overwrite=True)
        teacher_nll = (nll if weight is None else nll * weight).sum()
        return probs_T, ids_T, teacher_nll
