"""Word-vector text files (word2vec / fastText ``.vec`` / GloVe): the plugin's one reader.

A file holds ``word v1 ... vd`` lines, separated by single spaces, with or
without a ``count dim`` first line (word2vec and fastText write it, GloVe does
not). Used by ``--arch bilstm_classifier --embed-path`` (initial embeddings)
and ``fairseq-kd-build-prior --word-vectors`` (the D2GPo prior's similarities).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import UsageError


def read_word_vectors(
    path: str, symbols: Sequence[str], dim: Optional[int] = None, dim_option: str = "the expected dimension"
) -> Tuple[torch.Tensor, np.ndarray, int]:
    """``(vectors, found, n_vectors)``: the vectors of ``symbols`` (a fairseq
    dictionary's ``symbols``) in the word-vector text file ``path``.

    ``vectors`` is V x d float32 (zero rows for symbols without a vector),
    ``found`` V booleans, ``n_vectors`` the number of vectors the file holds.
    A word listed twice keeps its first vector (word2vec files are sorted by
    frequency). Lines are split on single spaces, a trailing space or newline
    dropped; empty lines are skipped.

    Every vector must have ``dim`` values, named ``dim_option`` in the error
    (e.g. ``"--embed-dim"``), or when ``dim`` is None as many as the first. Raises
    ValueError naming the file and line for a vector of another length, a line
    without values, a non-numeric value, text that is not UTF-8 (a binary
    word2vec ``.bin`` is not read) or a file without vectors.
    """
    index = {}
    for i, symbol in enumerate(symbols):
        index.setdefault(symbol, i)
    rows = {}
    n_vectors, line_no = 0, 0
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.rstrip("\r\n").rstrip(" ").split(" ")
                if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # "count dim" header
                if parts == [""]:
                    continue
                if len(parts) < 2:
                    raise UsageError(f"{path}:{line_no}: expected 'word v1 ... vd', got {line[:60]!r}")
                if dim is None:
                    dim, dim_option = len(parts) - 1, None
                if len(parts) - 1 != dim:
                    if dim_option is None:
                        raise UsageError(f"{path}:{line_no}: {len(parts) - 1} values, earlier lines have {dim}")
                    raise UsageError(f"{path}:{line_no}: vector of {parts[0]!r} has {len(parts) - 1} values, "
                                     f"{dim_option} is {dim}")
                n_vectors += 1
                i = index.get(parts[0])
                if i is not None and i not in rows:
                    try:
                        rows[i] = np.asarray(parts[1:], dtype=np.float32)
                    except ValueError:
                        raise UsageError(f"{path}:{line_no}: non-numeric vector for {parts[0]!r}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text after line {line_no} ({e}): give a word2vec / fastText / "
                         "GloVe text file (a binary word2vec .bin is not read)") from None
    if n_vectors == 0:
        raise UsageError(f"{path}: no word vectors found")
    vectors = np.zeros((len(symbols), dim), dtype=np.float32)
    found = np.zeros(len(symbols), dtype=bool)
    for i, vector in rows.items():
        vectors[i], found[i] = vector, True
    return torch.from_numpy(vectors), found, n_vectors
