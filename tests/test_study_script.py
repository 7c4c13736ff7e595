"""examples/multi30k/study.sh: its rows are known before anything runs, and every
word-KD objective / store row passes options that word_kd accepts and applies."""
import os
import subprocess

import pytest

import utils
from fairseq_kd.cli import dump_soft_labels

STUDY = os.path.join(utils.REPO, "examples", "multi30k", "study.sh")
VARIANTS = {  # row -> what the built criterion must hold
    "word_kd_reverse_kl": {"kd_divergence": "reverse_kl"},
    "word_kd_jsd": {"kd_divergence": "jsd", "kd_beta": 0.5},
    "word_kd_skew_forward_kl": {"kd_divergence": "skew_forward_kl", "kd_skew": 0.1},
    "word_kd_skew_reverse_kl": {"kd_divergence": "skew_reverse_kl", "kd_skew": 0.1},
    "word_kd_tvd": {"kd_divergence": "tvd"},
    "word_kd_select_batch": {"kd_selection": "batch", "kd_selection_ratio": 0.5},
    "word_kd_select_global": {"kd_selection": "global", "kd_selection_ratio": 0.5, "kd_selection_queue": 30000},
    "word_kd_on_policy": {"kd_on_policy_ratio": 0.5},
    "word_kd_topk8": {"kd_topk": 8, "kd_divergence": "forward_kl"},
    "store_topk8": {"kd_divergence": "forward_kl", "kd_topk": 0},
    "store_sampled12": {"kd_divergence": "forward_kl", "kd_topk": 0},
}


def kd_variant(row, teacher, work):
    """The word_kd options study.sh gives ROW (its kd_variant function and the default grids
    of the rows' own settings, run by bash)."""
    script = (f'T={teacher}; WORK={work}; source <(grep -E "^[A-Z_]+_GRID=" {STUDY}); '
              f'{_functions("variant_grid", "kd_variant")}; kd_variant {row}')
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    return proc.returncode, proc.stdout.split(), proc.stderr


def test_an_unknown_row_stops_the_study_before_any_work(tmp_path):
    proc = subprocess.run(["bash", STUDY], capture_output=True, text=True,
                          env={**os.environ, "MODELS": "baseline word_kd_nope", "WORK": str(tmp_path / "w")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "study: unknown model word_kd_nope"
    assert "prepare" not in proc.stdout  # stopped before the data step


@pytest.fixture(scope="module")
def stores(tiny_data, tiny_teacher, tmp_path_factory):
    """$WORK/stores/{topk8,sampled12} as study.sh dumps them, from the tiny teacher."""
    work = tmp_path_factory.mktemp("study")
    for name, extra in (("topk8", ["--topk", "8"]),
                        ("sampled12", ["--store", "sampled", "--samples", "12", "--temperature", "1"])):
        args = dump_soft_labels.build_parser().parse_args(
            [tiny_data, "--path", tiny_teacher, "--out", str(work / "stores" / name), "--cpu", *extra])
        dump_soft_labels.run(args)
    return str(work)


@pytest.mark.parametrize("row", sorted(VARIANTS))
def test_every_objective_row_builds_word_kd_with_its_setting(row, tiny_data, tiny_teacher, stores):
    rc, options, err = kd_variant(row, tiny_teacher, stores)
    assert rc == 0, err
    _, task, _, criterion = utils.build_in_process([
        tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--kd-alpha", "0.5", "--kd-temperature", "1", "--cpu", *options,
    ])
    assert type(criterion).__name__ == "WordKDCriterion"
    for name, value in VARIANTS[row].items():
        assert getattr(criterion, name) == value, (row, name)
    if row.startswith("store_"):
        assert task.teacher is None and task.teacher_is_sampled() == (row == "store_sampled12")
    else:
        assert task.teacher is not None


def test_an_unknown_variant_is_refused(tiny_teacher, tmp_path):
    rc, options, err = kd_variant("word_kd_nope", tiny_teacher, str(tmp_path))
    assert rc == 2 and options == [] and err.strip() == "study: unknown model word_kd_nope"


def _functions(*names):
    """bash that defines study.sh's functions NAMES (each from its `name() {` line to its `}`)."""
    return "; ".join(f'source <(sed -n "/^{n}() {{/,/^}}/p" {STUDY})' for n in names)


def test_an_objective_rows_own_setting_is_a_grid(tmp_path):
    """BETA_GRID / SKEW_GRID / SELECTION_GRID / ON_POLICY_GRID: one value trains the row as ROW
    (the papers' value by default); several train ROW.pVALUE each, with that value."""
    def trained(row, **grids):
        setup = "".join(f"{k}='{v}'; " for k, v in {"BETA_GRID": "0.5", "SKEW_GRID": "0.1", "SELECTION_GRID": "0.5",
                                                      "ON_POLICY_GRID": "0.5", **grids}.items())
        # train() records its model name and options instead of training (the naming is under test)
        script = (f"set -euo pipefail; {setup} T=t.pt WORK={tmp_path} first_seed=1 DATA=d STUDENT_UPDATES=1 "
                  f"KD_ALPHA=0.5 STUDENT=(--arch a); train() {{ echo \"$1 ${{*:5}}\"; }}; "
                  f"{_functions('variant_grid', 'kd_variant', 'model_name', 'student')}; student {row} 1")
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return [(line.split()[0], line.split()[1:]) for line in proc.stdout.splitlines()]

    def option(options, name):
        return options[options.index(name) + 1]

    (name, options), = trained("word_kd_skew_forward_kl")
    assert name == "word_kd_skew_forward_kl" and option(options, "--kd-skew") == "0.1"
    runs = trained("word_kd_skew_reverse_kl", SKEW_GRID="0.05 0.2")
    assert [n for n, _ in runs] == ["word_kd_skew_reverse_kl.p0.05", "word_kd_skew_reverse_kl.p0.2"]
    assert [option(o, "--kd-skew") for _, o in runs] == ["0.05", "0.2"]
    assert [option(o, "--kd-beta") for _, o in trained("word_kd_jsd", BETA_GRID="0.1 0.9")] == ["0.1", "0.9"]
    assert [option(o, "--kd-selection-ratio") for _, o in trained("word_kd_select_global", SELECTION_GRID="0.3 0.7")
            ] == ["0.3", "0.7"]
    assert [option(o, "--kd-on-policy-ratio") for _, o in trained("word_kd_on_policy", ON_POLICY_GRID="0.25 1")
            ] == ["0.25", "1"]
    (name, options), = trained("word_kd_tvd", SKEW_GRID="0.05 0.2")  # a row without a setting of its own
    assert name == "word_kd_tvd" and options[-2:] == ["--kd-divergence", "tvd"]


def _pick(work, row):
    script = (f"set -euo pipefail; WORK={work} DATA=d TEXT=t LATENCY_SENTENCES=0; stamp() {{ echo \"$*\"; }}; "
              f"{_functions('evaluate', 'pick')}; pick {row}")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_pick_chooses_the_best_valid_candidate_and_never_overwrites_a_trained_row(tmp_path):
    """pick ROW: the candidate ROW.* with the best valid BLEU becomes ROW/final.pt (a link);
    a ROW/final.pt trained with one setting is not replaced (exit 2, one line)."""
    import json

    row = "word_kd_jsd"
    for value, bleu in (("0.1", 20.5), ("0.5", 22.25), ("0.9", 21.0)):
        os.makedirs(tmp_path / f"{row}.p{value}")
        (tmp_path / f"{row}.p{value}" / "final.pt").write_text(value)
        os.utime(tmp_path / f"{row}.p{value}" / "final.pt", (1, 1))  # older than its scores on any file system
        scores = tmp_path / "eval" / f"{row}.p{value}.valid.b1"
        os.makedirs(scores)
        (scores / "scores.json").write_text(json.dumps({"bleu": bleu}))
        (scores / "model").write_text(f"{row}.p{value}\n")  # evaluate's record: these scores are this model's
    proc = _pick(tmp_path, row)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(tmp_path / row / "final.pt") and (tmp_path / row / "final.pt").read_text() == "0.5"
    assert (tmp_path / f"{row}.choice").read_text().strip() == f"{row}.p0.5"

    os.remove(tmp_path / row / "final.pt")
    (tmp_path / row / "final.pt").write_text("trained as the row")
    proc = _pick(tmp_path, row)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"study: {tmp_path}/{row}/final.pt was trained with one setting")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / row / "final.pt").read_text() == "trained as the row"


def test_another_raw_test_set_is_scored_like_the_studys_own(tmp_path):
    """TEST_SETS: study.sh's extra_test tokenizes, BPE-segments and binarizes a raw test set with
    the study's codes and dictionaries, and evaluate scores a trained model on it, latency
    included. Given the raw text of the study's own test split, it reproduces that split's
    hypotheses and BLEU exactly."""
    import json

    text, work = tmp_path / "text", tmp_path / "work"
    utils.make_copy_task(str(text), "de", "en", n_train=200, n_test=12)
    # codes learned with more merges than the corpus has pairs: every word stays whole
    both = (text / "train.de").read_text() + (text / "train.en").read_text()
    with open(text / "code", "w") as out:
        subprocess.run([utils.command("subword-nmt"), "learn-bpe", "-s", "200"], input=both, text=True,
                       stdout=out, check=True)
    data = utils.preprocess(str(text), str(tmp_path / "bin"), src="de", tgt="en")
    utils.train(data, str(work / "m"), max_update=30)
    os.replace(work / "m" / "checkpoint_last.pt", work / "m" / "final.pt")
    os.makedirs(text / "raw")
    os.link(text / "test.en", text / "raw" / "test.en")

    script = (f"set -euo pipefail; WORK={work} DATA={data} TEXT={text} CPU=--cpu LATENCY_SENTENCES=3; "
              f"stamp() {{ echo \"$*\"; }}; {_functions('evaluate', 'extra_test')}; "
              f"evaluate m test b1; extra_test mine {text}/test.de {text}/test.en; "
              f"evaluate m mine b1 $WORK/extra/mine/bin {text}/test.en")
    env = {**os.environ, "PATH": os.pathsep.join([utils.BIN, os.environ.get("PATH", "")])}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (work / "extra" / "mine" / "test.de").read_text() == (text / "test.de").read_text()
    own, extra = (json.loads((work / "eval" / f"m.{tag}.b1" / "scores.json").read_text()) for tag in ("test", "mine"))
    assert extra["sentences"] == own["sentences"] == 12
    assert own["bleu"] > 0 and extra["bleu"] == own["bleu"] and extra["chrf"] == own["chrf"]
    hyps = [(work / "eval" / f"m.{tag}.b1" / "hypotheses.txt").read_text() for tag in ("test", "mine")]
    assert hyps[0] == hyps[1] and len(hyps[0].splitlines()) == 12
    assert extra["latency"]["sentences"] == own["latency"]["sentences"] == 3


def test_a_word_kd_candidate_can_take_hintons_form(tiny_data, tmp_path):
    """KD_GRID "alpha:T" softens the teacher only; "alpha:Th" puts teacher and student at T and
    scales the KD term by T^2 (Hinton et al. 2015): each candidate builds word_kd so."""
    script = (f"set -euo pipefail; KD_GRID='0.5:2 0.3:4h' T=t.pt WORK={tmp_path} first_seed=1 DATA=d "
              f"STUDENT_UPDATES=1 STUDENT=(--arch a); train() {{ echo \"$1 ${{*:5}}\"; }}; "
              f"{_functions('model_name', 'student')}; student word_kd 1")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    runs = [(line.split()[0], line.split()[1:]) for line in proc.stdout.splitlines()]
    assert [name for name, _ in runs] == ["word_kd.a0.5_T2", "word_kd.a0.3_T4h"]
    want = [(0.5, 2.0, 1.0, False), (0.3, 4.0, 4.0, True)]
    for (_, options), (alpha, t, student_t, t2) in zip(runs, want):
        kd = options[options.index("--criterion"):]  # the criterion's options (no teacher needed to build it)
        _, _, _, criterion = utils.build_in_process([tiny_data, *utils.TINY_TRANSFORMER, "--cpu",
                                                     "--task", "translation_kd", *kd])
        assert (criterion.kd_alpha, criterion.kd_temperature, criterion.kd_student_temperature,
                criterion.kd_t2_scaling) == (alpha, t, student_t, t2)


def test_cached_scores_follow_the_model_a_row_links_to(tmp_path):
    """evaluate keeps a model's scores only for the model they came from: a grid row whose link
    now points at another candidate, or a model trained again since, is decoded again; an
    unchanged one is not. (fairseq-kd-evaluate is replaced by a function that records each call
    and writes the content of the final.pt it was given as the score: the cache is under test.)"""
    import json

    work = tmp_path / "work"
    for c in ("word_kd.a0.5_T1", "word_kd.a0.2_T1"):
        os.makedirs(work / c)
        (work / c / "final.pt").write_text(c)
        os.utime(work / c / "final.pt", (1, 1))  # trained long before it is scored, even at 1 s mtime resolution
    os.makedirs(work / "word_kd")
    os.symlink("../word_kd.a0.5_T1/final.pt", work / "word_kd" / "final.pt")
    calls = tmp_path / "calls"
    fake = ('fairseq-kd-evaluate() { local path out; while [ $# -gt 0 ]; do case $1 in --path) path=$2 ;; '
            '--results-path) out=$2 ;; esac; shift; done; echo "$path" >> ' + str(calls) + '; mkdir -p "$out"; '
            'printf \'{"model": "%s"}\' "$(cat "$path")" > "$out/scores.json"; }')

    def evaluate():
        script = (f"set -euo pipefail; WORK={work} DATA=d TEXT=t CPU=--cpu LATENCY_SENTENCES=0; stamp() {{ :; }}; "
                  f"{fake}; "
                  f"{_functions('evaluate')}; evaluate word_kd test b1")
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        scores = work / "eval" / "word_kd.test.b1"
        return (json.loads((scores / "scores.json").read_text())["model"], (scores / "model").read_text().strip(),
                len(calls.read_text().splitlines()))

    assert evaluate() == ("word_kd.a0.5_T1", "word_kd.a0.5_T1", 1)
    assert evaluate() == ("word_kd.a0.5_T1", "word_kd.a0.5_T1", 1)  # cached
    os.remove(work / "word_kd" / "final.pt")  # the grid grew and chose another candidate
    os.symlink("../word_kd.a0.2_T1/final.pt", work / "word_kd" / "final.pt")
    assert evaluate() == ("word_kd.a0.2_T1", "word_kd.a0.2_T1", 2)
    assert evaluate() == ("word_kd.a0.2_T1", "word_kd.a0.2_T1", 2)
    (work / "word_kd.a0.2_T1" / "final.pt").write_text("word_kd.a0.2_T1 retrained")  # newer than its scores
    assert evaluate() == ("word_kd.a0.2_T1 retrained", "word_kd.a0.2_T1", 3)


def test_seeded_rows_take_every_seed_and_the_teacher_its_own(tmp_path):
    """SEEDED_ROWS: the rows trained with every seed of SEEDS (the others with the first);
    TEACHER_SEED: the teacher's seed, the first of SEEDS unless set, so that SEEDS=2
    TEACHER_SEED=1 trains second seeds against the first run's teacher."""
    def run(**env):
        # the study's settings as study.sh reads them (its variable lines), its seed functions,
        # and train() recording name and seed instead of training
        script = (f"set -euo pipefail; source <(grep -E '^(SEEDS|SEEDED_ROWS|first_seed|TEACHER_SEED)=' {STUDY}); "
                  f"DATA=d TEACHER_UPDATES=1 TEACHER=(--arch t); train() {{ echo \"$1 $4\"; }}; "
                  f"{_functions('teacher', 'model_name')}; "
                  f"source <(grep -E '^seeds_of\\(\\)' {STUDY}); "
                  "for r in baseline word_kd seq_kd seq_inter; do echo $r: $(for s in $(seeds_of $r); do "
                  "model_name $r $s; done); done; teacher")
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"], **env})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    assert run() == ["baseline: baseline baseline.s2", "word_kd: word_kd", "seq_kd: seq_kd seq_kd.s2",
                     "seq_inter: seq_inter", "teacher 1"]
    assert run(SEEDS="3 4", SEEDED_ROWS="word_kd seq_inter") == [
        "baseline: baseline", "word_kd: word_kd word_kd.s4", "seq_kd: seq_kd", "seq_inter: seq_inter seq_inter.s4",
        "teacher 3"]
    assert run(SEEDS="2", TEACHER_SEED="1") == [
        "baseline: baseline", "word_kd: word_kd", "seq_kd: seq_kd", "seq_inter: seq_inter", "teacher 1"]
