"""fairseq-kd-evaluate: scores on detokenized text, original order, AT and NAT decoding, speed."""
import json
import os

import pytest
import sacrebleu

import utils
from fairseq_kd.cli import evaluate as E


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_scores_by_hand():
    hyp, ref = ["the cat sat"], ["the cat ran"]
    s = E.score(hyp, ref, ["rouge"])
    # unigrams 2/3 precision and recall; bigrams 1/2; LCS "the cat" = 2 of 3
    assert s["rouge1"] == pytest.approx(100 * 2 / 3)
    assert s["rouge2"] == pytest.approx(50.0)
    assert s["rougeL"] == pytest.approx(100 * 2 / 3)
    assert E.score(ref, ref, ["rouge"])["rouge2"] == pytest.approx(100.0)
    hyps = ["A man rides a bike.", "Two dogs play in the snow."]
    refs = ["A man is riding a bike.", "Two dogs are playing in snow."]
    s = E.score(hyps, refs, ["bleu", "chrf"])
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in s["bleu_signature"]
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        E.score(hyps, refs[:1], ["bleu"])


def test_detokenizer():
    assert E.detokenizer("moses", "en")("Hello , world ! It &apos;s fine .") == "Hello, world! It's fine."
    assert E.detokenizer("none", "en")("a , b") == "a , b"


def test_autoregressive_end_to_end(tiny_data, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "eval"
    E.cli_main([tiny_data, "--path", tiny_teacher, "--cpu", "--beam", "2", "--max-tokens", "2000",
                "--tokenizer", "none", "--latency-sentences", "4", "--results-path", str(out)])
    stdout = capsys.readouterr().out
    assert "evaluate | test: 20 sentences | BLEU" in stdout and "ms/sentence (batch 1)" in stdout
    scores = json.load(open(out / "scores.json"))
    hyps, refs = _read(out / "hypotheses.txt"), _read(out / "references.txt")
    # Original order: the same lines fairseq-generate prints for ids 0..19.
    assert hyps == utils.generate(tiny_data, tiny_teacher)
    assert refs == _read(os.path.join(os.path.dirname(tiny_data), "text", "test.tgt"))
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["generator"] == "SequenceGenerator" and scores["sentences"] == 20
    assert scores["latency"]["sentences"] == 4 and scores["latency"]["mean_ms"] > 0
    assert scores["throughput"]["sentences_per_second"] > 0
    assert (out / "command.json").exists()


def test_rouge_and_reference_file(tiny_data, tiny_teacher, tmp_path, capsys):
    ref_file = tmp_path / "ref.txt"
    ref_file.write_text("".join(line.upper() + "\n" for line in
                                _read(os.path.join(os.path.dirname(tiny_data), "text", "test.tgt"))))
    out = tmp_path / "eval"
    E.cli_main([tiny_data, "--path", tiny_teacher, "--cpu", "--beam", "2", "--metrics", "rouge",
                "--reference", str(ref_file), "--latency-sentences", "0", "--results-path", str(out)])
    scores = json.load(open(out / "scores.json"))
    hyps = _read(out / "hypotheses.txt")
    assert _read(out / "references.txt") == _read(ref_file)  # the raw reference file, as given
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)  # lowercases: case does not matter
    expected = 100 * sum(scorer.score(r, h)["rouge1"].fmeasure for h, r in zip(hyps, _read(ref_file))) / 20
    assert scores["rouge1"] == pytest.approx(expected) and scores["rouge1"] > 0
    assert "bleu" not in scores and "latency" not in scores
    assert "ROUGE-1" in capsys.readouterr().out

    ref_file.write_text("one line\n")
    with pytest.raises(SystemExit):
        E.cli_main([tiny_data, "--path", tiny_teacher, "--cpu", "--reference", str(ref_file)])
    assert "has 1 lines, the test split has 20 sentences" in capsys.readouterr().err


def test_non_autoregressive_iterations(tmp_path, capsys):
    """A tiny Mask-Predict (cmlm_transformer, translation_lev) decoded with 1 and 4 passes."""
    text = utils.make_copy_task(str(tmp_path / "text"), n_train=100, n_valid=5, n_test=10)
    data = utils.preprocess(text, str(tmp_path / "bin"), extra=["--joined-dictionary"])
    utils.train(data, str(tmp_path / "nat"), max_update=10, arch=[
        "--arch", "cmlm_transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    ], criterion=["--task", "translation_lev", "--noise", "random_mask", "--criterion", "nat_loss"])
    ckpt = str(tmp_path / "nat" / "checkpoint_last.pt")
    for max_iter in (0, 3):
        out = tmp_path / f"eval{max_iter}"
        E.cli_main([data, "--path", ckpt, "--cpu", "--tokenizer", "none", "--iter-decode-max-iter", str(max_iter),
                    "--iter-decode-force-max-iter", "--latency-sentences", "2", "--results-path", str(out)])
        scores = json.load(open(out / "scores.json"))
        assert scores["generator"] == "IterativeRefinementGenerator"
        assert scores["iter_decode_max_iter"] == max_iter and scores["sentences"] == 10
        assert len(_read(out / "hypotheses.txt")) == 10
    assert "IterativeRefinementGenerator on cpu" in capsys.readouterr().out


def test_missing_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    """Through the installed console command."""
    proc = utils.run([utils.command("fairseq-kd-evaluate"), tiny_data, "--path", str(tmp_path / "no.pt"),
                      "--cpu"], check=False)
    assert proc.returncode == 2 and f"checkpoint not found: {tmp_path / 'no.pt'}" in proc.stderr
