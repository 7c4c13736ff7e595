"""fairseq_kd.errors: the plugin's refusals end on one line with exit status 2 in any
process that imported the plugin (fairseq's own commands included); other errors keep
Python's traceback."""
import subprocess
import sys

import pytest

from fairseq_kd import errors


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_usage_error_is_one_line_and_exit_2():
    proc = _python("import fairseq_kd, sys; print('before', flush=False)\n"
                   "from fairseq_kd.errors import UsageError\n"
                   "raise UsageError('--kd-x is bad:\\n  use --kd-y')")
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[-1] == "before"  # stdout flushed before the exit
    assert proc.stderr.splitlines()[-1] == "-c: error: --kd-x is bad: use --kd-y"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind, status", [("ValueError", 1), ("KeyError", 1)])
def test_other_errors_keep_their_traceback(kind, status):
    proc = _python(f"import fairseq_kd\nraise {kind}('plain')")
    assert proc.returncode == status
    assert "Traceback" in proc.stderr and f"{kind}: " in proc.stderr


def test_missing_files_and_store_errors_are_usage_errors():
    from fairseq_kd.data.array_store import StoreError

    assert issubclass(errors.MissingFileError, FileNotFoundError)  # what callers catch stays caught
    assert issubclass(errors.MissingFileError, errors.UsageError)
    assert issubclass(StoreError, errors.UsageError) and issubclass(errors.UsageError, ValueError)


def test_the_hook_is_installed_once():
    proc = _python("import sys, fairseq_kd\nh = sys.excepthook\nfrom fairseq_kd import errors\n"
                   "errors.install_excepthook()\nassert sys.excepthook is h\nprint(h._fairseq_kd)")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "True"


def test_one_line():
    assert errors.one_line(" a\n\n  b \n") == "a b"
    assert errors.one_line("\n", "ValueError") == "ValueError"
