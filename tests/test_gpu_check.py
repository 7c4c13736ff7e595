"""benchmarks/gpu_check.sh: its dry run (tiny sizes, CPU, float32) runs every stage through the
real commands and writes the results file with the keys of a GPU run, finite numbers where
numbers belong; a run without a GPU and without --dry-run stops at once with one line."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import utils

SCRIPT = os.path.join("benchmarks", "gpu_check.sh")
STAGES = {"data", "cmlm_teacher", "at_teacher", "at_student", "cmlm_student", "levt_student", "dump_cmlm",
          "dump_at", "student_wps", "latency_at", "latency_cmlm", "latency_levt"}
LATENCY = ("at_beam5", "cmlm_iter10", "levt_iter10")


def run_script(args, tmp, timeout=1500):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", SCRIPT, *args], cwd=utils.REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def positive(x):
    return is_number(x) and x > 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "results.json"
    proc = run_script(["--dry-run", "--out", str(out)], tmp)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-4000:]}"
    with open(out) as f:
        return proc, json.load(f), tmp


def test_one_progress_line_per_stage_and_a_summary_line(dry_run):
    proc, results, tmp = dry_run
    numbers = [int(m.group(1)) for m in re.finditer(r"^gpu_check \[ *\d+s\] (\d+)/12 ", proc.stdout, re.M)]
    assert sorted(numbers) == list(range(1, 13))
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("gpu_check: done in ") and "results.json" in summary
    assert not any(name.startswith("gpu_check.") for name in os.listdir(tmp))  # the work directory is removed


def test_results_have_the_keys_of_a_gpu_run(dry_run):
    _, r, _ = dry_run
    assert r["dry_run"] is True and r["device"] == "cpu" and r["fp16"] is False
    assert r["ok"] is True and r["failed_stages"] == []
    assert set(r["stages"]) == STAGES and all(s["ok"] and is_number(s["seconds"]) for s in r["stages"].values())
    assert is_number(r["seconds"]) and "git_revision" in r
    data = r["data"]
    assert data["source"] == "synthetic" and data["train_sentences"] == 120 and positive(data["train_target_tokens"])


def test_cmlm_training_losses_are_recorded(dry_run):
    _, r, _ = dry_run
    c = r["cmlm_fp16_training"]
    assert c["fp16"] is False and c["updates"] == 4
    assert len(c["losses"]) == 4 and all(positive(x) for x in c["losses"])
    assert c["loss_first"] == c["losses"][0] and c["loss_last"] == c["losses"][-1]
    assert c["loss_finite"] is True
    assert isinstance(c["loss_falls"], bool)  # a few float32 updates on the CPU: present, not asserted true
    assert c["loss_drop"] == pytest.approx(c["loss_first"] - c["loss_last"])


def test_dump_tokens_per_second_of_both_teachers(dry_run):
    _, r, _ = dry_run
    for kind, passes in (("cmlm", 7), ("at", None)):
        assert positive(r["dump_target_tokens_per_s"][kind])
        d = r["dump"][kind]
        assert d["tokens_per_s"] == r["dump_target_tokens_per_s"][kind] and d["passes"] == passes
        assert d["subset"] == "train" and d["sentences"] == r["data"]["train_sentences"]
        assert d["tokens"] == r["data"]["train_target_tokens"]  # every target token, EOS included
        assert positive(d["bytes_per_token"])


def test_student_words_per_second_and_both_ratios(dry_run):
    _, r, _ = dry_run
    s = r["student_wps"]
    base = s["label_smoothed_cross_entropy"]
    for key in ("label_smoothed_cross_entropy", "word_kd_online", "word_kd_store", "ratio_online", "ratio_store",
                "teacher_forward_ms", "words_per_batch"):
        assert positive(s[key]), key
    assert s["ratio_online"] == pytest.approx(s["word_kd_online"] / base)
    assert s["ratio_store"] == pytest.approx(s["word_kd_store"] / base)
    assert is_number(s["overhead_over_teacher_forward"])
    assert s["updates"] == 2 and s["repeats"] == 1


def test_batch_one_latency_of_at_cmlm_and_levt(dry_run):
    _, r, _ = dry_run
    ms = r["latency_batch1_ms"]
    assert set(ms) == set(LATENCY) and all(positive(ms[k]) for k in LATENCY)
    for name in LATENCY:
        assert r["latency"][name]["sentences"] == 2 and r["latency"][name]["mean_ms"] == ms[name]
        assert positive(r["latency"][name]["output_tokens_per_sentence"])
    speedup = r["latency_speedup_vs_at_beam5"]
    assert set(speedup) == {"cmlm_iter10", "levt_iter10"}
    for name, x in speedup.items():
        assert x == pytest.approx(ms["at_beam5"] / ms[name])


def test_help_and_wrong_arguments(tmp_path):
    proc = run_script(["--help"], tmp_path, timeout=60)
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "usage:" in proc.stdout
    proc = run_script(["--bogus"], tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--bogus" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")
def test_without_a_gpu_only_the_dry_run_runs(tmp_path):
    out = tmp_path / "results.json"
    proc = run_script(["--out", str(out)], tmp_path, timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not out.exists()
