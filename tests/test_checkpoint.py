"""Safe checkpoint loading on torch >= 2.6 (fairseq_kd.checkpoint)."""
import fractions
import os
import pickle
import shutil
import sys

import pytest
import torch

import utils
from fairseq_kd import checkpoint


def test_plain_torch_load_refuses_fairseq_checkpoints_without_the_plugin(tiny_teacher):
    """The problem being fixed: torch's safe unpickler knows nothing of argparse.Namespace."""
    code = (
        "import torch, sys\n"
        "try:\n    torch.load(sys.argv[1])\nexcept Exception as e:\n    print('REFUSED', e)\n"
    )
    proc = utils.run([sys.executable, "-c", code, tiny_teacher])
    assert "REFUSED" in proc.stdout and "argparse.Namespace" in proc.stdout


def test_generate_interactive_and_restore_load_with_the_plugin(tiny_data, tiny_teacher, tmp_path):
    hyps = utils.generate(tiny_data, tiny_teacher)
    assert len(hyps) == 20

    import subprocess

    out = subprocess.run(
        [utils.command("fairseq-interactive"), tiny_data, "--user-dir", utils.USER_DIR,
         "--path", tiny_teacher, "--beam", "2", "--cpu", "--source-lang", "src", "--target-lang", "tgt"],
        input="a1 a2 a3\n", capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert [l for l in out.stdout.splitlines() if l.startswith("H-0")]

    save = tmp_path / "restore"
    save.mkdir()
    shutil.copy(tiny_teacher, save / "start.pt")
    proc = utils.train(
        tiny_data, str(save), max_update=130, extra=["--restore-file", str(save / "start.pt")]
    )
    log = proc.stdout + proc.stderr
    assert "Loaded checkpoint" in log and "(epoch" in log
    state = checkpoint.load(str(save / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 130  # continued from 120


def test_other_types_are_refused_naming_the_type(tiny_data, tiny_teacher, tmp_path):
    state = torch.load(tiny_teacher, weights_only=False)  # test fixture we wrote ourselves
    state["extra_state"]["surprise"] = fractions.Fraction(1, 3)
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    with pytest.raises(pickle.UnpicklingError, match="fractions.Fraction"):
        checkpoint.load(bad)
    proc = utils.run(
        [utils.command("fairseq-generate"), tiny_data, "--user-dir", utils.USER_DIR, "--path", bad,
         "--gen-subset", "test", "--cpu", "--max-tokens", "1000"],
        check=False,
    )
    assert proc.returncode != 0
    assert "fractions.Fraction" in proc.stderr
    assert not [l for l in proc.stdout.splitlines() if l.startswith("H-")]


def test_allowed_globals_are_exactly_namespace_and_numpy_scalars():
    import argparse

    import numpy as np

    allowed = checkpoint.fairseq_checkpoint_globals()
    assert argparse.Namespace in allowed and np.dtype in allowed
    assert all(t is argparse.Namespace or t.__module__.startswith("numpy") for t in allowed)
