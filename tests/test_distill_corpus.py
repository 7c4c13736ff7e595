"""fairseq-kd-distill-corpus: order, count, language suffixes, fallbacks, Seq-Inter."""
import json
import os
import random

import pytest
import sacrebleu
import torch

import utils
from fairseq_kd import generation
from fairseq_kd.cli import distill_corpus

LONG = 1100  # source tokens: more than the teacher's 1024 max positions


def _read(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def shuffled_split(tiny_data, tmp_path_factory):
    """A 'train' split of 51 shuffled, length-varied pairs binarized with the teacher's
    dictionaries; sentence 17 is longer than the teacher's max positions."""
    root = tmp_path_factory.mktemp("shuffled")
    text = os.path.join(os.path.dirname(tiny_data), "text")
    pairs = list(zip(_read(os.path.join(text, "valid.src")), _read(os.path.join(text, "valid.tgt"))))
    pairs += list(zip(_read(os.path.join(text, "test.src")), _read(os.path.join(text, "test.tgt"))))
    random.Random(3).shuffle(pairs)
    pairs.insert(17, (" ".join(["a1"] * LONG), " ".join(["b1"] * LONG)))
    os.makedirs(root / "text")
    for side, lang in ((0, "src"), (1, "tgt")):
        with open(root / "text" / f"train.{lang}", "w") as f:
            f.write("".join(p[side] + "\n" for p in pairs))
    utils.run([
        utils.command("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", str(root / "text" / "train"), "--validpref", os.path.join(text, "valid"),
        "--destdir", str(root / "bin"), "--workers", "1",
        "--srcdict", os.path.join(tiny_data, "dict.src.txt"), "--tgtdict", os.path.join(tiny_data, "dict.tgt.txt"),
    ])
    return str(root / "bin"), pairs


def test_order_count_and_too_long_fallback(shuffled_split, tiny_teacher, tmp_path):
    data, pairs = shuffled_split
    out = tmp_path / "distilled"
    proc = utils.distill_corpus(data, tiny_teacher, str(out), ["--beam", "2", "--copy-splits"])
    assert "51 sentences" in proc.stdout and "kept reference: 1 (1 too long, 0 empty)" in proc.stdout
    summary = json.load(open(out / "distill.train.json"))
    assert summary["sentences"] == 51 and summary["range"] == [0, 51]
    assert summary["kept_reference_ids"] == {"too_long": [17], "empty": []}

    # Source and gold text come back in the original order, one line per sentence.
    assert _read(out / "train.src") == [p[0] for p in pairs]
    assert _read(out / "train.tgt.gold") == [p[1] for p in pairs]
    hyps = _read(out / "train.tgt")
    assert len(hyps) == 51 and hyps[17] == pairs[17][1]
    # Every other line is what fairseq-generate (same beam and batches) says for that id.
    expected = utils.generate(data, tiny_teacher, subset="train", extra=["--skip-invalid-size-inputs-valid-test"])
    assert hyps[:17] + hyps[18:] == expected
    assert sum(h != p[1] for h, p in zip(hyps, pairs)) > 0  # really the teacher's output

    # The binarized split holds the same sentences, with the original dictionaries.
    from fairseq.data import Dictionary, data_utils

    tgt_dict = Dictionary.load(str(out / "dict.tgt.txt"))
    assert open(out / "dict.tgt.txt").read() == open(os.path.join(data, "dict.tgt.txt")).read()
    binarized = data_utils.load_indexed_dataset(str(out / "train.src-tgt.tgt"), tgt_dict)
    assert [tgt_dict.string(binarized[i]) for i in range(len(binarized))] == hyps
    source = data_utils.load_indexed_dataset(str(out / "train.src-tgt.src"), tgt_dict)
    assert len(source) == 51 and int(source.sizes[17]) == LONG + 1
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary left behind


def test_language_suffixes_and_plain_training_on_the_output(tiny_data, tiny_teacher, tmp_path):
    """The target file holds target words (bN), the source file source words (aN),
    and the directory trains with --task translation, validating on the copied gold split."""
    out = tmp_path / "distilled"
    distill_corpus.run(distill_corpus.build_parser().parse_args([  # in-process: faster
        tiny_data, "--path", tiny_teacher, "--out", str(out), "--cpu", "--beam", "2", "--subset", "valid",
        "--copy-splits", "train", "test"]))
    for name in ("valid.src-tgt.src", "valid.src-tgt.tgt", "train.src-tgt.tgt", "test.src-tgt.src"):
        assert (out / f"{name}.bin").exists() and (out / f"{name}.idx").exists(), name
    assert all(w.startswith("b") for line in _read(out / "valid.tgt") for w in line.split())
    assert all(w.startswith("a") for line in _read(out / "valid.src") for w in line.split())
    assert json.load(open(out / "distill.valid.json"))["kept_reference"] == 0

    proc = utils.run([
        utils.command("fairseq-train"), str(out), "--task", "translation", *utils.TINY_TRANSFORMER,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "500", "--max-update", "4",
        "--save-dir", str(tmp_path / "student"), "--no-epoch-checkpoints", "--no-progress-bar",
        "--log-format", "json", "--cpu", "--num-workers", "0",
    ])
    valid = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "valid_loss" in r]
    assert valid and float(valid[-1]["valid_loss"]) > 0


def test_seq_inter_selection_on_a_hand_built_kbest_list():
    reference = "a man rides a red bike down the hill"
    kbest = [
        "a man rides a bike",  # the model's best
        "a man rides a red bike down the hill",  # the reference itself: BLEU 100
        "a man rides a red bike down a hill",
    ]
    best, scores = generation.select_seq_inter(kbest, reference)
    assert best == 1 and scores[1] == pytest.approx(100.0)
    assert scores == [sacrebleu.sentence_bleu(h, [reference]).score for h in kbest]
    assert scores[2] > scores[0]
    # Ties go to the hypothesis with the better model score (the earlier one).
    assert generation.select_seq_inter(["x y", "x y"], "x y z")[0] == 0
    assert generation.select_seq_inter(["q", "x y z w", "x y z"], "x y z")[0] == 2
    with pytest.raises(ValueError):
        generation.select_seq_inter([], reference)


def test_seq_inter_never_lowers_sentence_bleu(tiny_data, tiny_teacher, tiny_teacher2, tmp_path):
    """Seq-Inter over the 3-best of an ensemble: per sentence at least the top hypothesis's BLEU."""
    ensemble = f"{tiny_teacher}:{tiny_teacher2}"
    common = [tiny_data, "--path", ensemble, "--subset", "valid", "--beam", "3", "--cpu", "--copy-splits"]
    parse = distill_corpus.build_parser().parse_args
    distill_corpus.run(parse(common + ["--out", str(tmp_path / "top")]))  # in-process: faster
    distill_corpus.run(parse(common + ["--out", str(tmp_path / "inter"), "--nbest", "3", "--select", "seq-inter"]))
    top, inter = _read(tmp_path / "top" / "valid.tgt"), _read(tmp_path / "inter" / "valid.tgt")
    gold = _read(tmp_path / "top" / "valid.tgt.gold")
    bleu = generation.sentence_bleu_scorer()
    assert len(top) == len(inter) == len(gold) == 30
    assert all(bleu(i, g) >= bleu(t, g) for t, i, g in zip(top, inter, gold))
    s_top = json.load(open(tmp_path / "top" / "distill.valid.json"))
    s_inter = json.load(open(tmp_path / "inter" / "distill.valid.json"))
    assert s_inter["mean_sentence_bleu"] > s_top["mean_sentence_bleu"]
    assert s_inter["seq_inter_not_top"] == sum(t != i for t, i in zip(top, inter)) > 0
    assert s_top["mean_sentence_bleu"] == pytest.approx(sum(bleu(t, g) for t, g in zip(top, gold)) / 30)
    assert len(s_inter["teacher"]) == 2 and s_inter["select"] == "seq-inter"


def test_empty_hypotheses_keep_their_reference(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    real_decode = distill_corpus.decode

    def decode_with_empties(*a, **k):
        results = real_decode(*a, **k)
        eos = torch.tensor([2], dtype=torch.int32)
        for sid in (0, 5):
            results[sid] = [(eos, -1.0)]
        return results

    monkeypatch.setattr(distill_corpus, "decode", decode_with_empties)
    out = tmp_path / "distilled"
    args = distill_corpus.build_parser().parse_args(
        [tiny_data, "--path", tiny_teacher, "--out", str(out), "--subset", "valid", "--beam", "2", "--cpu"])
    summary = distill_corpus.run(args)
    assert summary["kept_reference_ids"] == {"too_long": [], "empty": [0, 5]}
    hyps, gold = _read(out / "valid.tgt"), _read(out / "valid.tgt.gold")
    assert hyps[0] == gold[0] and hyps[5] == gold[5] and len(hyps) == 30
    assert summary["copied_gold_splits"] == ["test"]  # valid is the distilled split


def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_data, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "distilled"
    proc = utils.distill_corpus(tiny_data, tiny_teacher, str(out), ["--subset", "nope"], check=False)
    assert proc.returncode == 2
    assert "no binarized nope split" in proc.stderr and "nope.src-tgt.src" in proc.stderr
    assert not out.exists() or not os.listdir(out)
    for argv, message in (
        (["--path", tiny_teacher, "--beam", "2", "--nbest", "3"], "--nbest 3 is larger than --beam 2"),
        (["--path", str(tmp_path / "none.pt")], f"teacher checkpoint not found: {tmp_path / 'none.pt'}"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # in-process: the same cli_main, no start-up cost
            distill_corpus.cli_main([tiny_data, "--out", str(out), "--cpu", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() or not os.listdir(out)
