"""A LanguagePairDataset that also carries what a teacher said about each sentence.

``KDLanguagePairDataset`` wraps fairseq's ``LanguagePairDataset`` and adds to
each batch, aligned with the batch's own (length-sorted) order:

- ``sample["soft_labels"]``: ``{"ids": B x T x K, "logits": B x T x K}``, the
  teacher's top-K ids and raw logits for every target position (EOS included),
  read from a soft-label store; pad positions hold id = pad and logit 0.
- ``sample["distilled"]``: the teacher's output for the same source, as
  ``{"target": B x T', "prev_output_tokens": B x T', "ntokens": int}``, read
  from a distilled corpus (sequence-level KD).

Batches are built by fairseq's own batching, so bucketing, shuffling,
sharding across GPUs and ``--update-freq`` keep every soft label with its
sentence: items are looked up by dataset index, never by position in a file.
"""
import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, FairseqDataset, data_utils

from ..errors import UsageError


class KDLanguagePairDataset(BaseWrapperDataset):
    def __init__(self, dataset, soft_labels=None, distilled=None):
        """
        Args:
            dataset: a fairseq ``LanguagePairDataset``.
            soft_labels: indexable, ``soft_labels[i] -> (ids L x K, logits L x K)``
                with L = len(dataset.tgt[i]); or None.
            distilled: a fairseq indexed dataset of target token ids with one
                entry per sentence of ``dataset``; or None.
        """
        super().__init__(dataset)
        if soft_labels is not None and getattr(dataset, "left_pad_target", False):
            # _collate_soft_labels lays sentence b's rows out from target column 0
            raise UsageError(
                "soft labels expect right-padded targets (their rows are laid out from target column 0), "
                "got --left-pad-target: remove it (targets are right-padded by default)"
            )
        self.soft_labels = soft_labels
        self.distilled = distilled
        if distilled is not None and len(distilled) != len(dataset):
            raise UsageError(
                f"distilled corpus has {len(distilled)} sentences, the dataset has {len(dataset)}"
            )
        # Batch by the longest of source, gold target and distilled target.
        n = np.arange(len(dataset))
        self._num_tokens = dataset.num_tokens_vec(n)
        if distilled is not None:
            self._num_tokens = np.maximum(self._num_tokens, distilled.sizes)

    def num_tokens(self, index):
        return int(self._num_tokens[index])

    def num_tokens_vec(self, indices):
        return self._num_tokens[indices]

    # fairseq's generic batching (uses num_tokens_vec above); the wrapper's
    # default would delegate to the inner dataset and ignore distilled lengths.
    batch_by_size = FairseqDataset.batch_by_size

    def size(self, index):
        src, tgt = self.dataset.size(index)
        if self.distilled is not None:
            tgt = max(tgt, int(self.distilled.sizes[index]))
        return src, tgt

    def filter_indices_by_size(self, indices, max_sizes):
        return data_utils.filter_paired_dataset_indices_by_size(
            self.dataset.src_sizes,
            np.maximum(self.dataset.tgt_sizes, self.distilled.sizes)
            if self.distilled is not None
            else self.dataset.tgt_sizes,
            indices,
            max_sizes,
        )

    def __getitem__(self, index):
        item = self.dataset[index]
        if self.soft_labels is not None:
            item["soft_labels"] = self.soft_labels[index]
        if self.distilled is not None:
            item["distilled"] = self.distilled[index]
        return item

    def collater(self, samples, pad_to_length=None):
        batch = self.dataset.collater(samples, pad_to_length=pad_to_length)
        if len(samples) == 0 or "id" not in batch:
            return batch
        # The collater sorts sentences by source length: follow its order.
        by_id = {s["id"]: s for s in samples}
        ordered = [by_id[int(i)] for i in batch["id"]]
        pad, eos = self.dataset.tgt_dict.pad(), self.dataset.tgt_dict.eos()
        if self.soft_labels is not None:
            batch["soft_labels"] = self._collate_soft_labels(ordered, batch["target"], pad)
        if self.distilled is not None:
            targets = [s["distilled"] for s in ordered]
            batch["distilled"] = {
                "target": data_utils.collate_tokens(targets, pad, eos, left_pad=False),
                "prev_output_tokens": data_utils.collate_tokens(
                    targets, pad, eos, left_pad=False, move_eos_to_beginning=True
                ),
                "ntokens": sum(len(t) for t in targets),
            }
        return batch

    @staticmethod
    def _collate_soft_labels(ordered, target, pad):
        B, T = target.shape  # the gold target, right-padded
        K = ordered[0]["soft_labels"][0].size(-1)
        ids = torch.full((B, T, K), pad, dtype=torch.long)
        logits = torch.zeros((B, T, K), dtype=ordered[0]["soft_labels"][1].dtype)
        for b, s in enumerate(ordered):
            ids_b, logits_b = s["soft_labels"]
            n = ids_b.size(0)
            if n != len(s["target"]):
                raise RuntimeError(
                    f"soft labels of sentence {s['id']} cover {n} tokens, its target has "
                    f"{len(s['target'])}: the store does not belong to this split"
                )
            ids[b, :n] = ids_b.long()
            logits[b, :n] = logits_b
        return {"ids": ids, "logits": logits}
