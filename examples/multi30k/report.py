"""The Multi30k study's report: its table, speed ratios, data measures and figure.

Reads what ``examples/multi30k/study.sh`` wrote under WORK (training logs
``NAME.log``, ``eval/NAME.TAG.SETTING/scores.json`` of ``fairseq-kd-evaluate``,
``distill.stats.json`` / ``seqinter.stats.json`` of ``fairseq-kd-data-stats``,
``ROW.choice`` of the settings chosen on valid, ``bert_kd/`` of the bert_kd row, ``distill.log`` /
``seqinter.log`` of ``fairseq-kd-distill-corpus``) and writes ``WORK/results.md``
and ``WORK/bleu_vs_speed.png``; prints the table.

    python examples/multi30k/report.py WORK --seeds 1 2 --models baseline word_kd ...
"""
import argparse
import datetime
import glob
import json
import os
import re
import statistics
import sys
from typing import Dict, List, Optional, Tuple

WHAT = {
    "teacher": "teacher, 3+3 x 256 Transformer",
    "baseline": "AT student, label smoothing 0.1",
    "word_kd": "+ word-level KD, online teacher",
    "seq_kd": "seq-KD: teacher's beam-5 training set",
    "seq_inter": "Seq-Inter: n-best closest to the reference",
    "seq_word_kd": "seq-KD + word-KD",
    "seq_interp": "seq_kd: (1-a) NLL(gold) + a NLL(teacher)",
    "cmlm_raw": "Mask-Predict (CMLM) on gold data",
    "cmlm_distill": "CMLM on distilled data",
    "cmlm_distill_kd": "CMLM distilled + nat_word_kd",
    "levt_distill": "Levenshtein Transformer, distilled",
    "word_kd_reverse_kl": "word-KD, reverse KL",
    "word_kd_jsd": "word-KD, JSD (beta: BETA_GRID)",
    "word_kd_skew_forward_kl": "word-KD, skew forward KL (skew: SKEW_GRID)",
    "word_kd_skew_reverse_kl": "word-KD, skew reverse KL (skew: SKEW_GRID)",
    "word_kd_tvd": "word-KD, total variation",
    "word_kd_select_batch": "word-KD, selection batch (r: SELECTION_GRID)",
    "word_kd_select_global": "word-KD, selection global (r: SELECTION_GRID)",
    "word_kd_on_policy": "word-KD, on-policy (lambda: ON_POLICY_GRID)",
    "word_kd_topk8": "word-KD, online teacher top-8",
    "store_topk8": "word-KD from the teacher's top-8 store",
    "store_sampled12": "word-KD from the teacher's 12-sample store",
}
BASELINE_OF = {
    "word_kd": "baseline", "seq_kd": "baseline", "seq_inter": "baseline", "seq_word_kd": "baseline",
    "seq_interp": "baseline", **{k: "baseline" for k in WHAT if k.startswith(("word_kd_", "store_"))},
    "cmlm_distill": "cmlm_raw", "cmlm_distill_kd": "cmlm_raw", "levt_distill": "cmlm_raw",
}
SETTING_NAME = {"b1": "beam 1", "b5": "beam 5", "i4": "4 iterations", "i10": "10 iterations"}


def is_nat(name: str) -> bool:
    return name.startswith(("cmlm", "levt"))


def model_names(row: str, seeds: List[str], multi: bool) -> List[str]:
    if not multi:
        return [row]
    return [row if s == seeds[0] else f"{row}.s{s}" for s in seeds]


def scores(work: str, model: str, tag: str, setting: str) -> Optional[dict]:
    path = os.path.join(work, "eval", f"{model}.{tag}.{setting}", "scores.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


VALID_LINE = re.compile(r"epoch (\d+) \| valid on 'valid' subset \|(.*)")


def valid_curve(work: str, model: str) -> List[Dict[str, float]]:
    """One dict per validation of MODEL's training log: epoch, nll_loss, loss, accuracy."""
    path = os.path.join(work, f"{model}.log")
    if os.path.islink(os.path.join(work, model, "final.pt")):  # a grid row: its chosen candidate's log
        chosen = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(work, model, "final.pt"))))
        path = os.path.join(work, f"{chosen}.log")
    curve = []
    if not os.path.isfile(path):
        return curve
    with open(path) as f:
        for line in f:
            m = VALID_LINE.search(line)
            if not m:
                continue
            point = {"epoch": int(m.group(1))}
            for key, value in re.findall(r"(\w+) ([-\d.]+)", m.group(2)):
                try:
                    point[key] = float(value)
                except ValueError:
                    pass
            curve.append(point)
    return curve


def convergence(curve: List[Dict[str, float]], metric: str) -> str:
    values = [p[metric] for p in curve if metric in p]
    if not values:
        return "no validation"
    best = min(range(len(values)), key=values.__getitem__)
    if best == len(values) - 1:
        return f"no: valid {metric} still falling at epoch {curve[-1]['epoch']}"
    return f"yes: best valid {metric} at epoch {curve[best]['epoch']} of {curve[-1]['epoch']}"


RUN_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| fairseq_cli\.train \| \{")
SAVED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| fairseq\.checkpoint_utils \| Saved checkpoint")
CORPUS_LINE = re.compile(r"distill-corpus \| \w+: (\d+) sentences, \d+ tokens, ([\d.]+) sentences/s")


def train_runs(log: str) -> List[Tuple[datetime.datetime, datetime.datetime]]:
    """(start, last saved checkpoint) of each fairseq-train run in the training log LOG (a killed
    run and the runs that resumed it; a run that saved nothing is left out)."""
    runs: List[List[datetime.datetime]] = []  # [start, last save] per run; a run that saved nothing: [start]
    with open(log) as f:
        for line in f:
            m = RUN_START.match(line) or SAVED.match(line)
            if not m:
                continue
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            if m.re is RUN_START:
                runs.append([when])
            elif runs:
                runs[-1][1:] = [when]
    return [(r[0], r[1]) for r in runs if len(r) == 2]


def train_seconds(work: str, model: str) -> Optional[float]:
    """MODEL's training time from the timestamps of its log: each run's time from its start to its
    last saved checkpoint, summed (work after a killed run's last checkpoint was done again, and is
    counted once). fairseq's own ``wall`` cannot be used: a resumed run logs 0 there."""
    path = os.path.join(work, f"{model}.log")
    if not os.path.isfile(path):
        return None
    runs = train_runs(path)
    return sum((end - start).total_seconds() for start, end in runs) if runs else None


def time_table(work: str, rows: List[str]) -> List[str]:
    """The measured time of every trained model of WORK (grid candidates and seeds included),
    by row (ROWS first, in their order), and of each distilled corpus (its sentences over its rate)."""
    by_row: Dict[str, List[float]] = {}
    for final in sorted(glob.glob(os.path.join(work, "*", "final.pt"))):
        if os.path.islink(final):  # a grid row's choice: its candidate is counted
            continue
        model = os.path.basename(os.path.dirname(final))
        seconds = train_seconds(work, model)
        if seconds is not None:
            by_row.setdefault(model.split(".")[0], []).append(seconds)
    corpora = []
    for name in ("distill", "seqinter"):
        path = os.path.join(work, f"{name}.log")
        if os.path.isfile(path):
            with open(path) as f:
                corpora += [(name, int(m.group(1)) / float(m.group(2))) for m in CORPUS_LINE.finditer(f.read())]
    if not by_row and not corpora:
        return []
    out = ["| time, from each job's log (jobs that ran side by side shared the CPU) | models | minutes |",
           "|---|---:|---:|"]
    total, n = 0.0, 0
    for row in sorted(by_row, key=lambda r: (rows.index(r) if r in rows else len(rows), r)):
        times = by_row[row]
        out.append(f"| training: {row} | {len(times)} | {sum(times) / 60:.1f} |")
        total, n = total + sum(times), n + len(times)
    for name, seconds in corpora:
        out.append(f"| distilling the training set: {name} | – | {seconds / 60:.1f} |")
        total += seconds
    out += [f"| all (decoding not included) | {n} | {total / 60:.1f} |", ""]
    return out


def bert_kd_table(work: str, seeds: List[str]) -> List[str]:
    """The bert_kd row (``WORK/bert_kd``, written by scripts/quickstart_bert.sh): its own
    WordPiece baseline and BERT-KD on test2016 (uncased), the C-MLM teacher's budget and
    valid masked-token accuracy against that baseline's valid token accuracy, and the
    alpha:T candidates' valid BLEU."""
    root = os.path.join(work, "bert_kd")

    def read(model: str, tag: str, beam: str) -> Optional[List[float]]:
        final = os.path.join(root, model, "final.pt")  # a chosen model: its scores are its candidate's
        if os.path.islink(final):
            model = os.path.basename(os.path.dirname(os.path.realpath(final)))
        path = os.path.join(root, "scores", f"{model}.{tag}.{beam}.txt")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return [float(v) for v in f.read().split()]

    def seed_scores(model: str, beam: str, i: int) -> List[float]:
        got = [read(model if s == seeds[0] else f"{model}.s{s}", "test", beam) for s in seeds]
        return [g[i] for g in got if g is not None]

    if not os.path.isdir(os.path.join(root, "scores")):
        return []
    out = ["| BERT-KD row (WordPiece, uncased) | BLEU beam 1 | chrF beam 1 | BLEU beam 5 | chrF beam 5 | seeds "
           "| vs its baseline (BLEU, beam 1 / 5) |", "|---|---:|---:|---:|---:|---:|---:|"]
    choice = os.path.join(root, "bert_kd.choice")
    chosen = open(choice).read().strip() if os.path.isfile(choice) else None
    for model, what in (("baseline", "its baseline (2+2 x 128, label smoothing 0.1)"),
                        ("bert_kd", "BERT-KD: the C-MLM teacher's top-K store"
                         + (f", alpha:T {chosen} chosen on valid" if chosen else ""))):
        cells = [fmt(seed_scores(model, b, i)) for b in ("b1", "b5") for i in (0, 1)]
        delta = "–"
        if model == "bert_kd":
            d = [statistics.mean(seed_scores("bert_kd", b, 0)) - statistics.mean(seed_scores("baseline", b, 0))
                 for b in ("b1", "b5") if seed_scores("bert_kd", b, 0) and seed_scores("baseline", b, 0)]
            delta = " / ".join(f"{x:+.2f}" for x in d) or "–"
        out.append(f"| {what} | {' | '.join(cells)} | {len(seed_scores(model, 'b1', 0))} | {delta} |")
    out.append("")
    teacher, student = valid_curve(root, "teacher"), valid_curve(root, "baseline")
    if teacher and student and "accuracy" in teacher[-1] and "accuracy" in student[-1]:
        updates = int(teacher[-1].get("num_updates", 0))
        line = (f"C-MLM teacher: {updates} updates, masked-token accuracy {teacher[-1]['accuracy']:.1f}% on valid "
                f"(fixed masks) vs the WordPiece baseline's token accuracy {student[-1]['accuracy']:.1f}%.")
        if teacher[-1]["accuracy"] <= student[-1]["accuracy"]:
            line += " WARNING: the teacher is not better than the student it teaches."
        out += [line, ""]
    candidates = sorted(glob.glob(os.path.join(root, "scores", "bert_kd.a*.valid.b1.txt")))
    if candidates:
        names = [os.path.basename(c)[len("bert_kd."):-len(".valid.b1.txt")] for c in candidates]
        out += ["Valid BLEU (greedy) of the alpha:T candidates: " + ", ".join(
            f"{n} {read('bert_kd.' + n, 'valid', 'b1')[0]:.2f}" for n in names) + ".", ""]
    return out


def fmt(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work")
    p.add_argument("--seeds", nargs="+", default=["1"])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--multi-seed", nargs="*", default=["baseline", "seq_kd", "cmlm_raw", "cmlm_distill"])
    p.add_argument("--budget", default="")
    args = p.parse_args(argv)
    work = args.work
    rows = (["teacher"] if os.path.isfile(os.path.join(work, "teacher", "final.pt")) else []) + [
        r for r in args.models if r not in ("bert_kd", "teacher")
    ]
    out: List[str] = []
    extra_tags = sorted({os.path.basename(d).split(".")[-2] for d in glob.glob(os.path.join(work, "eval", "*.*.*"))}
                        - {"test", "valid"})

    def row_scores(row: str, tag: str, setting: str, key: str) -> List[float]:
        names = model_names(row, args.seeds, row in args.multi_seed)
        return [s[key] for s in (scores(work, n, tag, setting) for n in names) if s is not None and key in s]

    # ---- quality
    for nat in (False, True):
        these = [r for r in rows if is_nat(r) == nat]
        if not these:
            continue
        settings = ["i4", "i10"] if nat else ["b1", "b5"]
        cols = " | ".join(f"BLEU {SETTING_NAME[s]} | chrF {SETTING_NAME[s]}" for s in settings)
        out.append(f"| {'NAT' if nat else 'AT'} row | what | {cols} | seeds | vs its baseline (BLEU, {SETTING_NAME[settings[-1]]}) | converged on valid |")
        out.append("|---|---|" + "---:|" * (2 * len(settings)) + "---:|---:|---|")
        for row in these:
            cells = []
            for s in settings:
                cells += [fmt(row_scores(row, "test", s, "bleu")), fmt(row_scores(row, "test", s, "chrf"))]
            n = len(row_scores(row, "test", settings[-1], "bleu"))
            base = BASELINE_OF.get(row)
            delta = "–"
            if base in rows:
                mine, theirs = row_scores(row, "test", settings[-1], "bleu"), row_scores(base, "test", settings[-1], "bleu")
                if mine and theirs:
                    delta = f"{statistics.mean(mine) - statistics.mean(theirs):+.2f}"
            metric = "loss" if nat else "nll_loss"
            what = WHAT.get(row, row)
            choice = os.path.join(work, f"{row}.choice")
            if os.path.isfile(choice):
                what += f" (chosen on valid: {open(choice).read().strip()})"
            out.append(f"| {row} | {what} | {' | '.join(cells)} | {n} | {delta} | "
                       f"{convergence(valid_curve(work, row), metric)} |")
        out.append("")

    # ---- BERT as a teacher: its own tokenization, baseline and teacher
    if "bert_kd" in args.models:
        out += bert_kd_table(work, args.seeds)

    # ---- teacher vs student
    t_curve, s_curve = valid_curve(work, "teacher"), valid_curve(work, "baseline")
    if t_curve and s_curve and "accuracy" in t_curve[-1] and "accuracy" in s_curve[-1]:
        t_acc = min(t_curve, key=lambda p: p.get("nll_loss", 1e9))["accuracy"]
        s_acc = min(s_curve, key=lambda p: p.get("nll_loss", 1e9))["accuracy"]
        line = f"Teacher {t_acc:.1f}% vs student {s_acc:.1f}% (valid token accuracy, teacher-forced, best checkpoints)."
        if t_acc <= s_acc:
            line += " WARNING: the teacher is not better than the baseline student; distillation cannot be expected to help."
        out += [line, ""]

    # ---- speed
    ref = scores(work, "baseline", "test", "b5")
    speed_points = []
    if ref and ref.get("latency", {}).get("sentences"):
        out.append("| decoder (test2016, this CPU) | latency ms/sentence, batch 1 | speed-up | sentences/s, large batch | ratio |")
        out.append("|---|---:|---:|---:|---:|")
        ref_lat, ref_tput = ref["latency"]["mean_ms"], ref["throughput"]["sentences_per_second"]
        for row in rows:
            for s in (["i4", "i10"] if is_nat(row) else ["b1", "b5"]):
                sc = scores(work, row, "test", s)
                if not sc or not sc.get("latency", {}).get("sentences"):
                    continue
                lat, tput = sc["latency"]["mean_ms"], sc["throughput"]["sentences_per_second"]
                speed_points.append((row, s, ref_lat / lat, sc["bleu"]))
                if row in ("teacher", "baseline", "cmlm_distill", "levt_distill"):
                    out.append(f"| {row}, {SETTING_NAME[s]} | {lat:.1f} | {ref_lat / lat:.2f}x | {tput:.1f} | {tput / ref_tput:.2f}x |")
        out.append("")

    # ---- data measures
    stats = []
    for name, what in (("distill", "beam-5 distilled"), ("seqinter", "Seq-Inter")):
        path = os.path.join(work, f"{name}.stats.json")
        if os.path.isfile(path):
            with open(path) as f:
                stats.append((what, json.load(f)))
    if stats:
        out.append("| training set | C(d) nats | F(d) nats |")
        out.append("|---|---:|---:|")
        out.append(f"| raw (gold) | {stats[0][1]['real']['complexity']:.3f} | – |")
        for what, s in stats:
            out.append(f"| {what} | {s['distilled']['complexity']:.3f} | {s['faithfulness']:.3f} |")
        out.append("")

    # ---- time
    out += time_table(work, rows)

    # ---- other test sets
    for tag in extra_tags:
        out.append(f"| row | {tag}: BLEU (beam 5 / 10 iterations) | chrF |")
        out.append("|---|---:|---:|")
        for row in rows:
            s = "i10" if is_nat(row) else "b5"
            out.append(f"| {row} | {fmt(row_scores(row, tag, s, 'bleu'))} | {fmt(row_scores(row, tag, s, 'chrf'))} |")
        out.append("")

    if args.budget:
        out.insert(0, f"Budget: {args.budget}; seeds {' '.join(args.seeds)} for {', '.join(args.multi_seed)}.\n")
    text = "\n".join(out)
    with open(os.path.join(work, "results.md.tmp"), "w") as f:
        f.write(text + "\n")
    os.replace(os.path.join(work, "results.md.tmp"), os.path.join(work, "results.md"))
    print(text)

    if speed_points:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.ticker
            import matplotlib.pyplot as plt
        except ImportError:
            print("report: matplotlib is not installed: no figure (pip install matplotlib)", file=sys.stderr)
            return 0
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for row, s, speedup, bleu in speed_points:
            marker = "s" if is_nat(row) else "o"
            ax.scatter(speedup, bleu, marker=marker, color="tab:red" if is_nat(row) else "tab:blue")
            ax.annotate(f"{row} {SETTING_NAME[s]}", (speedup, bleu), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8) if
                 min(p[2] for p in speed_points) / 1.2 <= t <= max(p[2] for p in speed_points) * 1.2]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("speed-up over the AT student at beam 5 (batch 1 latency, CPU)")
        ax.set_ylabel("sacreBLEU, test2016")
        ax.set_title("Multi30k De-En: quality against decoding speed")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(work, "bleu_vs_speed.png"), dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
