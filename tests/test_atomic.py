"""fairseq_kd.data.atomic: a file appears whole under its name, or not at all."""
import contextlib
import os

import pytest

from fairseq_kd.data.atomic import atomic_open, temporary_name


def test_writes_and_replaces(tmp_path):
    path = str(tmp_path / "out.txt")
    with atomic_open(path, encoding="utf-8") as f:
        f.write("first\n")
        assert not os.path.exists(path)  # nothing under the name until the write is done
        assert os.path.exists(temporary_name(path))
    assert open(path).read() == "first\n"
    with atomic_open(path, "wb", fsync=True) as f:
        f.write(b"second\n")
    assert open(path).read() == "second\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / "out.txt")
    with open(path, "w") as f:
        f.write("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert open(path).read() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_files_written_together_all_or_none(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(ValueError):
        with contextlib.ExitStack() as stack:
            fa = stack.enter_context(atomic_open(a))
            fb = stack.enter_context(atomic_open(b))
            fa.write("a")
            fb.write("b")
            raise ValueError("second file failed")
    assert os.listdir(tmp_path) == []
    with contextlib.ExitStack() as stack:
        for path in (a, b):
            stack.enter_context(atomic_open(path)).write(os.path.basename(path))
    assert sorted(os.listdir(tmp_path)) == ["a", "b"] and open(b).read() == "b"


@pytest.mark.parametrize("mode", ["r", "a", "w+", "x"])
def test_refuses_modes_that_do_not_write_a_whole_file(tmp_path, mode):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(str(tmp_path / "x"), mode):
            pass
    assert os.listdir(tmp_path) == []
