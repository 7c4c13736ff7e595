"""The store completion/resume protocol shared by every memory-mapped store."""
import os

import numpy as np
import pytest

from fairseq_kd.data import array_store as S


def test_store_is_readable_only_when_finished(tmp_path):
    path = str(tmp_path / "store")
    st = S.create(path, {"kind": "test", "k": 2}, {"a": ((4, 2), "int32")}, units=4)
    st["a"][:2] = 7
    st.mark_done(slice(0, 2))
    with pytest.raises(S.StoreError, match="unfinished store"):
        S.open_store(path)
    with pytest.raises(S.StoreError, match="2 of 4 units not written"):
        S.finish(st)
    # a rerun with other settings never mixes into the unfinished store
    with pytest.raises(S.StoreError, match=r"other settings \(k\)"):
        S.resume(path, {"kind": "test", "k": 3})
    st2 = S.resume(path, {"kind": "test", "k": 2})
    assert st2.done.tolist() == [True, True, False, False]
    st2["a"][2:] = 1
    st2.mark_done(slice(2, 4))
    S.finish(st2)
    header, arrays = S.open_store(path, kind="test")
    assert header["k"] == 2 and arrays["a"][:, 0].tolist() == [7, 7, 1, 1]
    assert sorted(os.listdir(path)) == ["a.npy", "header.json"]
    with pytest.raises(S.StoreError, match="expected 'other'"):
        S.open_store(path, kind="other")
    with pytest.raises(S.StoreError, match="already holds a finished store"):
        S.create(path, {"kind": "test"}, {"a": ((1,), "int32")}, units=1)


def test_expect_and_checksums(tmp_path):
    with pytest.raises(S.StoreError, match="k is 2 in the store, 3 here"):
        S.expect({"k": 2}, "k", 3, "p", "the data")
    assert S.sizes_checksum([1, 2]) != S.sizes_checksum([2, 1])
    np.save(tmp_path / "x.npy", np.zeros(3))
    assert len(S.file_checksum(str(tmp_path / "x.npy"))) == 64


def test_missing_or_corrupt_arrays_are_refused(tmp_path):
    path = str(tmp_path / "s")
    st = S.create(path, {"kind": "t"}, {"a": ((3,), "float16")}, units=1)
    st.mark_done(0)
    S.finish(st)
    os.remove(os.path.join(path, "a.npy"))
    np.save(os.path.join(path, "a.npy"), np.zeros(5, dtype=np.float16))
    with pytest.raises(S.StoreError, match="header says"):
        S.open_store(path)
    with pytest.raises(S.StoreError, match="not a store"):
        S.open_store(str(tmp_path / "nothing"))
