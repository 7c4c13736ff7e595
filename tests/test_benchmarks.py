"""The benchmark scripts stay runnable: each one's --help, and the arithmetic they report."""
import glob
import math
import os
import subprocess
import sys

import pytest

import utils

BENCHMARKS = sorted(p for p in glob.glob(os.path.join(utils.REPO, "benchmarks", "*.py"))
                    if not os.path.basename(p).startswith("_"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=os.path.basename)
def test_help(script):
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(script))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")


def test_store_payback_epochs():
    sys.path.insert(0, os.path.join(utils.REPO, "benchmarks"))
    from store_payback import payback_epochs

    # 1,000 tokens: online 100 words/s = 10 s an epoch, store 200 words/s = 5 s: a 20 s dump pays back in 4
    assert payback_epochs(20.0, 1000, 100.0, 200.0) == pytest.approx(4.0)
    assert math.isinf(payback_epochs(20.0, 1000, 200.0, 100.0))  # a store slower than the teacher never does
    assert math.isinf(payback_epochs(20.0, 1000, 100.0, 100.0))
