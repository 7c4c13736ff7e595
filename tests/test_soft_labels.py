"""data/soft_labels.py: the top-K store's writer, reader and its refusal of any mismatch."""
import json
import os

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from fairseq_kd.data import array_store, soft_labels
from fairseq_kd.data.array_store import StoreError
from fairseq_kd.data.soft_labels import SoftLabelStore


class FakeSplit:
    """What the store checks of a LanguagePairDataset: its target sizes."""

    def __init__(self, sizes):
        self.tgt_sizes = np.asarray(sizes)

    def __len__(self):
        return len(self.tgt_sizes)


def dictionary(n=20):
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def write_store(path, sizes, K=4, d=None, teacher="abc"):
    d = d or dictionary()
    header = soft_labels.make_header("train", K, 7, d, sizes, teacher_checksum=teacher)
    store = soft_labels.create_or_resume(path, header, sizes)
    rng = np.random.RandomState(0)
    tokens = int(np.sum(sizes))
    ids = rng.randint(0, len(d), size=(tokens, K)).astype(np.int32)
    logits = -np.sort(-rng.randn(tokens, K), axis=1).astype(np.float16)
    store["ids"][:] = ids
    store["logits"][:] = logits
    store.mark_done(slice(None))
    array_store.finish(store)
    return ids, logits, d


def test_roundtrip_rows_follow_sentences(tmp_path):
    sizes = [3, 1, 5, 2]
    ids, logits, d = write_store(str(tmp_path / "s"), sizes)
    store = SoftLabelStore(str(tmp_path / "s"))
    store.check(FakeSplit(sizes), d)
    assert (store.split, store.topk, store.passes, len(store)) == ("train", 4, 7, 4)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(len(sizes)):
        ids_i, logits_i = store[i]
        assert ids_i.dtype == torch.int64 and logits_i.dtype == torch.float16
        assert ids_i.shape == (sizes[i], 4)
        assert np.array_equal(ids_i.numpy(), ids[offsets[i] : offsets[i + 1]])
        assert np.array_equal(logits_i.numpy(), logits[offsets[i] : offsets[i + 1]])
    header = json.load(open(tmp_path / "s" / "header.json"))
    assert header["sentence_range"] == [0, 4] and header["token_range"] == [0, 11]
    assert (header["num_shards"], header["shard_id"], header["tokens"]) == (1, 0, 11)


def test_k8_costs_about_50_bytes_a_token(tmp_path):
    sizes = [20] * 50
    write_store(str(tmp_path / "s"), sizes, K=8)
    store = SoftLabelStore(str(tmp_path / "s"))
    assert store.bytes() == 1000 * 8 * (4 + 2) + 51 * 8  # int32 ids, float16 logits, int64 offsets
    files = sum(os.path.getsize(tmp_path / "s" / f"{n}.npy") for n in ("ids", "logits", "offsets"))
    assert 48 <= files / 1000 <= 50


@pytest.mark.parametrize("change,field", [
    ("count", "sentences"),
    ("sizes", "sizes_checksum"),
    ("dictionary", "dictionary_size"),
    ("symbols", "dictionary_checksum"),
])
def test_check_refuses_another_split_or_dictionary(tmp_path, change, field):
    sizes = [3, 1, 5, 2]
    _, _, d = write_store(str(tmp_path / "s"), sizes)
    store = SoftLabelStore(str(tmp_path / "s"))
    other_sizes, other_dict = sizes, d
    if change == "count":
        other_sizes = sizes + [2]
    elif change == "sizes":
        other_sizes = [2, 2, 5, 2]  # same count and total
    elif change == "dictionary":
        other_dict = dictionary(21)
    elif change == "symbols":
        other_dict = Dictionary()
        for i in range(20):
            other_dict.add_symbol(f"w{19 - i}")
    with pytest.raises(StoreError, match=f"{field} is"):
        store.check(FakeSplit(other_sizes), other_dict)


def test_unfinished_store_is_refused_and_resumes_only_with_the_same_header(tmp_path):
    path = str(tmp_path / "s")
    d, sizes = dictionary(), [2, 3]
    header = soft_labels.make_header("train", 4, 7, d, sizes, teacher_checksum="t1")
    store = soft_labels.create_or_resume(path, header, sizes)
    store["ids"][:2] = 1
    store.mark_done([0])
    with pytest.raises(StoreError, match="unfinished store"):
        SoftLabelStore(path)
    again = soft_labels.create_or_resume(path, header, sizes)
    assert again.done.tolist() == [True, False] and again["ids"][0].tolist() == [1, 1, 1, 1]
    other = soft_labels.make_header("train", 4, 7, d, sizes, teacher_checksum="t2")
    with pytest.raises(StoreError, match="teacher_checksum"):
        soft_labels.create_or_resume(path, other, sizes)
    with pytest.raises(StoreError, match="1 of 2 units not written"):
        array_store.finish(again)


def test_wrong_kind_missing_array_and_shards_are_refused(tmp_path):
    path = tmp_path / "s"
    write_store(str(path), [2, 2])
    header = json.load(open(path / "header.json"))
    json.dump(dict(header, kind="logits"), open(path / "header.json", "w"))
    with pytest.raises(StoreError, match="expected 'soft_labels'"):
        SoftLabelStore(str(path))
    json.dump(dict(header, num_shards=2, sentence_range=[0, 1]), open(path / "header.json", "w"))
    with pytest.raises(StoreError, match="sharded dump"):
        SoftLabelStore(str(path))
    json.dump(header, open(path / "header.json", "w"))
    os.remove(path / "logits.npy")
    with pytest.raises(StoreError, match="logits.npy is missing"):
        SoftLabelStore(str(path))
    with pytest.raises(StoreError, match="header.json not found"):
        SoftLabelStore(str(tmp_path))
