"""tests/utils.py's command runner: a native abort at interpreter exit is run again once, or kept
when a fairseq-train had finished ("done training"); nothing else is retried."""
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


def test_a_fairseq_train_that_aborts_after_done_training_keeps_its_output(tmp_path):
    """Running it again would resume from its saved checkpoint and train nothing."""
    done = ("import os, sys\nopen(sys.argv[1], 'a').write('x')\n"
            "print('epoch 001 | loss 1.0'); print('done training in 0.1 seconds'); sys.stdout.flush()\n"
            "sys.stderr.write('terminate called without an active exception\\n'); sys.stderr.flush(); os.abort()\n")
    proc = utils.run([sys.executable, "-c", done, tmp_path / "runs"])
    assert proc.returncode == 0 and "epoch 001 | loss 1.0" in proc.stdout
    assert (tmp_path / "runs").read_text() == "x"  # ran once
