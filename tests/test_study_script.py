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
    """The word_kd options study.sh gives ROW (its kd_variant function, run by bash)."""
    script = (f'T={teacher}; WORK={work}; source <(sed -n "/^kd_variant() {{/,/^}}/p" {STUDY}); '
              f'kd_variant {row}')
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
