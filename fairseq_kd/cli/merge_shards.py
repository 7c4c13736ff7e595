"""``fairseq-kd-merge-shards``: join the parts that sharded offline stages wrote.

An offline stage run as N shards (``--num-shards N --shard-id I``, or under
``torchrun`` / ``srun``) leaves one part per shard, every kind in the same
layout (:mod:`fairseq_kd.data.parts`): the parts of an output T are
``T.parts/part-0000I-of-0000N/``. This command joins them into what a single
process writes:

- ``fairseq-kd-distill-corpus ... --out OUT --subset S``: T is the split
  ``OUT/S``, the parts are in ``OUT/S.parts/``; the merge writes the distilled
  split into OUT (the same bin/idx/text files, byte for byte);
- ``fairseq-kd-dump-soft-labels ... --out OUT``: T is the store OUT, the parts
  (each a finished store for its range) are in ``OUT.parts/``; the merge
  writes the store OUT (equal array for array).

    fairseq-kd-merge-shards OUT [--subset train] [--data DATA] [--remove-parts]

The kind comes from the parts' headers. Before writing anything it checks that
the parts cover the split exactly once (no gap, no overlap) and share their
settings (beam / K / passes ...), teacher checkpoint hashes and dictionary and
split checksums; otherwise it names the missing, overlapping or conflicting
parts, writes nothing and exits with 2. Parts are kept after a successful
merge unless ``--remove-parts``.
"""
import argparse
import logging
import os
from typing import Optional, Sequence

from ..data import distilled_corpus, parts, soft_labels
from ..errors import MissingFileError

logger = logging.getLogger("fairseq_kd.cli.merge_shards")

MERGED = {distilled_corpus.KIND: "corpus", soft_labels.KIND: "store"}
"""What the parts of each kind merge into."""


def find_parts(out: str, subset: str):
    """(the output T whose parts ``out`` has, the parts' kind). A split ``OUT/<subset>`` of a
    distilled corpus is looked for first, then the store OUT; FileNotFoundError when neither
    has a parts folder, ValueError when the parts are of a kind this command cannot merge."""
    candidates = (distilled_corpus.output(out, subset), out)
    target = next((t for t in candidates if os.path.isdir(parts.parts_dir(t))), None)
    if target is None:
        raise MissingFileError(
            f"no parts to merge: neither {parts.parts_dir(candidates[0])} (fairseq-kd-distill-corpus shards) "
            f"nor {parts.parts_dir(candidates[1])} (fairseq-kd-dump-soft-labels shards) exists"
        )
    kinds = sorted({str(p.get("kind")) for p in parts.read_parts(target)})
    if len(kinds) > 1:
        raise ValueError(f"{parts.parts_dir(target)} mixes parts of kinds {', '.join(kinds)}: keep one kind")
    if kinds[0] not in MERGED:
        raise ValueError(f"{parts.parts_dir(target)} holds parts of kind {kinds[0]!r}; this command merges "
                         f"{', '.join(sorted(MERGED))}")
    return target, kinds[0]


def merge(out: str, subset: str = "train", data: Optional[str] = None, remove_parts: bool = False) -> dict:
    """Check and join the parts of ``out``; returns {"what" ("corpus" or "store"), "parts",
    "sentences", "tokens", "corpus_bleu" (a corpus's vs its reference; None for a store),
    "path" (what was written), "parts_dir", "removed"}."""
    target, kind = find_parts(out, subset)
    if kind == distilled_corpus.KIND:
        merged = distilled_corpus.merge_parts(out, subset, data, remove_parts)
        corpus_bleu = merged["corpus_bleu"]
    else:
        merged = soft_labels.merge_store_parts(out, remove_parts)
        corpus_bleu = None
    return {"what": MERGED[kind], "parts": merged["parts"], "sentences": merged["sentences"],
            "tokens": merged["tokens"], "corpus_bleu": corpus_bleu, "path": out,
            "parts_dir": parts.parts_dir(target), "removed": remove_parts}


def run(args) -> dict:
    return merge(args.out, args.subset, args.data, args.remove_parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-kd-merge-shards",
        description="Check and join the parts written by sharded fairseq-kd-distill-corpus or "
        "fairseq-kd-dump-soft-labels runs into one corpus / one store, identical to a single-process run.",
    )
    p.add_argument("out", help="the --out the shards were given")
    p.add_argument("--subset", default="train", help="split of a distilled corpus to merge (default: train)")
    p.add_argument("--data", default=None,
                   help="data directory of the split (distilled corpus only; default: the one the parts recorded)")
    p.add_argument("--remove-parts", action="store_true", help="delete the parts after a successful merge")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from ._common import record_run, run_command

    args, summary = run_command(
        build_parser(), run, argv, message=lambda args, e: f"cannot merge {args.out}: {e}; nothing written",
    )
    removed = " (parts removed)" if summary["removed"] else ""
    if summary["what"] == "corpus":
        record_run(args.out, args, name=f"command.merge.{args.subset}.json")
        print(f"merge-shards | {args.subset}: {summary['parts']} parts -> {summary['sentences']} sentences, "
              f"{summary['tokens']} tokens, corpus BLEU {summary['corpus_bleu']:.2f} vs reference -> {args.out}"
              + removed)
    else:
        record_run(args.out, args, name="command.merge.json")
        print(f"merge-shards | {summary['parts']} parts -> store of {summary['sentences']} sentences, "
              f"{summary['tokens']} tokens -> {args.out}" + removed)


if __name__ == "__main__":
    cli_main()
