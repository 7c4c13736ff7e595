"""``fairseq-kd-augment``: the transfer-set augmentation of Tang et al. (2019).

Tang, Lu, Liu, Mou, Vechtomova, Lin (2019), Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks, Section 3.3. For each example, n_iter
times (20 for SST-2):

1. for each word draw X ~ U[0, 1]:
   X < p_mask                  -> replace it by the mask token ([MASK]);
   p_mask <= X < p_mask + p_pos -> replace it by another word of the same
   part of speech, drawn from that tag's unigram distribution in the corpus;
2. then with probability p_ng keep only a random n-gram, n ~ U{1..5}.

Duplicates (of an original or of an earlier draw) are dropped. For sentence
pairs, iteration t augments the first sentence (t % 3 = 0), the second (1),
or both (2). Each example has its own random generator seeded by
(``--seed``, line number): the output does not depend on the machine or on
the other examples.

The part-of-speech source is pluggable (:func:`make_tagger`): a word<TAB>tag
lexicon file (``--pos-lexicon``), spaCy or NLTK when installed (with their
English models), or none, in which case POS replacement is skipped with a
warning.

Input: whitespace-tokenized text, one example a line (``--input0``, and
``--input1`` for pairs), optional labels (``--labels``). Output:
``PREFIX.input0`` (``.input1``, ``.label``) with the originals first, in
order, then the augmented examples, labelled ``<unk>`` (no gold label: the
student learns them from the teacher's logits only).
"""
import argparse
import bisect
import contextlib
import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..data import bert_io
from ..data.atomic import atomic_open
from . import _common
from ..errors import MissingFileError

logger = logging.getLogger("fairseq_kd.cli.augment")

NO_LABEL = "<unk>"


# ----------------------------------------------------------- part of speech
class LexiconTagger:
    """Tags from a word-to-tag file: ``word<whitespace>tag`` lines, ``#`` comments;
    the first tag listed for a word wins; unknown words get no tag."""

    name = "lexicon"

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise MissingFileError(f"--pos-lexicon not found: {path}")
        self.path, self.lexicon = path, {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) != 2:
                    raise ValueError(f"{path}:{lineno}: expected 'word tag', got {line!r}")
                self.lexicon.setdefault(fields[0], fields[1])

    def tag(self, words: Sequence[str]) -> List[Optional[str]]:
        return [self.lexicon.get(w) for w in words]


class SpacyTagger:
    """spaCy's fine-grained tags (Penn Treebank) on the given tokenization.

    The words go in as a pre-tokenized ``Doc`` and only the pipeline's components
    run: spaCy's tokenizer never sees the text, so "don't" stays one word (it
    would split it into "do" "n't"). Should a component still merge or split
    tokens, each word takes the tag of the token its first character is in.
    """

    name = "spacy"

    def __init__(self, model: str = "en_core_web_sm"):
        import spacy
        from spacy.tokens import Doc

        self.nlp, self.Doc = spacy.load(model, disable=["parser", "ner", "lemmatizer"]), Doc

    def tag(self, words: Sequence[str]) -> List[Optional[str]]:
        words = list(words)
        if not words:
            return []
        doc = self.Doc(self.nlp.vocab, words=words)  # one space after each word (spaces default to True)
        for _, component in self.nlp.pipeline:
            doc = component(doc)
        tags = [t.tag_ or None for t in doc]
        if len(tags) == len(words):
            return tags
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        token_starts = [t.idx for t in doc]
        return [tags[i] if i >= 0 else None for i in (bisect.bisect_right(token_starts, s) - 1 for s in starts)]


class NltkTagger:
    """NLTK's averaged-perceptron tagger (Penn Treebank tags)."""

    name = "nltk"

    def __init__(self):
        import nltk

        self.pos_tag = nltk.pos_tag
        self.pos_tag(["test"])  # raises LookupError when the tagger data is missing

    def tag(self, words: Sequence[str]) -> List[Optional[str]]:
        return [t for _, t in self.pos_tag(list(words))] if words else []


def make_tagger(source: str = "auto", lexicon: Optional[str] = None, spacy_model: str = "en_core_web_sm"):
    """The part-of-speech source, or None (POS replacement skipped, with a warning).

    ``auto`` takes the lexicon when given, else spaCy, else NLTK, whichever loads.
    """
    if source == "lexicon" or (source == "auto" and lexicon):
        if not lexicon:
            raise ValueError("--pos-source lexicon needs --pos-lexicon FILE")
        return LexiconTagger(lexicon)
    if source == "none":
        return None
    candidates = {"spacy": [lambda: SpacyTagger(spacy_model)], "nltk": [NltkTagger]}.get(
        source, [lambda: SpacyTagger(spacy_model), NltkTagger]
    )
    errors = []
    for build in candidates:
        try:
            return build()
        except (ImportError, OSError, LookupError) as e:  # not installed, or its model/data missing
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip("* \n")), "model or data missing")
            fix = re.search(r"nltk\.download\([^)]*\)", str(e))  # NLTK names the data to download
            hint = f" (get it with: import nltk; {fix.group(0)})" if fix else ""
            errors.append(f"{type(e).__name__}: {first}{hint}")
    if source != "auto":
        raise ValueError(f"--pos-source {source} is not available ({'; '.join(errors)})")
    logger.warning(
        "no part-of-speech source (no --pos-lexicon; spaCy and NLTK not available: "
        f"{'; '.join(errors)}): POS-guided replacement is skipped"
    )
    return None


# ------------------------------------------------------------- augmentation
@dataclass
class AugmentConfig:
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    max_ngram: int = 5
    n_iter: int = 20
    mask_token: str = bert_io.MASK
    seed: int = 1

    def check(self) -> None:
        for name in ("p_mask", "p_pos", "p_ng"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.p_mask + self.p_pos > 1.0:
            raise ValueError(f"--p-mask + --p-pos must be <= 1, got {self.p_mask + self.p_pos}")
        if self.max_ngram < 1 or self.n_iter < 0:
            raise ValueError("--max-ngram must be >= 1 and --n-iter >= 0")


class PosPools:
    """Per tag, the corpus's words and their cumulative counts (unigram sampling)."""

    def __init__(self, counts: Dict[str, Counter]):
        self.words: Dict[str, List[str]] = {}
        self.cum: Dict[str, List[int]] = {}
        for tag, counter in counts.items():
            words = sorted(counter)  # sorted: independent of corpus order and hash seeds
            total, cum = 0, []
            for w in words:
                total += counter[w]
                cum.append(total)
            self.words[tag], self.cum[tag] = words, cum

    @classmethod
    def from_corpus(cls, tagged: Sequence[Tuple[Sequence[str], Sequence[Optional[str]]]]) -> "PosPools":
        counts: Dict[str, Counter] = {}
        for words, tags in tagged:
            for w, t in zip(words, tags):
                if t is not None:
                    counts.setdefault(t, Counter())[w] += 1
        return cls(counts)

    def sample_other(self, word: str, tag: Optional[str], rng: random.Random, tries: int = 100) -> str:
        """A word of the same tag other than ``word`` (rejection sampling), or ``word``
        itself when the tag has no other word."""
        words = self.words.get(tag) if tag is not None else None
        if not words or (len(words) == 1 and words[0] == word):
            return word
        cum = self.cum[tag]
        for _ in range(tries):
            candidate = words[bisect.bisect_right(cum, rng.random() * cum[-1])]
            if candidate != word:
                return candidate
        return word


class Augmenter:
    def __init__(self, cfg: AugmentConfig, pools: Optional[PosPools] = None):
        cfg.check()
        self.cfg, self.pools = cfg, pools

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.cfg.seed}:{index}")

    def perturb(self, words: Sequence[str], tags: Optional[Sequence[Optional[str]]], rng: random.Random) -> List[str]:
        """One draw: masking / POS replacement per word, then n-gram sampling."""
        cfg, out = self.cfg, []
        for i, w in enumerate(words):
            x = rng.random()
            if x < cfg.p_mask:
                out.append(cfg.mask_token)
            elif x < cfg.p_mask + cfg.p_pos and self.pools is not None and tags is not None:
                out.append(self.pools.sample_other(w, tags[i], rng))
            else:
                out.append(w)
        if out and rng.random() < cfg.p_ng:
            n = rng.randint(1, cfg.max_ngram)
            if n < len(out):
                start = rng.randrange(len(out) - n + 1)
                out = out[start: start + n]
        return out

    def augment(
        self,
        index: int,
        example: Sequence[Sequence[str]],
        tags: Optional[Sequence[Sequence[Optional[str]]]],
        seen: set,
    ) -> List[Tuple[str, ...]]:
        """Up to n_iter new variants of one example (1 or 2 sentences of words).

        ``seen`` holds the examples already in the output, as tuples of
        space-joined sentences; new variants are added to it.
        """
        rng, new = self.rng(index), []
        for t in range(self.cfg.n_iter):
            which = (0,) if len(example) == 1 else ((0,), (1,), (0, 1))[t % 3]
            variant = tuple(
                " ".join(self.perturb(s, tags[k] if tags is not None else None, rng)) if k in which else " ".join(s)
                for k, s in enumerate(example)
            )
            if variant not in seen:
                seen.add(variant)
                new.append(variant)
        return new


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = AugmentConfig()
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-augment",
        description="Augment a classification transfer set as Tang et al. (2019): masking, "
        "POS-guided replacement, n-gram sampling.",
    )
    parser.add_argument("--input0", required=True, help="first sentences, whitespace-tokenized, one a line")
    parser.add_argument("--input1", default=None, help="second sentences of sentence pairs (same line count)")
    parser.add_argument("--labels", default=None, help="gold labels, one a line (copied for the originals)")
    parser.add_argument(
        "--out-prefix", required=True,
        help="output prefix: writes PREFIX.input0 (PREFIX.input1, PREFIX.label), originals first",
    )
    parser.add_argument("--no-originals", action="store_true", help="write only the augmented examples")
    parser.add_argument("--p-mask", type=float, default=d.p_mask, help="probability of masking a word")
    parser.add_argument("--p-pos", type=float, default=d.p_pos, help="probability of a POS-guided replacement")
    parser.add_argument("--p-ng", type=float, default=d.p_ng, help="probability of keeping only an n-gram")
    parser.add_argument("--max-ngram", type=int, default=d.max_ngram, help="n of n-gram sampling is uniform in 1..N")
    parser.add_argument("--n-iter", type=int, default=d.n_iter, help="draws per example (duplicates are dropped)")
    parser.add_argument("--mask-token", default=d.mask_token, help="the token that replaces masked words")
    parser.add_argument("--no-label", default=NO_LABEL, help="label written for augmented examples")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (output is reproducible)")
    parser.add_argument(
        "--pos-source", choices=["auto", "lexicon", "spacy", "nltk", "none"], default="auto",
        help="part-of-speech tagger: auto = the lexicon if given, else spaCy, else NLTK, else none",
    )
    parser.add_argument("--pos-lexicon", default=None, help="word<TAB>tag file (one word a line)")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy model for --pos-source spacy")
    return parser


def read_lines(path: str, what: str = "input") -> List[str]:
    with open(_common.input_file(path, what), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def run(args) -> dict:
    """Write the augmented transfer set at ``--out-prefix``; the summary counts examples."""
    cfg = AugmentConfig(args.p_mask, args.p_pos, args.p_ng, args.max_ngram, args.n_iter, args.mask_token, args.seed)
    cfg.check()
    keys = ["input0"] + (["input1"] if args.input1 else [])
    columns = [read_lines(getattr(args, k), f"--{k}") for k in keys]
    labels = read_lines(args.labels, "--labels") if args.labels else None
    n = len(columns[0])
    if n == 0:
        raise ValueError(f"--input0 {args.input0} is empty: give the transfer set, one example a line")
    for name, col in zip(keys[1:] + (["labels"] if labels else []), columns[1:] + ([labels] if labels else [])):
        if len(col) != n:
            raise ValueError(f"--{name} has {len(col)} lines, --input0 has {n}")
    examples = [tuple(col[i].split() for col in columns) for i in range(n)]

    tagger = make_tagger(args.pos_source, args.pos_lexicon, args.spacy_model) if cfg.p_pos > 0 else None
    tags, pools = None, None
    if tagger is not None:
        tags = [tuple(tagger.tag(s) for s in ex) for ex in _common.progress(examples, total=n, desc="tagging")]
        for i, (ex, tg) in enumerate(zip(examples, tags)):
            for s, ts in zip(ex, tg):
                if len(ts) != len(s):
                    raise ValueError(f"POS source {tagger.name} gave {len(ts)} tags for the {len(s)} words "
                                     f"of line {i + 1}: {' '.join(s)!r}")
        pools = PosPools.from_corpus([(s, t) for ex, tg in zip(examples, tags) for s, t in zip(ex, tg)])
        tagged = sum(t is not None for tg in tags for ts in tg for t in ts)
        total = sum(len(s) for ex in examples for s in ex)
        logger.info(f"POS source {tagger.name}: {tagged} of {total} words tagged, {len(pools.words)} tags")
    augmenter = Augmenter(cfg, pools)

    seen = {tuple(" ".join(s) for s in ex) for ex in examples}
    rows = [] if args.no_originals else [(tuple(" ".join(s) for s in ex), labels[i] if labels else None)
                                         for i, ex in enumerate(examples)]
    n_new = 0
    for i, ex in enumerate(_common.progress(examples, total=n, desc="augmenting", unit="ex")):
        new = augmenter.augment(i, ex, tags[i] if tags is not None else None, seen)
        rows.extend((variant, args.no_label) for variant in new)
        n_new += len(new)

    out_dir = os.path.dirname(os.path.abspath(args.out_prefix))
    os.makedirs(out_dir, exist_ok=True)
    outputs = {k: [r[0][j] for r in rows] for j, k in enumerate(keys)}
    if labels is not None:
        outputs["label"] = [r[1] for r in rows]
    with contextlib.ExitStack() as stack:  # every file is whole, or none is replaced
        for key, lines in outputs.items():
            stack.enter_context(atomic_open(f"{args.out_prefix}.{key}", encoding="utf-8")).writelines(
                line + "\n" for line in lines)
    _common.record_run(out_dir, args, name=os.path.basename(args.out_prefix) + ".command.json")
    summary = {
        "examples": n,
        "augmented": n_new,
        "dropped_duplicates": n * cfg.n_iter - n_new,
        "written": len(rows),
        "pos_source": tagger.name if tagger is not None else "none",
        "outputs": list(outputs),
    }
    return summary


def cli_main(argv=None) -> None:
    args, summary = _common.run_command(build_parser(), run, argv)
    print(
        f"augment | {summary['examples']} examples: {summary['augmented']} new "
        f"({summary['dropped_duplicates']} duplicates dropped), POS source {summary['pos_source']}; "
        f"wrote {summary['written']} lines to {args.out_prefix}.{{{','.join(summary['outputs'])}}}"
    )


if __name__ == "__main__":
    cli_main()
