"""examples/multi30k/report.py: the study's table, deltas, convergence, teacher-versus-student
line, speed ratios, other test sets and figure, from a WORK laid out as study.sh writes it."""
import importlib.util
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


def _run_log(start, saves, cut=False):
    """The lines of one fairseq-train run as study.sh logs them: its config line at START, a
    checkpoint saved at each of SAVES; CUT: killed after its last save (more training, no save)."""
    lines = [f"{start} | INFO | fairseq.tasks.text_to_speech | Please install tensorboardX",
             f"{start} | INFO | fairseq_cli.train | {{'_name': None, 'common': {{'_name': None}}}}"]
    for t in saves:
        lines += [f"{t} | INFO | train | epoch 001 | loss 9.1 | num_updates 100 | wall 0",
                  f"{t} | INFO | fairseq.checkpoint_utils | Saved checkpoint /w/checkpoint_last.pt (epoch 1 @ 100 "
                  f"updates, score 3.8) (writing took 0.1 seconds)"]
    if cut:
        lines.append("2026-12-01 23:59:00 | INFO | train_inner | epoch 002:     50 / 127 loss=9.0, wall=900")
    return lines


def test_report_times_every_trained_model_across_resumed_runs(tmp_path):
    w = tmp_path
    logs = {
        "teacher": _run_log("2026-12-01 09:00:00", ["2026-12-01 09:10:00", "2026-12-01 09:20:00"]),  # 1,200 s
        "baseline": _run_log("2026-12-01 10:00:00", ["2026-12-01 10:05:00", "2026-12-01 10:10:30"]),  # 630 s
        # killed 4 min after its start, resumed: 240 + 180 s (the killed run's work after its save is not counted)
        "baseline.s2": _run_log("2026-12-01 11:00:00", ["2026-12-01 11:04:00"], cut=True)
        + _run_log("2026-12-01 12:00:00", ["2026-12-01 12:03:00"]),
        "word_kd.a0.5_T1": _run_log("2026-12-01 13:00:00", ["2026-12-01 13:01:00"]),  # 60 s
        "cmlm_raw": _run_log("2026-12-01 14:00:00", ["2026-12-01 14:30:00"]),  # still training: no final.pt
    }
    for model, lines in logs.items():
        (w / f"{model}.log").write_text("\n".join(lines) + "\n")
        if model != "cmlm_raw":
            _final(w, model)
    (w / "word_kd").mkdir()
    os.symlink("../word_kd.a0.5_T1/final.pt", w / "word_kd" / "final.pt")  # the chosen candidate, counted once
    (w / "distill.log").write_text(  # 29,000 sentences at 15.0/s: 1,933.3 s
        "data-stats | 29000 sentences | C(real) 0.7769\ndistill-corpus | train: 29000 sentences, 415286 tokens, "
        "15.0 sentences/s | kept reference: 0 (0 too long, 0 empty) | -> /w/distill\n")
    proc = subprocess.run([sys.executable, REPORT, str(w), "--seeds", "1", "2", "--models", "baseline", "word_kd"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| time, from each job"))
    assert lines[first + 2:first + 7] == [
        "| training: teacher | 1 | 20.0 |",
        "| training: baseline | 2 | 17.5 |",
        "| training: word_kd | 1 | 1.0 |",
        "| distilling the training set: distill | – | 32.2 |",
        "| all (decoding not included) | 4 | 70.7 |",  # (1200 + 1050 + 60 + 1933.3) / 60
    ]


def test_the_time_of_a_real_resumed_fairseq_train_run_is_read_from_its_log(tmp_path):
    data = utils.preprocess(utils.make_copy_task(str(tmp_path / "text")), str(tmp_path / "bin"))
    w = tmp_path / "work"
    w.mkdir()
    with open(w / "baseline.log", "w") as log:
        for updates in (12, 24):  # the second run resumes the first from its checkpoint_last.pt
            proc = utils.train(data, str(w / "baseline"), max_update=updates, extra=["--log-format", "simple"])
            log.write(proc.stdout + proc.stderr)
    text = (w / "baseline.log").read_text()
    assert text.count("Loaded checkpoint") == 1 and "wall 0" in text  # fairseq's own clock restarts at 0
    runs = _report_module().train_runs(str(w / "baseline.log"))
    assert len(runs) == 2 and all(start <= end for start, end in runs) and runs[0][1] <= runs[1][0], runs
    os.link(w / "baseline" / "checkpoint_last.pt", w / "baseline" / "final.pt")
    proc = subprocess.run([sys.executable, REPORT, str(w), "--models", "baseline"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    want = sum((end - start).total_seconds() for start, end in runs) / 60
    assert f"| training: baseline | 1 | {want:.1f} |" in proc.stdout.splitlines(), proc.stdout


def _report_module():
    spec = importlib.util.spec_from_file_location("multi30k_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
