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

Criterions ask the task for the teacher's distribution through the teacher
interface (``_kd_teacher.TeacherTask``: ``teacher_soft_targets`` and
``teacher_soft_targets_all_rows`` return one ``SoftTargets``), passing their own
temperature and top-K; the task never reads criterion options.

On-policy distillation (``word_kd --kd-on-policy-ratio``) asks the task for
``on_policy_sample``: the student's own translations of a batch's sources,
decoded by :func:`decode` (greedy or sampled, batched, incremental, under
``torch.no_grad()`` in eval mode) and laid out as a batch, which the online
teacher then scores as it scores the gold batch. Only an online teacher can
(``teacher_scores_any_prefix``): not with ``--soft-labels``.

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
from fairseq.models import FairseqIncrementalDecoder
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import losses
from ..data.array_store import StoreError
from ..errors import MissingFileError, UsageError
from ..data.distilled_corpus import check_summary
from ..data.kd_dataset import KDLanguagePairDataset
from ._kd_teacher import SoftTargets, TeacherConfig, TeacherTask

logger = logging.getLogger(__name__)


@dataclass
class TranslationKDConfig(TeacherConfig, TranslationConfig):
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


@torch.no_grad()
def decode(model, net_input, max_lens, eos, pad, sampling=False, temperature=1.0, topk=0):
    """The student's translations of a batch's sources, B x T' (EOS included, pads after it).

    One step for all B sentences at a time with the decoder's incremental state
    (fairseq's ``SequenceGenerator`` at beam 1 decodes the same words, but through
    its beam bookkeeping, a list of hypotheses per sentence and one length limit for
    the batch): the decoder starts from EOS, as fairseq's; sentence b ends at its
    first EOS or is given EOS after ``max_lens[b]`` words. Pad is never chosen.

    Args:
        model: an encoder-decoder (``model.encoder``, ``model.decoder``); call in eval mode.
        net_input: the batch's ``net_input`` (its ``prev_output_tokens`` is not used).
        max_lens: B longs, the most words (EOS not counted) of each sentence.
        sampling: sample each word from softmax(z / temperature) over the ``topk``
            most likely words (0 = all; torch's global generator), else the argmax.
    """
    encoder_input = {k: v for k, v in net_input.items() if k != "prev_output_tokens"}
    encoder_out = model.encoder(**encoder_input)
    incremental_state = {} if isinstance(model.decoder, FairseqIncrementalDecoder) else None
    B = max_lens.size(0)
    tokens = max_lens.new_full((B, 1), eos)  # B x (1 + step): the decoder's input so far
    finished = torch.zeros(B, dtype=torch.bool, device=max_lens.device)
    for step in range(int(max_lens.max()) + 1):
        logits = model.decoder(tokens, encoder_out=encoder_out, incremental_state=incremental_state)[0]
        logits = logits[:, -1].float()  # B x V
        logits[:, pad] = float("-inf")
        if sampling:
            logits = logits / temperature
            ids = None
            if 0 < topk < logits.size(-1):
                logits, ids = logits.topk(topk, dim=-1)
            word = torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
            if ids is not None:
                word = ids.gather(-1, word.unsqueeze(-1)).squeeze(-1)
        else:
            word = logits.argmax(-1)
        word = word.masked_fill(max_lens.le(step), eos).masked_fill(finished, pad)
        tokens = torch.cat([tokens, word.unsqueeze(-1)], dim=1)
        finished |= word.eq(eos)
        if finished.all():
            break
    return tokens[:, 1:]


@register_task("translation_kd", dataclass=TranslationKDConfig)
class TranslationKDTask(TeacherTask, TranslationTask):
    cfg: TranslationKDConfig

    def __init__(self, cfg: TranslationKDConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        # An ensemble's store holds T log q at its dump temperature, a sampled store its draws at
        # that temperature: exact at that --kd-temperature only.
        self.soft_labels_temperature: Optional[float] = None
        self.soft_labels_sampled = False

    @classmethod
    def check_kd_config(cls, cfg: TranslationKDConfig) -> None:
        for option, path in (("--soft-labels", cfg.soft_labels), ("--distilled-data", cfg.distilled_data)):
            if path and not os.path.isdir(path):
                raise MissingFileError(f"{option} directory not found: {path}")
        if cfg.soft_labels and cfg.left_pad_target:
            raise UsageError(
                "translation_kd --soft-labels expects right-padded targets (soft-label rows are laid out from "
                "target column 0), got --left-pad-target: remove it (targets are right-padded by default)"
            )

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
        self.soft_labels_sampled = store.sampled
        logger.info(f"soft labels for {split}: {self.cfg.soft_labels} "
                    + (f"({store.topk} draws at T={store.temperature:g})" if store.sampled else f"(K={store.topk})"))
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
                raise MissingFileError(f"no distilled {split} split at {prefix}.{{bin,idx}}: {rerun}")
            logger.info(f"no distilled targets for {split} ({prefix}.{{bin,idx}} not found): gold target only")
            return None
        if not os.path.exists(meta_path):
            raise UsageError(
                f"distilled {split} split {prefix} has no {meta_path} (not written by fairseq-kd-distill-corpus, "
                f"or unfinished), so its alignment with the data cannot be checked: {rerun}"
            )
        if len(distilled) != len(dataset):
            raise UsageError(
                f"distilled {split} split {prefix} has {len(distilled)} sentences, "
                f"the data has {len(dataset)}: it was not made from this split; {rerun}"
            )
        check_summary(meta_path, split, dataset, self.src_dict, self.tgt_dict, rerun)
        logger.info(f"distilled targets for {split}: {prefix}")
        return distilled

    # --------------------------------------------------------------- teacher
    def has_teacher(self, sample) -> bool:
        return "soft_labels" in sample or self.teacher is not None

    def teacher_is_topk(self) -> bool:
        return bool(self.cfg.soft_labels)

    def teacher_is_sampled(self) -> bool:
        if not self.cfg.soft_labels:
            return False
        from ..data.soft_labels import SoftLabelStore

        return SoftLabelStore(self.cfg.soft_labels).sampled  # the header and memory maps only

    def has_distilled_targets(self) -> bool:
        return bool(self.cfg.distilled_data)

    def teacher_scores_any_prefix(self) -> bool:
        return self.teacher is not None and not self.cfg.soft_labels

    def on_policy_sample(
        self, model, sample, sampling=False, temperature=1.0, topk=0, max_len_a=1.2, max_len_b=10
    ) -> dict:
        """The batch with the student's translations as targets (see ``TeacherTask``): ``decode``
        in eval mode, then fairseq's layout, ``prev_output_tokens`` = EOS + the target shifted
        right with its final EOS dropped (``collate(move_eos_to_beginning=True)``)."""
        net_input = sample["net_input"]
        eos, pad = self.tgt_dict.eos(), self.tgt_dict.pad()
        max_lens = (max_len_a * net_input["src_lengths"].double() + max_len_b).long()  # int(), as fairseq
        max_positions = getattr(model, "max_decoder_positions", lambda: None)()
        if max_positions:
            max_lens = max_lens.clamp(max=max_positions - 1)
        training = model.training
        model.eval()
        try:
            target = decode(model, net_input, max_lens, eos, pad, sampling, temperature, topk)
        finally:
            model.train(training)
        shifted = target[:, :-1]
        prev_output_tokens = torch.cat([target.new_full((target.size(0), 1), eos),
                                        shifted.masked_fill(shifted.eq(eos), pad)], dim=1)
        return {
            "id": sample.get("id"),
            "nsentences": target.size(0),
            "ntokens": int(target.ne(pad).sum()),
            "net_input": {**net_input, "prev_output_tokens": prev_output_tokens},
            "target": target,
        }

    def teacher_soft_targets(self, sample, model, mask, temperature=1.0, topk=0) -> SoftTargets:
        """The teacher's distribution at the target positions selected by ``mask`` (B x T).

        From the batch's ``soft_labels`` when it has them (``teacher_nll`` None), else from
        the online teacher run on ``sample["net_input"]``; see ``TeacherTask``.
        """
        return self._soft_targets(sample, model, mask, temperature, topk)

    def teacher_soft_targets_all_rows(self, sample, model, temperature=1.0, topk=0) -> SoftTargets:
        """Every position's row, B*T of them, pads included: a store's pad rows hold pad
        ids and zero logits, an online teacher's are its outputs there; finite either way
        (the caller weights them 0). ``teacher_nll`` is summed over the non-pad rows."""
        return self._soft_targets(sample, model, None, temperature, topk)

    def _soft_targets(self, sample, model, mask, temperature, topk) -> SoftTargets:
        """Both ``teacher_soft_targets`` methods: the rows of ``mask``, or all rows when it is None."""
        self.check_has_teacher(sample)

        def rows(x):  # B x T x D -> N x D
            return x.reshape(-1, x.size(-1)) if mask is None else x[mask]

        if "soft_labels" in sample:
            if self.soft_labels_temperature is not None and temperature != self.soft_labels_temperature:
                what = ("words drawn from the teacher" if self.soft_labels_sampled
                        else "an ensemble's probabilities averaged")
                raise UsageError(
                    f"--soft-labels {self.cfg.soft_labels} holds {what} at temperature "
                    f"{self.soft_labels_temperature:g}, the criterion's is {temperature:g}: train with "
                    f"--kd-temperature {self.soft_labels_temperature:g}, or dump the store again with "
                    f"fairseq-kd-dump-soft-labels --temperature {temperature:g}"
                )
            soft_labels = sample["soft_labels"]  # ids, logits: B x T x K
            probs_T, ids_T = losses.topk_soft_targets(
                rows(soft_labels["ids"]), rows(soft_labels["logits"]), temperature, topk
            )
            return SoftTargets(probs_T, ids_T, None)
        logits_T = [rows(z) for z in self.run_teacher(model, sample["net_input"])]  # M x [N x V]
        if mask is None:
            gold = sample["target"].reshape(-1)
            return self.online_soft_targets(logits_T, gold, temperature, topk, gold.ne(self.tgt_dict.pad()))
        return self.online_soft_targets(logits_T, sample["target"][mask], temperature, topk)
