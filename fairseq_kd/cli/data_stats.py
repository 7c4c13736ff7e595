"""``fairseq-kd-data-stats``: complexity and faithfulness of a (distilled) parallel corpus.

Zhou, Gu, Neubig (ICLR 2020), "Understanding Knowledge Distillation in
Non-autoregressive Machine Translation", Sec. 3: word alignments A of a corpus
d give word-translation distributions

    p(y | x) = count(x aligned to y) / count(x)      (count(x) = links from x)

- Complexity: C(d) = 1/|V_x| * sum_{x in V_x} H(y | x), with
  H(y | x) = - sum_y p(y|x) log p(y|x), in nats. The paper averages over source
  word TYPES V_x, unweighted; here V_x is the set of source types with at least
  one link (unaligned words have no distribution). ``--average tokens``
  instead weights each type by its number of links (a mean over aligned
  source tokens).
- Faithfulness: F(d) = 1/|V_x| * sum_{x in V_x} KL(p_r(.|x) || p_d(.|x)), V_x
  the aligned source types of the REAL corpus r, p_d the distilled corpus's
  distribution. Zero probabilities in p_d are smoothed by interpolation with
  the uniform distribution: p_d'(y|x) = (1 - eps) * p_d(y|x) + eps / |V_y|, V_y
  the target types linked in either corpus, eps = ``--smoothing`` (0.01); a
  source word absent from the distilled corpus gets the uniform 1/|V_y|. (Add-
  lambda smoothing would put lambda * |V_y| of mass on unseen words, which for
  a 10k-word vocabulary swamps rare source words: F(d, d) would not be ~0.)
  F(d, d) = -log(1 - eps) for any corpus d.

Each corpus is aligned on itself (``fairseq_kd.data.alignment``: IBM Model 1
by EM, both directions, grow-diag-final-and by default), as fast_align is
used in the paper. Words are the whitespace tokens after ``--remove-bpe``.
The text files are streamed, read again for every EM iteration: memory grows
with the vocabularies and the co-occurring word pairs, not with the number of
sentences (``--chunk-rows`` bounds the alignment rows held at once;
BENCHMARKS.md section 6).

    fairseq-kd-data-stats DIR --subset train          # a fairseq-kd-distill-corpus output
    fairseq-kd-data-stats --source train.de --target train.en [--distilled train.distilled.en]
"""
import argparse
import json
import logging
import math
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence

from ..data import alignment
from ..data.atomic import atomic_open
from ..errors import MissingFileError

logger = logging.getLogger("fairseq_kd.cli.data_stats")

Counts = Dict[str, Dict[str, int]]


# -------------------------------------------------------------- measures
def conditional_entropies(counts: Counts) -> Dict[str, float]:
    """H(y | x) in nats for every source word x with at least one link."""
    out = {}
    for x, row in counts.items():
        total = sum(row.values())
        if total > 0:
            out[x] = -sum(c / total * math.log(c / total) for c in row.values() if c > 0)
    return out


def complexity(counts: Counts, average: str = "types") -> float:
    """C(d) of Zhou et al. (2020): mean of H(y|x) over aligned source types
    (``average="types"``, the paper) or weighted by links (``"tokens"``)."""
    entropies = conditional_entropies(counts)
    if not entropies:
        return 0.0
    if average == "types":
        return sum(entropies.values()) / len(entropies)
    if average == "tokens":
        weights = {x: sum(counts[x].values()) for x in entropies}
        return sum(weights[x] * h for x, h in entropies.items()) / sum(weights.values())
    raise ValueError(f"average must be 'types' or 'tokens', got {average!r}")


def faithfulness(real: Counts, distilled: Counts, smoothing: float = 0.01, average: str = "types") -> float:
    """F(d) of Zhou et al. (2020): mean over the real corpus's aligned source types of
    KL(p_real(.|x) || p_distilled(.|x)), p_distilled interpolated with the uniform
    distribution over V_y with weight ``smoothing`` (see the module docstring)."""
    if not 0 < smoothing <= 1:
        raise ValueError("smoothing must be in (0, 1] (KL is infinite where p_distilled is 0)")
    vocab = {y for row in real.values() for y in row} | {y for row in distilled.values() for y in row}
    kls, weights = [], []
    for x, row in real.items():
        total = sum(row.values())
        if total == 0:
            continue
        row_d = distilled.get(x, {})
        total_d = sum(row_d.values())
        kl = 0.0
        for y, c in row.items():
            if c > 0:
                p_r = c / total
                p_d = row_d.get(y, 0) / total_d if total_d else 1.0 / len(vocab)
                kl += p_r * math.log(p_r / ((1 - smoothing) * p_d + smoothing / len(vocab)))
        kls.append(kl)
        weights.append(total if average == "tokens" else 1)
    if average not in ("types", "tokens"):
        raise ValueError(f"average must be 'types' or 'tokens', got {average!r}")
    return sum(k * w for k, w in zip(kls, weights)) / sum(weights) if kls else 0.0


# ------------------------------------------------------------------ input
class TextCorpus:
    """The sentences (lists of words) of a text file, one a line, read again on every
    iteration: a corpus for :mod:`fairseq_kd.data.alignment` that is never held in memory.

    remove_bpe: fairseq's ``post_process`` symbol ("subword_nmt", "sentencepiece") or
    "none"; limit: only the first ``limit`` lines (0: all).
    """

    def __init__(self, path: str, remove_bpe: str = "none", lowercase: bool = False, limit: int = 0):
        if not os.path.isfile(path):
            raise MissingFileError(f"corpus file not found: {path}")
        self.path, self.remove_bpe, self.lowercase, self.limit = path, remove_bpe, lowercase, limit
        self._len: Optional[int] = None

    def _lines(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if self.limit and n >= self.limit:
                    break
                yield line

    def __iter__(self) -> Iterator[List[str]]:
        from fairseq.data.data_utils import post_process

        for line in self._lines():
            line = line.rstrip("\n")
            if self.remove_bpe != "none":
                line = post_process(line, self.remove_bpe)
            yield (line.lower() if self.lowercase else line).split()

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self._lines())
        return self._len


def corpus_stats(src, tgt, iterations: int, symmetrize: str, average: str,
                 chunk_rows: int = alignment.DEFAULT_CHUNK_ROWS):
    """(link counts, {C, sentences, source/target tokens, aligned source types, links}),
    streaming the corpora (see :mod:`fairseq_kd.data.alignment`)."""
    counts: Counts = {}
    sentences = source_tokens = target_tokens = links = 0
    for s, t, a in alignment.iter_align(src, tgt, iterations, symmetrize, chunk_rows):
        alignment.add_links(counts, s, t, a)
        sentences += 1
        source_tokens += len(s)
        target_tokens += len(t)
        links += len(a)
    return counts, {
        "complexity": complexity(counts, average),
        "sentences": sentences,
        "source_tokens": source_tokens,
        "target_tokens": target_tokens,
        "aligned_source_types": len(alignment.aligned_source_types(counts)),
        "links": links,
    }


def resolve_files(args):
    """(source, real target, distilled target or None) paths from the arguments."""
    if args.dir:
        meta_path = os.path.join(args.dir, f"distill.{args.subset}.json")
        if not os.path.isfile(meta_path):
            raise MissingFileError(f"{meta_path} not found: DIR must be a fairseq-kd-distill-corpus output")
        src, tgt = _languages(meta_path)
        base = os.path.join(args.dir, args.subset)
        return f"{base}.{src}", f"{base}.{tgt}.gold", f"{base}.{tgt}"
    if not (args.source and args.target):
        raise ValueError("give a fairseq-kd-distill-corpus directory, or --source and --target")
    return args.source, args.target, args.distilled


def _languages(meta_path: str):
    """(source_lang, target_lang) of a ``distill.<split>.json``; ValueError naming the
    file, the missing field and the fix when it lacks them."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}): rerun fairseq-kd-distill-corpus, "
                         "or give the text files with --source, --target and --distilled")
    missing = [k for k in ("source_lang", "target_lang") if not isinstance(meta, dict) or k not in meta]
    if missing:
        fields = " and ".join(f'"{k}"' for k in missing) + (" fields" if len(missing) > 1 else " field")
        raise ValueError(
            f"{meta_path} has no {fields}: add {'them' if len(missing) > 1 else 'it'} (the language codes in the "
            "names of the files beside it, <split>.<source_lang>, <split>.<target_lang>.gold and "
            '<split>.<target_lang>; e.g. "source_lang": "de"), rerun fairseq-kd-distill-corpus, '
            "or give the text files with --source, --target and --distilled")
    return meta["source_lang"], meta["target_lang"]


def run(args) -> dict:
    """Measure the corpora of ``args`` (and write ``--out``); the summary is the measures."""
    from ._common import check_minimums, progress, record_run

    check_minimums(args, {"chunk_rows": 1, "iterations": 1, "max_sentences": 0})
    source_file, real_file, distilled_file = resolve_files(args)
    read = lambda p: TextCorpus(p, args.remove_bpe, args.lowercase, args.max_sentences)  # noqa: E731
    src, real = read(source_file), read(real_file)
    if len(src) == 0:
        raise ValueError(f"--source {source_file} is empty: give the corpus's source text, one sentence a line")
    if len(src) != len(real):
        raise ValueError(f"{source_file} has {len(src)} lines, {real_file} has {len(real)}")
    jobs = [("real", real_file, real)]
    if distilled_file:
        distilled = read(distilled_file)
        if len(distilled) != len(src):
            raise ValueError(f"{source_file} has {len(src)} lines, {distilled_file} has {len(distilled)}")
        jobs.append(("distilled", distilled_file, distilled))
    result = {"source": source_file, "average": args.average, "symmetrize": args.symmetrize,
              "iterations": args.iterations, "remove_bpe": args.remove_bpe, "units": "nats"}
    counts = {}
    start = time.time()
    for name, path, tgt in progress(jobs, total=len(jobs), desc="align", unit="corpus"):
        counts[name], result[name] = corpus_stats(src, tgt, args.iterations, args.symmetrize, args.average,
                                                  args.chunk_rows)
        result[name]["target"] = path
    if "distilled" in counts:
        result["faithfulness"] = faithfulness(counts["real"], counts["distilled"], args.smoothing, args.average)
        result["smoothing"] = args.smoothing
    result["seconds"] = time.time() - start
    if args.out:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        with atomic_open(args.out) as f:
            json.dump(result, f, indent=2)
        record_run(out_dir, args, name=os.path.basename(args.out) + ".command.json")
        logger.info(f"wrote {args.out}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-kd-data-stats",
        description="Complexity C(d) and faithfulness F(d) of a parallel corpus and its distilled "
        "version (Zhou et al., ICLR 2020), from IBM-1 word alignments learned on each corpus.",
    )
    p.add_argument("dir", nargs="?", help="a fairseq-kd-distill-corpus output directory (uses its text files)")
    p.add_argument("--subset", default="train", help="split of DIR (default: train)")
    p.add_argument("--source", help="source text, one sentence a line (instead of DIR)")
    p.add_argument("--target", help="real target text, line-aligned with --source")
    p.add_argument("--distilled", help="distilled target text, line-aligned with --source (optional)")
    p.add_argument("--remove-bpe", default="subword_nmt", choices=("subword_nmt", "sentencepiece", "none"),
                   help="join subwords into words first (default: subword_nmt, '@@ ')")
    p.add_argument("--lowercase", action="store_true", help="lowercase all text")
    p.add_argument("--iterations", type=int, default=5, help="IBM Model 1 EM iterations (default: 5)")
    p.add_argument("--symmetrize", choices=alignment.SYMMETRIZE, default="grow-diag-final-and",
                   help="how the two alignment directions are combined (default: grow-diag-final-and)")
    p.add_argument("--average", choices=("types", "tokens"), default="types",
                   help="average over source word types as in the paper (default) or over aligned tokens")
    p.add_argument("--smoothing", type=float, default=0.01,
                   help="weight eps of the uniform distribution mixed into p_distilled(y|x) in F(d) (default: 0.01)")
    p.add_argument("--chunk-rows", type=int, default=alignment.DEFAULT_CHUNK_ROWS,
                   help="EM reads the corpus in chunks of whole sentences of at most this many (sentence, i, j) "
                   "alignment rows, about 100 bytes each; memory, not the result, depends on it "
                   f"(default: {alignment.DEFAULT_CHUNK_ROWS})")
    p.add_argument("--max-sentences", type=int, default=0, help="use only the first N sentences (0: all)")
    p.add_argument("--out", help="write the measures to this JSON file (and its provenance beside it)")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from ._common import run_command

    args, result = run_command(build_parser(), run, argv)
    line = f"data-stats | {result['real']['sentences']} sentences | C(real) {result['real']['complexity']:.4f}"
    if "distilled" in result:
        line += f" | C(distilled) {result['distilled']['complexity']:.4f} | F(distilled) {result['faithfulness']:.4f}"
    print(line + f" nats ({args.average} average, {result['seconds']:.1f} s)")


if __name__ == "__main__":
    cli_main()
