"""fairseq-kd-build-prior: the D2GPo prior of a target dictionary from word embeddings.

Li et al. (2020), Data-dependent Gaussian Prior Objective for Language
Generation. For each word of the target dictionary, rank the vocabulary by
cosine similarity of embeddings (rank 0 = the word itself), keep the first k
ranks and give rank r the weight N(r; 0, sigma^2); ``--criterion d2gpo``
reads the store (format in :mod:`fairseq_kd.data.prior`).

Embedding sources (exactly one):

- ``--word-vectors FILE``: word2vec / fastText text format (an optional
  ``count dim`` first line, then ``word v1 ... vd``), e.g. fastText trained on
  the BPE-segmented training targets as in the paper;
- ``--checkpoint FILE``: a trained fairseq model's ``decoder.embed_tokens``;
- ``--bert DIR``: a BERT checkpoint directory (``vocab.txt`` and
  ``model.safetensors`` or ``pytorch_model.bin``, read by
  :mod:`fairseq_kd.data.bert_io`): each dictionary word (its BPE marker ``@@`` or leading
  ``\u2581`` removed) is WordPiece-tokenized and gets the mean of its pieces'
  input embeddings (a BPE continuation piece is looked up as a word start:
  a fairseq dictionary does not mark continuations).

Words without an embedding get only themselves as candidate (a warning gives
their count); so do the special symbols.

    fairseq-kd-build-prior --dict data-bin/multi30k_de_en/dict.en.txt \\
        --bert DIR --out data-bin/multi30k_de_en/d2gpo_prior
"""
import argparse
import hashlib
import logging
import os

import numpy as np
import torch

from ..data import array_store, bert_io, prior, word_vectors
from ..errors import MissingFileError
from ._common import check_minimums, input_file, progress, record_run, run_command

logger = logging.getLogger("fairseq_kd.cli.build_prior")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-build-prior",
        description="Build the D2GPo prior (top-k nearest words, Gaussian weights by rank) "
        "of a target dictionary from word embeddings.",
    )
    parser.add_argument("--dict", required=True, help="the target dictionary (fairseq dict.<tgt>.txt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--word-vectors", metavar="FILE", help="word vectors in word2vec/fastText text format")
    source.add_argument("--checkpoint", metavar="FILE", help="a fairseq checkpoint: its decoder input embeddings")
    source.add_argument("--bert", metavar="DIR",
                        help="a BERT directory: vocab.txt and model.safetensors (or pytorch_model.bin)")
    parser.add_argument("--out", required=True, help="directory of the prior store to write")
    parser.add_argument("--topk", type=int, default=256, help="candidates kept per word, the word itself included")
    parser.add_argument("--sigma", type=float, default=1.0,
                        help="standard deviation of the Gaussian over ranks (the paper's scripts: 1)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="dtype of the weights")
    parser.add_argument("--block-size", type=int, default=512,
                        help="words ranked at a time (memory: block-size x V floats)")
    return parser


def _sha256(paths) -> str:
    if len(paths) == 1:
        return array_store.file_checksum(paths[0])
    h = hashlib.sha256()
    for path in paths:
        h.update(array_store.file_checksum(path).encode())
    return h.hexdigest()


def word_vector_embeddings(path: str, dictionary):
    """(V x d embeddings, V booleans: found) from a word2vec/fastText text file."""
    emb, found, _ = word_vectors.read_word_vectors(path, dictionary.symbols)
    return emb, found


def checkpoint_embeddings(path: str, dictionary):
    """(V x d embeddings, V booleans: found) from a fairseq checkpoint's decoder."""
    from fairseq_kd import checkpoint

    model = checkpoint.read_fairseq_checkpoint(path, "--checkpoint", model_only=True)["model"]  # memory-mapped
    for key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if key in model:
            emb = model[key].float()
            break
    else:
        raise ValueError(f"{path} has no decoder.embed_tokens.weight: not a fairseq encoder-decoder checkpoint")
    if emb.size(0) != len(dictionary):
        raise ValueError(
            f"{path}: its decoder embeddings have {emb.size(0)} rows, the dictionary has "
            f"{len(dictionary)} symbols: the model was not trained with this dictionary"
        )
    return emb, emb.norm(dim=-1).gt(0).numpy()


def bert_embeddings(path: str, dictionary):
    """(V x d embeddings, V booleans: found) from a BERT directory's WordPiece embeddings."""
    from tokenizers import BertWordPieceTokenizer

    if not os.path.isdir(path):
        raise MissingFileError(f"--bert {path} is not a directory: give a BERT checkpoint directory")
    vocab = bert_io.vocab_file(path)
    table = bert_io.read_word_embeddings(path)[0].float()  # W x d
    lowercase = bert_io.is_uncased(vocab)
    tokenizer = BertWordPieceTokenizer(vocab, lowercase=lowercase)
    unk = tokenizer.token_to_id(bert_io.UNK)
    emb = torch.zeros(len(dictionary), table.size(1))
    found = np.zeros(len(dictionary), dtype=bool)
    for i, symbol in enumerate(dictionary.symbols):
        word = symbol[:-2] if symbol.endswith("@@") else symbol
        word = word.lstrip("\u2581")
        if i < dictionary.nspecial or not word:
            continue
        ids = tokenizer.encode(word, add_special_tokens=False).ids
        if ids and unk not in ids and max(ids) < table.size(0):
            emb[i], found[i] = table[ids].mean(0), True
    return emb, found


def run(args) -> dict:
    """Build the prior store at ``args.out``; the summary is its header."""
    from fairseq.data import Dictionary

    check_minimums(args, {"topk": 1, "block_size": 1})
    if args.sigma <= 0:
        raise ValueError(f"--sigma must be > 0, got {args.sigma}")
    dictionary = Dictionary.load(input_file(args.dict, "--dict"))
    if len(dictionary) == dictionary.nspecial:
        raise ValueError(f"--dict {args.dict} holds no words: give the dict.<tgt>.txt that fairseq-preprocess wrote")
    if args.word_vectors:
        source, files = "word_vectors", [args.word_vectors]
        emb, found = word_vector_embeddings(input_file(args.word_vectors, "--word-vectors"), dictionary)
    elif args.checkpoint:
        source, files = "fairseq_checkpoint", [args.checkpoint]
        emb, found = checkpoint_embeddings(args.checkpoint, dictionary)
    else:
        emb, found = bert_embeddings(args.bert, dictionary)
        source, files = "bert", [bert_io.weights_file(args.bert), bert_io.vocab_file(args.bert)]

    special = prior.special_symbols(dictionary)
    missing = np.flatnonzero(~found & ~special)
    if len(missing):
        examples = ", ".join(repr(dictionary[i]) for i in missing[:5])
        logger.warning(
            f"{len(missing)} of {int((~special).sum())} dictionary words have no embedding in the {source} "
            f"source (e.g. {examples}): each gets only itself as candidate"
        )
    k = min(args.topk, len(dictionary))
    if k < args.topk:
        logger.info(f"--topk {args.topk} > vocabulary size: keeping k = {k}")
    header = {
        "dictionary_checksum": array_store.dictionary_checksum(dictionary),
        "embedding": {"source": source, "sha256": _sha256(files), "dim": int(emb.size(1))},
        "n_without_embedding": int(len(missing)),
    }
    n_blocks = (len(dictionary) + args.block_size - 1) // args.block_size
    bar = lambda blocks: progress(blocks, total=n_blocks, desc="prior", unit="block")  # noqa: E731
    header = prior.build(
        args.out, emb, found & ~special, k, args.sigma, header,
        dtype=args.dtype, block_size=args.block_size, progress=bar,
    )
    record_run(args.out, args)
    return header


def cli_main(argv=None) -> None:
    args, header = run_command(build_parser(), run, argv)  # StoreError and CheckpointError are ValueErrors
    size = sum(os.path.getsize(os.path.join(args.out, f"{n}.npy")) for n in ("ids", "weights"))
    print(
        f"build-prior: {header['vocab_size']} words, k={header['k']}, sigma={header['sigma']}, "
        f"{header['n_without_embedding']} without embedding ({header['embedding']['source']}); "
        f"{args.out} ({size / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    cli_main()
