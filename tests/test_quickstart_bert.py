"""scripts/quickstart_bert.sh (the study's bert_kd row) on a tiny BERT and a tiny copy task:
the baselines train before a teacher that must beat them, the teacher grows in steps until it
does or reaches its most updates, the alpha:T candidate with the best valid BLEU becomes
BERT-KD and is the one trained on the other seeds, and every seed is scored."""
import gzip
import os
import re
import subprocess
import sys

import pytest

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(root):
    """The shared/data layout (multi30k/{train,val,test_2016_flickr}.{de,en}.gz) of a copy task."""
    text = utils.make_copy_task(os.path.join(root, "text"), src="de", tgt="en", n_train=80, n_valid=16, n_test=12)
    data = os.path.join(root, "data")
    os.makedirs(os.path.join(data, "multi30k"))
    for split, stem in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        for lang in ("de", "en"):
            with open(os.path.join(text, f"{split}.{lang}"), "rb") as f, \
                    gzip.open(os.path.join(data, "multi30k", f"{stem}.{lang}.gz"), "wb") as g:
                g.write(f.read())
    return data


def _valid_accuracies(log):
    return [(int(u), a) for a, u in re.findall(
        r"valid on 'valid' subset.*? accuracy ([0-9.]+).*? num_updates (\d+)", open(log).read())]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fairseq_kd.data import bert_io

    root = str(tmp_path_factory.mktemp("quickstart_bert"))
    bert = bert_io.write_checkpoint(os.path.join(root, "bert"), [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)])
    work = os.path.join(root, "work")
    env = dict(os.environ, FAIRSEQ_KD_DATA=_corpus(root), BERT_PATH=bert, WORK=work, TRAIN_SENTENCES="0",
               TEACHER_UPDATES="3", TEACHER_MAX_UPDATES="7", TEACHER_WARMUP="2", TEACHER_MAX_TOKENS="400",
               STUDENT_UPDATES="4", MAX_TOKENS="400", TOPK="4", PASSES="2", KD_GRID="0.5:1 0.7:10", SEEDS="1 2",
               BEAMS="1", JOBS="2",
               PATH=os.path.dirname(utils.command("fairseq-train")) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "scripts/quickstart_bert.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout, env


def test_the_teacher_grows_until_it_beats_the_baseline_or_its_budget(run):
    work, out, _ = run
    lines = out.splitlines()
    first_teacher = next(i for i, l in enumerate(lines) if "training teacher" in l)
    assert any("training baseline.s2" in l for l in lines[:first_teacher])
    assert any(re.search(r"training baseline \(", l) for l in lines[:first_teacher])
    baseline = _valid_accuracies(os.path.join(work, "baseline.log"))[-1][1]
    steps = _valid_accuracies(os.path.join(work, "teacher.log"))
    assert [u for u, _ in steps] == [3, 6, 7][:len(steps)]
    for _, acc in steps[:-1]:  # every step before the last one was not better than the baseline
        assert float(acc) <= float(baseline)
    assert steps[-1][0] == 7 or float(steps[-1][1]) > float(baseline)
    assert f"teacher {steps[-1][1]}% vs student {baseline}%" in out
    assert f"teacher {steps[-1][0]} updates" in out  # the budget it reached
    configs = re.findall(r"'warmup_updates': (\d+)", open(os.path.join(work, "teacher.log")).read())
    assert configs and set(configs) == {"2"}  # TEACHER_WARMUP, not TEACHER_UPDATES / 10 + 1, in every step


def test_the_best_valid_candidate_is_bert_kd_and_trains_on_the_other_seeds(run):
    work, out, _ = run
    valid = {}
    for alpha_t, name in (("0.5:1", "bert_kd.a0.5_T1"), ("0.7:10", "bert_kd.a0.7_T10")):
        valid[alpha_t] = float(open(os.path.join(work, "scores", f"{name}.valid.b1.txt")).read().split()[0])
    chosen = open(os.path.join(work, "bert_kd.choice")).read().strip()
    assert valid[chosen] == max(valid.values())
    if valid["0.5:1"] == valid["0.7:10"]:
        assert chosen == "0.5:1"  # ties keep the first candidate
    name = "bert_kd.a" + chosen.replace(":", "_T")
    assert os.readlink(os.path.join(work, "bert_kd", "final.pt")) == f"../{name}/final.pt"
    assert os.readlink(os.path.join(work, "bert_kd.s2", "final.pt")) == f"../{name}.s2/final.pt"
    alpha, t = chosen.split(":")
    config = open(os.path.join(work, f"{name}.s2.log")).read()
    assert f"'kd_alpha': {alpha}" in config and f"'kd_temperature': {float(t)}" in config
    assert "'seed': 2" in config
    assert "'seed': 1" in open(os.path.join(work, f"{name}.log")).read()
    other = next(n for n in ("bert_kd.a0.5_T1", "bert_kd.a0.7_T10") if n != name)
    assert not os.path.exists(os.path.join(work, f"{other}.s2"))  # only the chosen one trains on seed 2


def test_every_seed_of_both_students_is_scored_on_test(run):
    work, out, _ = run
    for model in ("baseline", "baseline.s2", "bert_kd", "bert_kd.s2"):
        trained = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(work, model, "final.pt"))))
        assert trained.startswith("bert_kd.a") if model.startswith("bert_kd") else trained == model
        bleu, chrf = open(os.path.join(work, "scores", f"{trained}.test.b1.txt")).read().split()
        assert 0 <= float(bleu) <= 100 and 0 <= float(chrf) <= 100
        seed = 2 if model.endswith(".s2") else 1
        kind = "baseline" if model.startswith("baseline") else "BERT-KD"
        row = next(l for l in out.splitlines() if l.strip().startswith(kind) and f"seed {seed}, beam 1" in l)
        assert row.split()[-2:] == [bleu, chrf]


def test_the_study_report_shows_the_row_with_its_teacher(run, tmp_path):
    work, out, _ = run
    os.symlink(work, tmp_path / "bert_kd")
    proc = utils.run([sys.executable, os.path.join(ROOT, "examples", "multi30k", "report.py"), str(tmp_path),
                      "--seeds", "1", "2", "--models", "bert_kd"])
    table = proc.stdout

    def test_scores(model):
        return [[float(v) for v in open(os.path.join(work, "scores", f"{m}.test.b1.txt")).read().split()]
                for m in (model, model + ".s2")]

    chosen = "bert_kd.a" + open(os.path.join(work, "bert_kd.choice")).read().strip().replace(":", "_T")
    base, kd = test_scores("baseline"), test_scores(chosen)
    row = next(l for l in table.splitlines() if l.startswith("| BERT-KD:"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    mean = (kd[0][0] + kd[1][0]) / 2
    assert cells[1] == f"{mean:.2f} ± {abs(kd[0][0] - kd[1][0]) / 2:.2f}"
    assert cells[5] == "2"
    assert cells[6] == f"{mean - (base[0][0] + base[1][0]) / 2:+.2f}"
    assert "chosen on valid" in cells[0] and open(os.path.join(work, "bert_kd.choice")).read().strip() in cells[0]
    steps = _valid_accuracies(os.path.join(work, "teacher.log"))
    assert f"C-MLM teacher: {steps[-1][0]} updates, masked-token accuracy {float(steps[-1][1]):.1f}%" in table
    assert "Valid BLEU (greedy) of the alpha:T candidates: a0.5_T1" in table


def test_a_second_run_trains_nothing_and_prints_the_same_scores(run):
    work, out, env = run
    again = subprocess.run(["bash", "scripts/quickstart_bert.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not re.search(r"training (baseline|bert_kd|teacher)", again.stdout)
    assert "baseline.s2 already trained" in again.stdout and "bert_kd.a0.5_T1 already trained" in again.stdout
    scores = [l for l in out.splitlines() if ", beam 1 " in l]
    assert len(scores) == 4 and scores == [l for l in again.stdout.splitlines() if ", beam 1 " in l]
