"""``fairseq-kd-bert-tokenize``: text <-> a BERT teacher's WordPiece pieces.

The C-MLM teacher and its student share one fairseq dictionary built from
WordPiece text, so that the teacher's soft labels are student ids:

    fairseq-kd-bert-tokenize --vocab BERT_DIR train.de.gz -o wp/train.de   # likewise every split/side
    zcat train.de.gz | fairseq-kd-bert-tokenize --vocab BERT_DIR > wp/train.de  # a filter: stdin to stdout
    fairseq-preprocess --joined-dictionary --source-lang de --target-lang en \\
        --trainpref wp/train --validpref wp/valid --testpref wp/test --destdir data-bin

Tokenization uses the ``tokenizers`` library's BERT WordPiece pipeline with
the teacher's ``vocab.txt``, lowercasing and stripping accents when the
vocabulary is uncased (:func:`fairseq_kd.data.bert_io.is_uncased`:
``do_lower_case`` in a ``tokenizer_config.json`` beside it, else no piece
that lowercasing would change) unless ``--lowercase`` says otherwise.
``--detokenize`` turns pieces back into text (``##`` pieces are glued to the
previous one; ``--lang`` then applies Moses detokenization to punctuation), and
``--normalize`` applies only the vocabulary's normalization (for references
scored against detokenized output).

A BERT classifier teacher (``--arch bert_classifier_base``) reads a dictionary
of BERT's whole vocabulary instead, so that every piece keeps its embedding,
including pieces that only the test data holds:

    fairseq-kd-bert-tokenize --vocab BERT_DIR --dict-out wp/dict.txt        # no input needed
    fairseq-preprocess --only-source --srcdict wp/dict.txt --trainpref wp/train.input0 ...
"""
import argparse
import gzip
import io
import logging
import os
import sys
import time

from ..data import bert_io
from ..data.atomic import atomic_open
from ._common import check_minimums, input_file, progress, record_run, run_command

# Log records go to stdout (_common.setup_logging), which may be the output here: this
# command logs nothing at INFO and prints its summary line on stderr.
logger = logging.getLogger("fairseq_kd.cli.bert_tokenize")


ENGLISH_CLITICS = {"s", "t", "re", "ve", "ll", "d", "m"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-bert-tokenize",
        description="Tokenize text into a BERT vocabulary's WordPiece pieces (space-separated), "
        "or detokenize pieces back into text.",
    )
    parser.add_argument("input", nargs="?", default=None,
                        help="text file, one sentence a line (.gz read transparently); - or left out: "
                             "standard input (left out with --dict-out: no text is converted)")
    parser.add_argument("-o", "--output", default="-", help="output file (default: - = stdout)")
    parser.add_argument("--vocab", required=True, help="the teacher's vocab.txt, or the BERT directory holding it")
    parser.add_argument("--lowercase", choices=("auto", "yes", "no"), default="auto",
                        help="lowercase and strip accents: auto = when the vocabulary is uncased (default)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--detokenize", action="store_true", help="pieces -> text (inverse of tokenization)")
    mode.add_argument("--normalize", action="store_true",
                      help="only apply the vocabulary's normalization (lowercasing, accents) to text")
    parser.add_argument("--lang", default=None,
                        help="with --detokenize: also Moses-detokenize punctuation for this language (e.g. en)")
    parser.add_argument("--dict-out", default=None, metavar="FILE",
                        help="also write the vocabulary as a fairseq dictionary (for fairseq-preprocess "
                             "--srcdict): every piece in vocab.txt order, [PAD] [UNK] [CLS] [SEP] left out "
                             "(fairseq's <pad> <unk> <s> </s> stand for them)")
    parser.add_argument("--batch-lines", type=int, default=10000, help="lines tokenized per call (default: 10000)")
    return parser


def build_tokenizer(vocab: str, lowercase: str = "auto"):
    """A ``tokenizers`` BertWordPieceTokenizer on ``vocab`` and whether it lowercases."""
    from tokenizers import BertWordPieceTokenizer

    file = bert_io.vocab_file(vocab)
    lower = bert_io.is_uncased(file) if lowercase == "auto" else lowercase == "yes"
    return BertWordPieceTokenizer(file, lowercase=lower, strip_accents=lower), lower


def tokenize_lines(tokenizer, lines):
    """Space-separated pieces of each line (no [CLS]/[SEP])."""
    return [" ".join(e.tokens) for e in tokenizer.encode_batch(lines, add_special_tokens=False)]


def detokenize_line(line: str, detokenizer=None) -> str:
    """Glue ``##`` pieces to their predecessor; optionally Moses-detokenize."""
    words = []
    for piece in line.split():
        if piece.startswith("##") and words:
            words[-1] += piece[2:]
        else:
            words.append(piece)
    if detokenizer is None:
        return " ".join(words)
    if detokenizer.lang == "en":  # BERT splits "woman's" into ' and s; Moses expects 's
        merged = []
        for word in words:
            if merged and merged[-1] == "'" and word in ENGLISH_CLITICS:
                merged[-1] += word
            else:
                merged.append(word)
        words = merged
    return detokenizer.detokenize(words)


def write_dictionary(vocab: str, out: str) -> int:
    """Write ``vocab``'s pieces as a fairseq dict.txt (``piece 1`` a line, vocab.txt
    order, duplicates and pieces that fairseq reserves left out). Returns the
    number of symbols written."""
    file = bert_io.vocab_file(vocab)
    # fairseq's <s> <pad> </s> <unk> and the BERT pieces they stand for ([MASK] is an ordinary symbol here)
    fairseq_specials = {s: p for s, p in bert_io.FAIRSEQ_TO_BERT_SPECIALS.items() if s != "<mask>"}
    seen = set(fairseq_specials) | set(fairseq_specials.values())
    symbols = []
    with open(file, encoding="utf-8") as f:
        for line in f:
            piece = line.rstrip("\n").rstrip("\r")
            if not piece or piece in seen or any(c.isspace() for c in piece):
                continue
            seen.add(piece)
            symbols.append(piece)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_open(out, encoding="utf-8") as f:
        f.writelines(f"{s} 1\n" for s in symbols)
    return len(symbols)


def _read_lines(path: str):
    """The lines of ``path`` (``-``: standard input, as UTF-8; ``.gz``: gunzipped), newlines stripped."""
    strip = lambda f: [line.rstrip("\n").rstrip("\r") for line in f]  # noqa: E731
    if path == "-":
        if not hasattr(sys.stdin, "buffer"):  # replaced by a text stream (tests)
            return strip(sys.stdin)
        f = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
        try:
            return strip(f)
        finally:
            f.detach()  # leaves sys.stdin open
    input_file(path, "input")
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        return strip(f)


def run(args) -> dict:
    """Convert ``args.input`` (and/or write ``--dict-out``); the summary: ``lines``,
    ``pieces``, ``lowercase``, ``mode``, ``dictionary`` (symbols written, or None),
    ``seconds``."""
    start = time.time()
    check_minimums(args, {"batch_lines": 1})
    if args.input is None and not args.dict_out:
        if sys.stdin.isatty():  # a forgotten file name, not text typed in: say so rather than wait
            raise ValueError("no input file given and standard input is a terminal: give a file, or pipe text in")
        args.input = "-"  # a filter: standard input to standard output
    # Vocabulary and input are read and checked before anything is written.
    tokenizer, lower = build_tokenizer(args.vocab, args.lowercase) if args.input is not None else (None, None)
    lines = _read_lines(args.input) if args.input is not None else None
    mode = "detokenized" if args.detokenize else "normalized" if args.normalize else "tokenized"
    summary = {"lines": 0, "pieces": 0, "lowercase": lower, "mode": mode, "dictionary": None}
    if args.dict_out:
        summary["dictionary"] = write_dictionary(args.vocab, args.dict_out)  # told by the summary line
    if lines is None:
        summary["seconds"] = time.time() - start
        return summary
    detokenizer = None
    if args.detokenize and args.lang:
        from sacremoses import MosesDetokenizer

        detokenizer = MosesDetokenizer(lang=args.lang)
    out, pieces = [], 0
    for begin in progress(range(0, len(lines), args.batch_lines), desc="tokenize", unit="batch"):
        chunk = lines[begin : begin + args.batch_lines]
        if args.detokenize:
            out.extend(detokenize_line(line, detokenizer) for line in chunk)
        elif args.normalize:
            out.extend(tokenizer.normalizer.normalize_str(line).strip() for line in chunk)
        else:
            tokenized = tokenize_lines(tokenizer, chunk)
            pieces += sum(len(t.split()) for t in tokenized)
            out.extend(tokenized)
    text = "".join(line + "\n" for line in out)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with atomic_open(args.output, encoding="utf-8") as f:
            f.write(text)
        record_run(os.path.dirname(os.path.abspath(args.output)), args,
                   name=os.path.basename(args.output) + ".command.json")
    summary.update(lines=len(lines), pieces=pieces, seconds=time.time() - start)
    return summary


def summary_line(args, summary: dict) -> str:
    parts = []
    if args.input is not None:
        extra = f", {summary['pieces']} pieces" if summary["pieces"] else ""
        parts.append(f"{summary['mode']} {summary['lines']} lines{extra} (lowercase={summary['lowercase']}) "
                     f"in {summary['seconds']:.1f}s: {args.input} -> {args.output}")
    if summary["dictionary"] is not None:
        parts.append(f"wrote a fairseq dictionary of {summary['dictionary']} pieces: {args.dict_out}")
    return "bert-tokenize | " + " | ".join(parts)


def cli_main(argv=None) -> None:
    # OSError: an unreadable input or unwritable output, named by the error
    args, summary = run_command(build_parser(), run, argv, errors=(OSError, ValueError))
    print(summary_line(args, summary), file=sys.stderr)  # on stderr: stdout may be the output


if __name__ == "__main__":
    cli_main()
