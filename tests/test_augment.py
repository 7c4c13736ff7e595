"""fairseq-kd-augment: Tang et al. (2019) masking, POS-guided replacement, n-gram sampling."""
import logging
import random
import sys
import types
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


# ------------------------------------------------- fake spaCy and NLTK modules
# Neither library's tagger model/data can be installed here: minimal fakes in
# sys.modules stand in for exactly the API the adapters use, so their real code
# paths run. Both fakes tag word by word from FAKE_TAGS; both can tokenize text
# the way the real libraries do ("don't" -> "do" "n't"), which the adapters must
# never let happen to the caller's words.
FAKE_TAGS = {
    "the": "DT", "a": "DT", "film": "NN", "movie": "NN", "plot": "NN",
    "good": "JJ", "bad": "JJ", "dull": "JJ", "fine": "JJ",
    "don't": "VBP", "love": "VBP", "hate": "VBP", "do": "VBP", "n't": "RB",
    "is": "VBZ", "was": "VBD", "and": "CC", "but": "CC", "new_york": "NNP",
}
SPACY_MISSING = ("[E050] Can't find model 'en_core_web_sm'. It doesn't seem to be a Python package "
                 "or a valid path to a data directory.")
NLTK_MISSING = """
**********************************************************************
  Resource 'averaged_perceptron_tagger_eng' not found.
  Please use the NLTK Downloader to obtain the resource:

  >>> import nltk
  >>> nltk.download('averaged_perceptron_tagger_eng')

  For more information see: https://www.nltk.org/data.html
**********************************************************************
"""


def spacy_tag(word):  # what the fake spaCy tags a word ("" = no tag, as spaCy leaves it)
    return FAKE_TAGS.get(word.lower(), "")


def nltk_tag(word):  # NLTK tags every token
    return FAKE_TAGS.get(word.lower(), "NN")


def split_contractions(text):
    """The real tokenizers' behaviour on contractions."""
    out = []
    for w in text.split():
        out.extend([w[:-3], "n't"] if w.lower().endswith("n't") and len(w) > 3 else [w])
    return out


class FakeToken:
    def __init__(self, text, idx):
        self.text, self.idx, self.tag_ = text, idx, ""


class FakeDoc:
    """spacy.tokens.Doc(vocab, words=...): the given words, no tokenization."""

    def __init__(self, vocab, words=None, spaces=None):
        assert spaces is None
        self.vocab, self.tokens, idx = vocab, [], 0
        for w in words:
            self.tokens.append(FakeToken(w, idx))
            idx += len(w) + 1  # spaces default to True

    def __iter__(self):
        return iter(self.tokens)

    def __len__(self):
        return len(self.tokens)


def tagger_component(doc):
    for t in doc:
        t.tag_ = spacy_tag(t.text)
    return doc


def split_component(doc):
    """A pipeline component that retokenizes: "don't" -> "do" "n't"."""
    tokens = []
    for t in doc.tokens:
        parts = split_contractions(t.text)
        tokens.extend([FakeToken(t.text, t.idx)] if len(parts) == 1 else
                      [FakeToken(parts[0], t.idx), FakeToken(parts[1], t.idx + len(parts[0]))])
    doc.tokens = tokens
    return doc


def merge_component(doc):
    """A pipeline component that merges "New" "York" into one token."""
    tokens = []
    for t in doc.tokens:
        if tokens and tokens[-1].text == "New" and t.text == "York":
            tokens[-1] = FakeToken("New_York", tokens[-1].idx)
        else:
            tokens.append(t)
    doc.tokens = tokens
    return doc


class FakeNlp:
    def __init__(self, components):
        self.vocab = object()
        self.pipeline = [("tok2vec", lambda doc: doc)] + list(components) + [("tagger", tagger_component)]
        self.seen = []  # the words of every Doc the pipeline ran on

    def __call__(self, text):  # nlp("text") tokenizes like spaCy does; nlp(doc) does not
        doc = text if isinstance(text, FakeDoc) else FakeDoc(self.vocab, words=split_contractions(text))
        for _, component in self.pipeline:
            doc = component(doc)
        return doc


def fake_spacy(monkeypatch, missing_model=False, components=()):
    spacy, tokens = types.ModuleType("spacy"), types.ModuleType("spacy.tokens")
    tokens.Doc, spacy.tokens, spacy.loaded = FakeDoc, tokens, []

    def load(name, **kwargs):
        spacy.loaded.append((name, kwargs))
        if missing_model:
            raise OSError(SPACY_MISSING)
        nlp = FakeNlp(components)
        nlp.pipeline = [(n, spy(c, nlp)) for n, c in nlp.pipeline]
        return nlp

    def spy(component, nlp):
        def run(doc):
            assert isinstance(doc, FakeDoc) and doc.vocab is nlp.vocab
            if component is tagger_component:
                nlp.seen.append([t.text for t in doc])
            return component(doc)
        return run

    spacy.load = load
    monkeypatch.setitem(sys.modules, "spacy", spacy)
    monkeypatch.setitem(sys.modules, "spacy.tokens", tokens)
    return spacy


def fake_nltk(monkeypatch, missing_data=False, tag=nltk_tag):
    nltk = types.ModuleType("nltk")
    nltk.seen = []

    def pos_tag(tokens, tagset=None, lang="eng"):
        if isinstance(tokens, str):  # as nltk: it wants tokens, not text
            raise TypeError("tokens: expected a list of strings, got a string")
        if missing_data:
            raise LookupError(NLTK_MISSING)
        nltk.seen.append(list(tokens))
        return [(t, tag(t)) for t in tokens]

    nltk.pos_tag, nltk.word_tokenize = pos_tag, split_contractions
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    return nltk


def not_installed(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def test_spacy_tagger_keeps_the_callers_tokens(monkeypatch):
    spacy = fake_spacy(monkeypatch)
    tagger = augment.make_tagger("spacy", spacy_model="en_core_web_md")
    assert isinstance(tagger, augment.SpacyTagger)
    assert spacy.loaded == [("en_core_web_md", {"disable": ["parser", "ner", "lemmatizer"]})]
    words = ["I", "don't", "love", "the", "dull", "film"]
    assert tagger.tag(words) == [None, "VBP", "VBP", "DT", "JJ", "NN"]  # "" (no tag) -> None
    assert tagger.nlp.seen == [words]  # the pipeline ran on the words as given
    assert split_contractions("I don't") == ["I", "do", "n't"]  # what spaCy's tokenizer would have done
    assert tagger.tag(("a", "good", "movie")) == ["DT", "JJ", "NN"]
    assert tagger.tag([]) == []


@pytest.mark.parametrize("component", [split_component, merge_component])
def test_spacy_tagger_realigns_when_a_component_retokenizes(monkeypatch, component):
    fake_spacy(monkeypatch, components=[("retokenize", component)])
    tagger = augment.SpacyTagger()
    words = ["we", "don't", "love", "New", "York", "films"]
    tags = tagger.tag(words)
    assert len(tags) == len(words)
    # "don't" takes the tag of the token it starts with ("do" after a split);
    # "New" and "York" the tag of "New_York" after a merge.
    expected = {split_component: [None, "VBP", "VBP", None, None, None],
                merge_component: [None, "VBP", "VBP", "NNP", "NNP", None]}[component]
    assert tags == expected


def test_nltk_tagger_keeps_the_callers_tokens(monkeypatch):
    not_installed(monkeypatch, "spacy")
    nltk = fake_nltk(monkeypatch)
    tagger = augment.make_tagger("nltk")
    assert isinstance(tagger, augment.NltkTagger)
    words = ["I", "don't", "love", "the", "dull", "film"]
    assert tagger.tag(words) == ["NN", "VBP", "VBP", "DT", "JJ", "NN"]
    assert nltk.seen[-1] == words  # tokens as given, not nltk.word_tokenize(text)
    assert tagger.tag(("a", "movie")) == ["DT", "NN"] and nltk.seen[-1] == ["a", "movie"]
    assert tagger.tag([]) == []


def test_auto_prefers_spacy_then_nltk_then_none(monkeypatch, caplog):
    fake_spacy(monkeypatch)
    nltk = fake_nltk(monkeypatch)
    assert isinstance(augment.make_tagger("auto"), augment.SpacyTagger)
    assert nltk.seen == []  # NLTK not even tried
    assert isinstance(augment.make_tagger("nltk"), augment.NltkTagger)  # an explicit choice is kept

    fake_spacy(monkeypatch, missing_model=True)  # spaCy installed, its model not
    assert isinstance(augment.make_tagger("auto"), augment.NltkTagger)
    with pytest.raises(ValueError, match=r"--pos-source spacy is not available \(OSError: \[E050\] Can't find model"):
        augment.make_tagger("spacy")

    not_installed(monkeypatch, "spacy")
    assert isinstance(augment.make_tagger("auto"), augment.NltkTagger)

    fake_spacy(monkeypatch, missing_model=True)
    fake_nltk(monkeypatch, missing_data=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fairseq_kd.cli.augment"):
        assert augment.make_tagger("auto") is None
    assert "POS-guided replacement is skipped" in caplog.text
    assert "OSError: [E050] Can't find model 'en_core_web_sm'" in caplog.text
    assert "LookupError: Resource 'averaged_perceptron_tagger_eng' not found." in caplog.text


def test_pos_source_nltk_without_its_data_is_a_clear_error(monkeypatch, tmp_path, capsys):
    fake_spacy(monkeypatch)  # available, but not asked for
    fake_nltk(monkeypatch, missing_data=True)
    with pytest.raises(ValueError) as e:
        augment.make_tagger("nltk")
    assert str(e.value) == (
        "--pos-source nltk is not available (LookupError: Resource 'averaged_perceptron_tagger_eng' not found. "
        "(get it with: import nltk; nltk.download('averaged_perceptron_tagger_eng')))"
    )
    (tmp_path / "a.txt").write_text("a good film\n")
    with pytest.raises(SystemExit) as stop:
        augment.cli_main(["--input0", str(tmp_path / "a.txt"), "--pos-source", "nltk",
                          "--out-prefix", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "fairseq-kd-augment: error: --pos-source nltk is not available" in err
    assert "nltk.download('averaged_perceptron_tagger_eng')" in err
    assert not (tmp_path / "o.input0").exists()


def test_cli_rejects_tags_not_aligned_with_the_words(monkeypatch, tmp_path):
    not_installed(monkeypatch, "spacy")
    nltk = fake_nltk(monkeypatch)
    nltk.pos_tag = lambda tokens: [(t, "NN") for t in split_contractions(" ".join(tokens))]  # a re-tokenizing tagger
    (tmp_path / "a.txt").write_text("a good film\ni don't know\n")
    args = augment.build_parser().parse_args(["--input0", str(tmp_path / "a.txt"), "--out-prefix", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"POS source nltk gave 4 tags for the 3 words of line 2: \"i don't know\""):
        augment.run(args)


# Every line a different length: with masking and n-gram sampling off, an
# augmented line has its original's length, which tells which original it is.
POS_CORPUS = [
    "dull plot",
    "the good film",
    "I don't love it",
    "a bad movie was fine",
    "the plot is dull and bad",
    "we hate the film but love the movie",
]


@pytest.mark.parametrize("source", ["spacy", "nltk"])
def test_cli_pos_replacement_keeps_the_tag(monkeypatch, tmp_path, source):
    fake_spacy(monkeypatch)
    fake_nltk(monkeypatch)
    tag = {"spacy": lambda w: spacy_tag(w) or None, "nltk": nltk_tag}[source]
    (tmp_path / "a.txt").write_text("".join(line + "\n" for line in POS_CORPUS))
    argv = ["--input0", str(tmp_path / "a.txt"), "--pos-source", source, "--p-mask", "0", "--p-ng", "0",
            "--p-pos", "0.5", "--n-iter", "60", "--seed", "11"]
    summary = augment.run(augment.build_parser().parse_args(argv + ["--out-prefix", str(tmp_path / "one" / "aug")]))
    augment.run(augment.build_parser().parse_args(argv + ["--out-prefix", str(tmp_path / "two" / "aug")]))
    assert summary["pos_source"] == source
    lines = (tmp_path / "one" / "aug.input0").read_text().splitlines()
    assert lines == (tmp_path / "two" / "aug.input0").read_text().splitlines()  # fixed seed, same file
    assert lines[:len(POS_CORPUS)] == POS_CORPUS and len(lines) - len(POS_CORPUS) == summary["augmented"] > 100

    corpus_words = {w for line in POS_CORPUS for w in line.split()}
    by_length = {len(line.split()): line.split() for line in POS_CORPUS}
    replaced = Counter()
    for line in lines[len(POS_CORPUS):]:
        out = line.split()
        original = by_length[len(out)]
        assert out != original
        for w, o in zip(original, out):
            if o != w:  # replaced: by a corpus word of the same tag, never from an untagged word
                assert tag(w) is not None and tag(o) == tag(w) and o in corpus_words, (original, out)
                replaced[tag(w)] += 1
    # "don't" stayed one word, tagged VBP: it replaced and was replaced by "love" / "hate"
    augmented = [line.split() for line in lines[len(POS_CORPUS):]]
    assert not {"do", "n't"} & {w for out in augmented for w in out}
    assert any(len(out) == 4 and out[1] != "don't" for out in augmented)
    assert any(len(out) == 8 and "don't" in out for out in augmented)
    assert set(replaced) == {"DT", "NN", "JJ", "VBP", "CC"}  # the tags with two corpus words or more
    if source == "spacy":  # words spaCy leaves untagged ("I", "it", "we") are never replaced
        assert all(out[0] == "I" and out[3] == "it" for out in augmented if len(out) == 4)
