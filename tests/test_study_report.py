"""examples/multi30k/report.py: the study's table, deltas, convergence, teacher-versus-student
line, speed ratios, other test sets and figure, from a WORK laid out as study.sh writes it."""
import json
import os
import subprocess
import sys

import utils

REPORT = os.path.join(utils.REPO, "examples", "multi30k", "report.py")


def _scores(work, model, tag, setting, bleu, chrf, latency_ms=None, per_second=None):
    d = work / "eval" / f"{model}.{tag}.{setting}"
    d.mkdir(parents=True)
    s = {"bleu": bleu, "chrf": chrf}
    if per_second is not None:
        s["throughput"] = {"sentences_per_second": per_second}
    if latency_ms is not None:
        s["latency"] = {"sentences": 100, "mean_ms": latency_ms}
    (d / "scores.json").write_text(json.dumps(s))


def _log(work, model, points, nat=False):
    """MODEL.log with one fairseq valid line per (nll_loss or loss, accuracy) point."""
    lines = []
    for epoch, (loss, acc) in enumerate(points, 1):
        key = "loss" if nat else "nll_loss"
        extra = "" if acc is None else f" | accuracy {acc}"
        lines.append(f"2026-12-01 16:15:11 | INFO | valid | epoch {epoch:03d} | valid on 'valid' subset | "
                     f"{key} {loss}{extra} | wps 4820.7 | num_updates {epoch * 100}")
    (work / f"{model}.log").write_text("\n".join(lines) + "\n")


def _final(work, model):
    (work / model).mkdir()
    (work / model / "final.pt").write_text(model)


def test_report_tables_deltas_speed_and_figure(tmp_path):
    w = tmp_path
    _final(w, "teacher")
    _log(w, "teacher", [(2.9, 44.0), (2.8, 45.0)])
    _final(w, "baseline")
    _log(w, "baseline", [(3.9, 40.0), (3.8, 46.5), (3.85, 47.0)])  # best nll at epoch 2: 46.5% > 45%
    # word_kd: a grid row, its chosen candidate's log and its final.pt a link
    _final(w, "word_kd.a0.5_T1")
    _log(w, "word_kd.a0.5_T1", [(3.7, 50.0), (3.6, 51.0)])
    (w / "word_kd").mkdir()
    os.symlink("../word_kd.a0.5_T1/final.pt", w / "word_kd" / "final.pt")
    (w / "word_kd.choice").write_text("word_kd.a0.5_T1\n")
    for m in ("cmlm_raw", "cmlm_distill"):
        _final(w, m)
    _log(w, "cmlm_raw", [(8.5, None), (8.4, None)], nat=True)
    _log(w, "cmlm_distill", [(8.3, None), (8.6, None)], nat=True)

    _scores(w, "teacher", "test", "b1", 37.0, 56.0)
    _scores(w, "teacher", "test", "b5", 38.0, 57.0, latency_ms=300.0, per_second=20.0)
    _scores(w, "baseline", "test", "b1", 26.0, 46.0, latency_ms=50.0, per_second=80.0)
    _scores(w, "baseline", "test", "b5", 28.0, 48.0, latency_ms=100.0, per_second=40.0)
    _scores(w, "baseline.s2", "test", "b5", 29.0, 49.0)  # second seed: mean 28.5, spread 0.5
    _scores(w, "baseline.s2", "test", "b1", 27.0, 47.0)
    _scores(w, "word_kd", "test", "b1", 27.5, 47.5)
    _scores(w, "word_kd", "test", "b5", 29.75, 49.0)
    _scores(w, "cmlm_raw", "test", "i4", 3.0, 13.0)
    _scores(w, "cmlm_raw", "test", "i10", 3.5, 14.0)
    _scores(w, "cmlm_distill", "test", "i4", 4.0, 15.0, latency_ms=25.0, per_second=160.0)
    _scores(w, "cmlm_distill", "test", "i10", 4.25, 16.0, latency_ms=62.5, per_second=64.0)
    _scores(w, "baseline", "newstest", "b5", 2.5, 20.0)
    (w / "distill.stats.json").write_text(json.dumps(
        {"real": {"complexity": 0.777}, "distilled": {"complexity": 0.525}, "faithfulness": 8.834}))

    proc = subprocess.run([sys.executable, REPORT, str(w), "--seeds", "1", "2", "--models", "baseline", "word_kd",
                           "cmlm_raw", "cmlm_distill", "--budget", "students 800 updates"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (w / "results.md").read_text()
    assert proc.stdout == text
    lines = text.splitlines()
    assert lines[0] == "Budget: students 800 updates; seeds 1 2 for baseline, seq_kd, cmlm_raw, cmlm_distill."

    def row(prefix):
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, (prefix, text)
        return [c.strip() for c in found[0].strip("|").split("|")]

    assert row("| baseline | AT")[2:] == ["26.50 ± 0.50", "46.50 ± 0.50", "28.50 ± 0.50", "48.50 ± 0.50", "2", "–",
                                       "yes: best valid nll_loss at epoch 2 of 3"]
    wk = row("| word_kd | +")
    assert wk[1].endswith("(chosen on valid: word_kd.a0.5_T1)")
    # one seed against the baseline's two: 29.75 - mean(28, 29); convergence from the chosen candidate's log
    assert wk[2:] == ["27.50", "47.50", "29.75", "49.00", "1", "+1.25", "no: valid nll_loss still falling at epoch 2"]
    assert row("| cmlm_distill | CMLM")[2:] == ["4.00", "15.00", "4.25", "16.00", "1", "+0.75",
                                           "yes: best valid loss at epoch 1 of 2"]
    assert row("| cmlm_raw | Mask")[-1] == "no: valid loss still falling at epoch 2"
    assert ("Teacher 45.0% vs student 46.5% (valid token accuracy, teacher-forced, best checkpoints). WARNING: "
            "the teacher is not better than the baseline student") in text
    # speed: ratios to the baseline student at beam 5, batch-1 latency and large-batch throughput
    assert row("| teacher, beam 5 |") == ["teacher, beam 5", "300.0", "0.33x", "20.0", "0.50x"]
    assert row("| baseline, beam 1 |") == ["baseline, beam 1", "50.0", "2.00x", "80.0", "2.00x"]
    assert row("| baseline, beam 5 |") == ["baseline, beam 5", "100.0", "1.00x", "40.0", "1.00x"]
    assert row("| cmlm_distill, 4 iterations |") == ["cmlm_distill, 4 iterations", "25.0", "4.00x", "160.0", "4.00x"]
    assert row("| cmlm_distill, 10 iterations |") == ["cmlm_distill, 10 iterations", "62.5", "1.60x", "64.0",
                                                      "1.60x"]
    assert row("| beam-5 distilled |") == ["beam-5 distilled", "0.525", "8.834"]
    assert row("| baseline | 2.50 |")[1:] == ["2.50", "20.00"]  # the other test set, beam 5
    assert "| row | newstest: BLEU (beam 5 / 10 iterations) | chrF |" in lines
    png = (w / "bleu_vs_speed.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_without_latency_has_no_speed_table_and_no_figure(tmp_path):
    _final(tmp_path, "baseline")
    _scores(tmp_path, "baseline", "test", "b1", 26.0, 46.0, per_second=80.0)
    _scores(tmp_path, "baseline", "test", "b5", 28.0, 48.0, per_second=40.0)
    proc = subprocess.run([sys.executable, REPORT, str(tmp_path), "--models", "baseline"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "latency ms/sentence" not in proc.stdout and "| baseline | AT student" in proc.stdout
    assert not (tmp_path / "bleu_vs_speed.png").exists()
