"""The D2GPo prior store: each target word's k nearest words and their Gaussian weights.

Li, Wang, Chen, Utiyama, Sumita, Zhang, Zhao (2020), Data-dependent Gaussian
Prior Objective for Language Generation (ICLR). The prior of a gold word y is
q_T(v | y) = softmax_v(w(rank_y(v)) / T), where rank_y orders the vocabulary
by cosine similarity of word embeddings to y (rank 0 is y itself) and
w(r) = N(r; 0, sigma^2) (``losses.gaussian_rank_weights``).

The paper's code keeps a dense V x V float32 matrix (4 GiB at V = 32k); this
store keeps the first k ranks only (sparse; 6 bytes a candidate with float16
weights), so the softmax runs over the k nearest words instead of all V. With
k = V the two are the same.

A store of :mod:`fairseq_kd.data.array_store`:

- ``ids.npy``      int32 V x k: candidate word ids; column 0 is the word
  itself, then its neighbours by decreasing cosine similarity;
- ``weights.npy``  float16 or float32 V x k: w(rank); -inf where a word has
  fewer than k candidates (the padding columns repeat the word's own id, so
  the softmax gives them probability 0);
- ``header.json``: kind ``d2gpo_prior``, k, sigma, vocab_size, the target
  dictionary's checksum and the embedding source (type and sha256).

Which words are candidates: words with an embedding that are not special
symbols (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, fairseq's ``madeupword``
fillers). A special symbol or a word without an embedding has only itself.
"""
import re
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .. import losses
from . import array_store

KIND = "d2gpo_prior"
MADEUP = re.compile(r"^madeupword\d+$")


def special_symbols(dictionary) -> np.ndarray:
    """V booleans: fairseq's special symbols and padding fillers (never candidates)."""
    special = np.zeros(len(dictionary), dtype=bool)
    special[: dictionary.nspecial] = True
    for i, symbol in enumerate(dictionary.symbols):
        if MADEUP.match(symbol):
            special[i] = True
    return special


def build(
    path: str,
    embeddings: torch.Tensor,
    candidates: np.ndarray,
    k: int,
    sigma: float,
    header: Dict[str, Any],
    dtype: str = "float16",
    block_size: int = 512,
    progress: Optional[Callable] = None,
) -> Dict[str, Any]:
    """Write the prior store at ``path`` block by block; resumes an unfinished one.

    Args:
        embeddings: V x d word embeddings, row i for dictionary word i (rows
            of non-candidates are not used).
        candidates: V booleans, the words that may be another word's neighbour.
        k: candidates kept per word (k <= V).
        sigma: the Gaussian's standard deviation over ranks.
        header: extra header fields (dictionary_checksum, embedding source...).
        dtype: "float16" or "float32" for the weights.
        block_size: rows per block; memory is block_size x V floats, never V x V.
        progress: wraps the iterable of blocks (a progress bar), or None.

    Returns the finished store's header.
    """
    V = embeddings.size(0)
    if not 1 <= k <= V:
        raise ValueError(f"k must be in [1, {V}] (the vocabulary size), got {k}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    header = dict(
        header, kind=KIND, k=k, sigma=sigma, vocab_size=V, weights_dtype=dtype,
        weight="normal_pdf(rank; 0, sigma)",
    )
    store = array_store.resume(path, header)
    if store is None:
        store = array_store.create(path, header, {"ids": ((V, k), "int32"), "weights": ((V, k), dtype)}, units=V)

    gauss = losses.gaussian_rank_weights(k, sigma).float()  # k
    cand = torch.from_numpy(np.asarray(candidates, dtype=bool))
    unit = embeddings.float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # V x d
    starts = range(0, V, block_size)
    for start in progress(starts) if progress else starts:
        end = min(start + block_size, V)
        if bool(np.asarray(store.done[start:end]).all()):
            continue  # resumed: written by an earlier run
        rows = torch.arange(start, end)
        sims = unit[start:end] @ unit.T  # B x V cosine similarities
        sims[:, ~cand] = float("-inf")
        sims[~cand[start:end]] = float("-inf")  # a non-candidate keeps only itself
        sims[torch.arange(end - start), rows] = float("inf")  # rank 0: the word itself
        top, ids = sims.topk(k, dim=-1)  # B x k, sorted by decreasing similarity
        valid = top > float("-inf")
        ids = torch.where(valid, ids, rows.unsqueeze(-1))
        weights = torch.where(valid, gauss.expand_as(top), torch.full_like(top, float("-inf")))
        store["ids"][start:end] = ids.numpy().astype(np.int32)
        store["weights"][start:end] = weights.numpy().astype(dtype)
        store.mark_done(slice(start, end))
    return array_store.finish(store)


class PriorTable:
    """A finished prior store held as plain tensors (never module buffers, so
    never saved in a checkpoint), moved once to the device that asks for it.

    Attributes: ``ids`` (int32 V x k), ``weights`` (V x k), ``header``.
    """

    def __init__(self, header: Dict[str, Any], ids: torch.Tensor, weights: torch.Tensor):
        self.header, self.ids, self.weights = header, ids, weights

    @property
    def k(self) -> int:
        return self.ids.size(1)

    def nbytes(self) -> int:
        return self.ids.numel() * self.ids.element_size() + self.weights.numel() * self.weights.element_size()

    def lookup(self, gold: torch.Tensor):
        """Candidate ids (int64 N x k) and weights (N x k) of N gold word ids."""
        if self.ids.device != gold.device:
            self.ids, self.weights = self.ids.to(gold.device), self.weights.to(gold.device)
        return self.ids[gold].long(), self.weights[gold]


def load(path: str, dictionary) -> PriorTable:
    """Open the prior store at ``path`` for ``dictionary`` (raises StoreError on a mismatch)."""
    header, arrays = array_store.open_store(path, KIND)
    array_store.expect(header, "vocab_size", len(dictionary), path, "the target dictionary (its size)")
    array_store.expect(
        header, "dictionary_checksum", array_store.dictionary_checksum(dictionary), path, "the target dictionary"
    )
    # A copy in memory: V*k*6 bytes (48 MiB at V = 32k, k = 256 with float16).
    ids = torch.from_numpy(np.array(arrays["ids"]))
    weights = torch.from_numpy(np.array(arrays["weights"]))
    return PriorTable(header, ids, weights)
