"""fairseq_kd.batching: stock fairseq commands keep the last batch of a split (fairseq issue #5036)."""
import logging
import os
import re
import sys
import types

import numpy as np
import pytest

import utils
from fairseq.data import data_utils

from fairseq_kd import batching

N_TEST = 60  # not a multiple of 8


@pytest.fixture(scope="module")
def test60(tiny_data, tmp_path_factory):
    """tiny_data's dictionaries with a 60-sentence test split (tiny_teacher translates it)."""
    root = tmp_path_factory.mktemp("test60")
    text = utils.make_copy_task(str(root / "text"), n_train=0, n_valid=0, n_test=N_TEST, seed=3)
    for split in ("train", "valid"):
        for lang in ("src", "tgt"):
            os.remove(os.path.join(text, f"{split}.{lang}"))
    return utils.preprocess(text, str(root / "bin"), extra=[
        "--srcdict", os.path.join(tiny_data, "dict.src.txt"),
        "--tgtdict", os.path.join(tiny_data, "dict.tgt.txt"),
    ])


@pytest.mark.parametrize("batching_args", [
    ["--max-tokens", "2000"],  # one batch of 56 and a remainder of 4
    ["--batch-size", "32"],  # 32, 24 and a remainder of 4
    ["--max-tokens", "100"],  # many batches bounded by tokens
])
def test_stock_generate_translates_every_sentence(test60, tiny_teacher, batching_args):
    # Stock fairseq-generate: default --required-batch-size-multiple (8), default --num-workers.
    proc = utils.run([
        utils.command("fairseq-generate"), test60, "--user-dir", utils.USER_DIR, "--path", tiny_teacher,
        "--gen-subset", "test", "--beam", "2", "--cpu", *batching_args,
    ])
    ids = sorted(int(line.split("\t")[0][2:]) for line in proc.stdout.splitlines() if line.startswith("H-"))
    assert ids == list(range(N_TEST))
    assert len(re.findall(r"fairseq issue #5036", proc.stdout + proc.stderr)) == 1


def _fairseq_batch_by_size():
    """fairseq's own function, as the plugin found it."""
    fixed = data_utils.batch_by_size
    assert getattr(fixed, batching._MARK, False), "the plugin did not install its batching"
    return fixed.__wrapped__


def _case(n, seed):
    rng = np.random.RandomState(seed)
    sizes = rng.randint(1, 30, size=n).astype(np.int64)
    return np.argsort(sizes, kind="mergesort").astype(np.int64), sizes


@pytest.mark.parametrize("n", [1, 5, 8, 13, 60, 64, 101])
@pytest.mark.parametrize("mult", [1, 3, 8])
@pytest.mark.parametrize("max_tokens,max_sentences", [(None, 16), (None, 32), (120, None), (300, 24)])
def test_batch_by_size_keeps_every_index(n, mult, max_tokens, max_sentences):
    indices, sizes = _case(n, seed=n * 31 + mult)
    kwargs = dict(max_tokens=max_tokens, max_sentences=max_sentences, required_batch_size_multiple=mult)
    ours = data_utils.batch_by_size(indices, lambda i: sizes[i], **kwargs)
    theirs = _fairseq_batch_by_size()(indices, lambda i: sizes[i], **kwargs)

    # Every index exactly once, in fairseq's order.
    assert np.array_equal(np.concatenate(ours), indices)
    # fairseq's batches unchanged; at most one more, the remainder fairseq dropped.
    assert len(ours) - len(theirs) in (0, 1)
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b)
    dropped = n - sum(len(b) for b in theirs)
    assert len(ours) - len(theirs) == (1 if dropped else 0)
    if mult > 1 and n % mult and max_tokens is None:
        assert dropped > 0  # the case is one fairseq gets wrong
    # Limits hold for every batch, the remainder included.
    for b in ours:
        assert len(b) > 0
        if max_sentences is not None:
            assert len(b) <= max_sentences
        if max_tokens is not None:
            assert len(b) * sizes[b].max() <= max_tokens
    # fairseq's size rule: fewer than `mult` sentences or a multiple of it, but for the last batch;
    # bounded by sentences only, every batch but the last is a multiple.
    for b in ours[:-1]:
        assert len(b) % mult == 0 or (max_tokens is not None and len(b) < mult)


def test_batch_by_size_with_a_size_vector_an_iterator_and_no_indices():
    indices, sizes = _case(13, seed=0)
    kwargs = dict(max_sentences=4, required_batch_size_multiple=4)
    by_fn = data_utils.batch_by_size(indices, lambda i: sizes[i], **kwargs)
    by_vec = data_utils.batch_by_size(indices, None, num_tokens_vec=sizes[indices], **kwargs)
    by_iter = data_utils.batch_by_size(iter(indices.tolist()), lambda i: sizes[i], **kwargs)
    assert [len(b) for b in by_fn] == [4, 4, 4, 1]
    for other in (by_vec, by_iter):
        assert [b.tolist() for b in other] == [b.tolist() for b in by_fn]
    assert data_utils.batch_by_size(np.zeros(0, dtype=np.int64), lambda i: 1, **kwargs) == []


def test_logged_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(batching, "_logged", False)
    indices, sizes = _case(13, seed=0)
    with caplog.at_level(logging.INFO, logger="fairseq_kd.batching"):
        for _ in range(3):
            data_utils.batch_by_size(indices, lambda i: sizes[i], max_sentences=8, required_batch_size_multiple=8)
    records = [r for r in caplog.records if r.name == "fairseq_kd.batching"]
    assert len(records) == 1 and "#5036" in records[0].getMessage()


def test_install_rebinds_names_imported_before_the_plugin(monkeypatch):
    """A module that ran `from fairseq.data.data_utils import batch_by_size` before the
    plugin was imported holds fairseq's function under its own name: it sees the fix too."""
    original = _fairseq_batch_by_size()
    early = types.ModuleType("early_importer")
    early.batch_by_size = original
    early.bbs = original
    monkeypatch.setitem(sys.modules, "early_importer", early)
    monkeypatch.setattr(data_utils, "batch_by_size", original)  # as before the plugin

    batching.install()
    fixed = data_utils.batch_by_size
    assert getattr(fixed, batching._MARK, False) and fixed.__wrapped__ is original
    assert early.batch_by_size is fixed and early.bbs is fixed
    batching.install()  # idempotent
    assert data_utils.batch_by_size is fixed and fixed.__wrapped__ is original
