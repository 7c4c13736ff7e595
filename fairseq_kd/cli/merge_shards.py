"""``fairseq-kd-merge-shards``: join the parts that sharded offline stages wrote.

An offline stage run as N shards (``--num-shards N --shard-id I``, or under
``torchrun`` / ``srun``) leaves one part per shard; this command joins them
into what a single process writes:

- ``fairseq-kd-distill-corpus ... --out OUT`` shards write
  ``OUT/<subset>.parts/part-0000I-of-0000N/``; the merge writes the distilled
  split into OUT (the same bin/idx/text files, byte for byte).
- ``fairseq-kd-dump-soft-labels ... --out OUT`` shards write
  ``OUT.parts/part-0000I-of-0000N/`` (each a finished store for its range);
  the merge writes the store OUT (equal array for array).

    fairseq-kd-merge-shards OUT [--subset train] [--data DATA] [--remove-parts]

Before writing anything it checks that the parts cover the split exactly once
(no gap, no overlap) and share their settings (beam / K / passes ...), teacher
checkpoint hashes and dictionary and split checksums; otherwise it names the
missing, overlapping or conflicting parts, writes nothing and exits with 2.
Parts are kept after a successful merge unless ``--remove-parts``.
"""
import argparse
import os
from typing import Optional, Sequence


def detect(out: str, subset: str) -> str:
    """"corpus" or "store": which kind of parts OUT has (FileNotFoundError when none)."""
    from . import distill_corpus

    if os.path.isdir(distill_corpus.parts_dir(out, subset)):
        return "corpus"
    if os.path.isdir(store_parts_dir(out)):
        return "store"
    raise FileNotFoundError(
        f"no parts to merge: neither {distill_corpus.parts_dir(out, subset)} (fairseq-kd-distill-corpus shards) "
        f"nor {store_parts_dir(out)} (fairseq-kd-dump-soft-labels shards) exists"
    )


def store_parts_dir(out: str) -> str:
    """Where store shards write their parts: ``OUT.parts`` beside the store OUT."""
    from ..data.soft_labels import parts_dir

    return parts_dir(out)


def merge(out: str, subset: str = "train", data: Optional[str] = None, remove_parts: bool = False) -> dict:
    kind = detect(out, subset)
    if kind == "corpus":
        from .distill_corpus import merge_parts

        return dict(merge_parts(out, subset, data, remove_parts), what="corpus")
    from ..data.soft_labels import merge_store_parts

    return dict(merge_store_parts(store_parts_dir(out), out, remove_parts), what="store")


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
        build_parser(), lambda args: merge(args.out, args.subset, args.data, args.remove_parts), argv,
        message=lambda args, e: f"cannot merge {args.out}: {e}; nothing written",
    )
    if summary["what"] == "corpus":
        record_run(args.out, args, name=f"command.merge.{args.subset}.json")
        print(f"merge-shards | {args.subset}: {summary['parts']} parts -> {summary['sentences']} sentences, "
              f"{summary['tokens']} tokens, corpus BLEU {summary['corpus_bleu']:.2f} vs reference -> {args.out}"
              + (" (parts removed)" if args.remove_parts else ""))
    else:
        record_run(args.out, args, name="command.merge.json")
        print(f"merge-shards | {summary['parts']} parts -> store of {summary['sentences']} sentences, "
              f"{summary['tokens']} tokens -> {args.out}" + (" (parts removed)" if args.remove_parts else ""))


if __name__ == "__main__":
    cli_main()
