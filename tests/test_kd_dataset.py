"""KDLanguagePairDataset keeps teacher data with its sentence in any batch order."""
import numpy as np
import pytest
import torch

import utils
from fairseq_kd.data.kd_dataset import KDLanguagePairDataset


class MarkedSoftLabels:
    """Fake store: column 0 = the gold token id, column 1 = the sentence index."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, i):
        tgt = self.dataset.tgt[i]
        ids = torch.stack([tgt, torch.full_like(tgt, i)], dim=-1).int()  # L x 2
        return ids, torch.arange(len(tgt) * 2, dtype=torch.float16).view(-1, 2)


@pytest.mark.parametrize("num_shards", [1, 2])
def test_soft_labels_and_distilled_targets_follow_their_sentence(tiny_data, num_shards):
    cfg, task, model, criterion = utils.build_in_process(
        [tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--cpu"]
    )
    task.load_dataset("train")
    base = task.dataset("train")
    # "distilled" target = the source sentence (another length than the target)
    wrapped = KDLanguagePairDataset(base, MarkedSoftLabels(base), distilled=base.src)
    seen = []
    for shard in range(num_shards):
        itr = task.get_batch_iterator(
            dataset=wrapped, max_tokens=150, seed=3, num_shards=num_shards, shard_id=shard,
            num_workers=0, required_batch_size_multiple=1, disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=True)
        for sample in itr:
            if not sample:  # fairseq pads shards to equal length with empty batches
                continue
            target, ids = sample["target"], sample["soft_labels"]["ids"]
            mask = target.ne(task.target_dictionary.pad())
            assert torch.equal(ids[..., 0][mask], target[mask])
            for b, sent in enumerate(sample["id"].tolist()):
                assert (ids[b, :, 1][mask[b]] == sent).all()
                n = int(mask[b].sum())
                assert (ids[b, n:, 0] == task.target_dictionary.pad()).all()
                d = sample["distilled"]["target"][b]
                assert torch.equal(d[d.ne(task.target_dictionary.pad())], base.src[sent])
                assert sample["distilled"]["prev_output_tokens"][b, 0] == task.target_dictionary.eos()
            seen += sample["id"].tolist()
    assert sorted(seen) == list(range(len(base)))


def test_batches_account_for_distilled_length(tiny_data):
    cfg, task, model, criterion = utils.build_in_process(
        [tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--cpu"]
    )
    task.load_dataset("train")
    base = task.dataset("train")

    class Long:
        sizes = np.full(len(base), 40)

        def __len__(self):
            return len(base)

    wrapped = KDLanguagePairDataset(base, distilled=Long())
    assert wrapped.num_tokens(0) == 40
    batches = wrapped.batch_by_size(np.arange(len(base)), max_tokens=200)
    assert max(len(b) for b in batches) == 5  # 200 // 40


def test_mismatched_soft_label_length_is_an_error(tiny_data):
    cfg, task, model, criterion = utils.build_in_process(
        [tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--cpu"]
    )
    task.load_dataset("train")
    base = task.dataset("train")

    class Short(MarkedSoftLabels):
        def __getitem__(self, i):
            ids, logits = super().__getitem__(i)
            return ids[:-1], logits[:-1]

    wrapped = KDLanguagePairDataset(base, Short(base))
    with pytest.raises(RuntimeError, match="does not belong to this split"):
        wrapped.collater([wrapped[0], wrapped[1]])
