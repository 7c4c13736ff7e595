"""fairseq-kd-augment: Tang et al. (2019) masking, POS-guided replacement, n-gram sampling."""
import logging
import random
from collections import Counter

import pytest

import utils
from fairseq_kd.cli import augment
from fairseq_kd.cli.augment import AugmentConfig, Augmenter, LexiconTagger, PosPools

NOUNS = {"film": 3, "movie": 1}  # corpus counts of the NN words
ADJS = ["good", "bad", "dull", "fine"]


def pools():
    corpus = [(["film"] * 3 + ["movie"] + ADJS, ["NN"] * 4 + ["JJ"] * 4)]
    return PosPools.from_corpus(corpus)


def test_rates_over_many_draws():
    """Masking at p_mask, POS replacement at p_pos (exclusive events), n-gram at p_ng."""
    words = ["good", "bad"] * 10  # 20 words, every one has another word of its tag
    tags = ["JJ"] * 20
    cfg = AugmentConfig(p_mask=0.1, p_pos=0.1, p_ng=0.0)
    aug, rng = Augmenter(cfg, pools()), random.Random(0)
    masked = replaced = total = 0
    for _ in range(2000):
        out = aug.perturb(words, tags, rng)
        assert len(out) == len(words)
        for w, o in zip(words, out):
            total += 1
            masked += o == "[MASK]"
            replaced += o not in ("[MASK]", w)
            assert o in ("[MASK]", w) or o in ADJS  # same part of speech
    # 40,000 words: binomial standard deviation 0.0015
    assert masked / total == pytest.approx(0.1, abs=0.006)
    assert replaced / total == pytest.approx(0.1, abs=0.006)

    ng = Augmenter(AugmentConfig(p_mask=0.0, p_pos=0.0, p_ng=0.25), None)
    lengths = Counter(len(ng.perturb(words, None, rng)) for _ in range(8000))
    assert (8000 - lengths[20]) / 8000 == pytest.approx(0.25, abs=0.02)
    for n in range(1, 6):  # n uniform in 1..5
        assert lengths[n] / 8000 == pytest.approx(0.05, abs=0.012)
    assert set(lengths) <= {1, 2, 3, 4, 5, 20}


def test_ngram_is_a_contiguous_span():
    ng = Augmenter(AugmentConfig(p_mask=0.0, p_pos=0.0, p_ng=1.0), None)
    words = [str(i) for i in range(12)]
    rng = random.Random(3)
    for _ in range(200):
        out = ng.perturb(words, None, rng)
        start = int(out[0])
        assert out == words[start: start + len(out)]


def test_pos_replacement_follows_unigram_counts():
    p = pools()
    rng = random.Random(1)
    draws = Counter(p.sample_other("story", "NN", rng) for _ in range(4000))
    assert set(draws) == set(NOUNS)
    assert draws["film"] / 4000 == pytest.approx(0.75, abs=0.03)  # 3 : 1
    assert all(p.sample_other("film", "NN", rng) == "movie" for _ in range(20))  # never itself
    assert p.sample_other("film", None, rng) == "film"  # untagged words stay
    assert p.sample_other("x", "VB", rng) == "x"  # tag without words


def test_deterministic_under_a_seed_and_no_duplicates():
    cfg = AugmentConfig(seed=5)
    example = (["a", "good", "film", "with", "a", "bad", "end"],)
    tags = (["DT", "JJ", "NN", "IN", "DT", "JJ", "NN"],)
    first = Augmenter(cfg, pools()).augment(7, example, tags, set())
    again = Augmenter(cfg, pools()).augment(7, example, tags, set())
    other = Augmenter(AugmentConfig(seed=6), pools()).augment(7, example, tags, set())
    assert first == again and first != other
    assert len(first) == len(set(first)) and 0 < len(first) <= cfg.n_iter
    seen = {(" ".join(example[0]),)}
    new = Augmenter(cfg, pools()).augment(7, example, tags, seen)
    assert (" ".join(example[0]),) not in new  # never a copy of the original
    assert not set(new) & set(Augmenter(cfg, pools()).augment(7, example, tags, seen))  # seen is updated


def test_pairs_cycle_first_second_both():
    cfg = AugmentConfig(p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=3)  # every augmented word is masked
    example = (["a", "b"], ["c"])
    out = Augmenter(cfg, None).augment(0, example, None, set())
    assert out == [("[MASK] [MASK]", "c"), ("a b", "[MASK]"), ("[MASK] [MASK]", "[MASK]")]


def test_lexicon_tagger(tmp_path):
    lexicon = tmp_path / "lex.tsv"
    lexicon.write_text("# word tag\nfilm\tNN\ngood JJ\nfilm\tVB\n")
    tagger = augment.make_tagger("auto", str(lexicon))
    assert isinstance(tagger, LexiconTagger)
    assert tagger.tag(["good", "film", "zzz"]) == ["JJ", "NN", None]  # first tag wins
    lexicon.write_text("film NN extra\n")
    with pytest.raises(ValueError, match=r"lex.tsv:1"):
        LexiconTagger(str(lexicon))


def test_no_pos_source_skips_with_a_warning(monkeypatch, caplog):
    def missing(*args, **kwargs):
        raise ImportError("not installed")

    monkeypatch.setattr(augment, "SpacyTagger", missing)
    monkeypatch.setattr(augment, "NltkTagger", missing)
    with caplog.at_level(logging.WARNING):
        assert augment.make_tagger("auto") is None
    assert "POS-guided replacement is skipped" in caplog.text
    with pytest.raises(ValueError, match="--pos-source spacy is not available"):
        augment.make_tagger("spacy")
    assert augment.make_tagger("none") is None


def test_cli_outputs_reproducible_files(tmp_path):
    (tmp_path / "a.txt").write_text("a good film\nthe bad movie\na film\n")
    (tmp_path / "b.txt").write_text("yes\nno\nmaybe so\n")
    (tmp_path / "y.txt").write_text("1\n0\n1\n")
    (tmp_path / "lex.tsv").write_text("good JJ\nbad JJ\nfilm NN\nmovie NN\n")
    outputs = []
    for name in ("one", "two"):
        proc = utils.run([utils.command("fairseq-kd-augment"), "--input0", tmp_path / "a.txt",
                          "--input1", tmp_path / "b.txt", "--labels", tmp_path / "y.txt",
                          "--pos-lexicon", tmp_path / "lex.tsv", "--n-iter", "6", "--seed", "3",
                          "--out-prefix", tmp_path / name / "train_aug"])
        assert "POS source lexicon" in proc.stdout
        files = [(tmp_path / name / f"train_aug.{k}").read_text().splitlines() for k in ("input0", "input1", "label")]
        outputs.append(files)
    assert outputs[0] == outputs[1]  # same seed, same files
    a, b, y = outputs[0]
    assert len(a) == len(b) == len(y) > 3
    assert a[:3] == ["a good film", "the bad movie", "a film"] and y[:3] == ["1", "0", "1"]  # originals first
    assert set(y[3:]) == {"<unk>"}  # augmented examples have no gold label
    assert len(set(zip(a, b))) == len(a)  # no duplicate example
    assert (tmp_path / "one" / "train_aug.command.json").exists()


def test_cli_errors_name_the_input(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\n")
    (tmp_path / "y.txt").write_text("1\n")
    proc = utils.run([utils.command("fairseq-kd-augment"), "--input0", tmp_path / "a.txt", "--labels",
                      tmp_path / "y.txt", "--out-prefix", tmp_path / "o"], check=False)
    assert proc.returncode == 2 and "--labels has 1 lines, --input0 has 2" in proc.stderr
    assert not (tmp_path / "o.input0").exists()
