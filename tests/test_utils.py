"""tests/utils.py's command runner: one retry of a native abort at interpreter exit only."""
import sys

import pytest
import utils

ABORT_ONCE = (
    "import os, sys\n"
    "marker = sys.argv[1]\n"
    "if not os.path.exists(marker):\n"
    "    open(marker, 'w').close()\n"
    "    sys.stderr.write('terminate called without an active exception\\n'); sys.stderr.flush(); os.abort()\n"
    "print('second run')\n"
)


def test_an_abort_at_exit_is_run_again_once(tmp_path):
    proc = utils.run([sys.executable, "-c", ABORT_ONCE, tmp_path / "marker"])
    assert proc.returncode == 0 and proc.stdout.strip() == "second run"


def test_a_second_abort_fails(tmp_path):
    always = "import os, sys\nsys.stderr.write('terminate called without an active exception\\n'); sys.stderr.flush(); os.abort()\n"
    with pytest.raises(AssertionError, match="command failed"):
        utils.run([sys.executable, "-c", always])


def test_other_failures_are_not_retried(tmp_path):
    once = "import os, sys\nopen(sys.argv[1], 'a').write('x')\nsys.exit(3)\n"
    with pytest.raises(AssertionError, match=r"command failed \(3\)"):
        utils.run([sys.executable, "-c", once, tmp_path / "count"])
    assert (tmp_path / "count").read_text() == "x"  # ran once
