"""Word alignment with IBM Model 1 (EM), in numpy, plus symmetrization.

Brown et al. (1993), The Mathematics of Statistical Machine Translation: IBM
Model 1 generates each target word t_j from one source position a_j chosen
uniformly among the source words and a NULL word, with a translation table
tau(t | s). EM: the posterior of a_j = i is tau(t_j | s_i) / sum_i' tau(t_j | s_i'),
expected counts c(s, t) are summed over the corpus, and tau(t | s) = c(s, t) / c(s).
The Viterbi alignment links t_j to argmax_i tau(t_j | s_i) (no link when NULL wins).

fast_align (Dyer et al. 2013) is IBM Model 2 with a diagonal prior; it is not
installable here, and Zhou et al. (2020) only need word-translation counts,
for which Model 1 plus symmetrization (Koehn et al. 2003: intersection, or
grow-diag-final-and) is the standard baseline.

Implementation: the corpus is streamed. Every EM iteration is one pass over it
in chunks of whole sentences; a chunk's (sentence, source position incl. NULL,
target position) triples are rows of flat numpy arrays, (|s| + 1) * |t| rows a
sentence, at most ``chunk_rows`` rows a chunk (a longer sentence is a chunk of
its own), so a chunk is a gather, a grouped sum (np.bincount) and a scatter.
What stays in memory is the vocabularies and the table over co-occurring
(source word, target word) pairs (its size grows with the vocabulary pairs, not
with the corpus) plus one chunk, about 100 bytes a row. A first pass collects
the vocabularies and the pairs; a last pass gives the Viterbi links. Expected
counts are added in corpus order (np.add.at), exactly as one np.bincount over
the whole corpus would add them, so the tables and links do not depend on the
chunk size, bit for bit.

A corpus is a sequence of sentences (lists of words), or any re-iterable of
them (each ``iter()`` starts again from the first sentence, e.g. a text file
read line by line): it is iterated 2 + ``iterations`` times per direction.
Alignments are lists of (i, j) pairs per sentence: i indexes the source
words, j the target words, both from 0.
"""
from itertools import chain
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Set, Tuple

import numpy as np

Alignment = List[Tuple[int, int]]
Sentence = Sequence[str]
Corpus = Iterable[Sentence]  # re-iterable: every iter() yields the same sentences from the first
NULL = "<NULL>"
SYMMETRIZE = ("none", "intersect", "grow-diag-final-and")
DEFAULT_CHUNK_ROWS = 1 << 18  # about 25 MB of row arrays at a time


def sentence_pairs(src: Corpus, tgt: Corpus) -> Iterator[Tuple[Sentence, Sentence]]:
    """zip(src, tgt) that raises ValueError when the corpora differ in length
    (before the first pair when both have a len(), else when the shorter ends)."""
    if hasattr(src, "__len__") and hasattr(tgt, "__len__") and len(src) != len(tgt):
        raise ValueError(f"{len(src)} source and {len(tgt)} target sentences")
    source, target = iter(src), iter(tgt)
    n = 0
    for s in source:
        t = next(target, None)
        if t is None:
            raise ValueError(f"{n + 1 + sum(1 for _ in source)} source and {n} target sentences")
        yield s, t
        n += 1
    rest = sum(1 for _ in target)
    if rest:
        raise ValueError(f"{n} source and {n + rest} target sentences")


def _chunks(items: Iterable, chunk_rows: int, rows: Callable[[object], int]) -> Iterator[list]:
    """Consecutive runs of ``items`` of at most ``chunk_rows`` rows in all (at least one item each)."""
    chunk, n = [], 0
    for item in items:
        r = rows(item)
        if chunk and n + r > chunk_rows:
            yield chunk
            chunk, n = [], 0
        chunk.append(item)
        n += r
    if chunk:
        yield chunk


def _model1_rows(pair: Tuple[Sentence, Sentence]) -> int:
    return (len(pair[0]) + 1) * len(pair[1])


class _Rows:
    """The flat (sentence, i, j) rows of a chunk of sentence pairs for one direction.

    Rows are ordered by sentence, then target position j, then source position
    (NULL first). One group per (sentence, target position): the rows competing
    for a_j, contiguous. ``grow``: add unseen words to the vocabularies (ids by
    first occurrence), else every word must be in them.
    """

    def __init__(self, chunk: Sequence[Tuple[Sentence, Sentence]], s_vocab: Dict[str, int], t_vocab: Dict[str, int],
                 grow: bool = False):
        # a sentence without target words has nothing to align (and its source words stay out of the vocabulary)
        kept = [(k, s, t) for k, (s, t) in enumerate(chunk) if t]
        s_len = np.array([len(s) for _, s, _ in kept], dtype=np.int64)
        n = np.array([len(t) for _, _, t in kept], dtype=np.int64)
        s_ids = _encode(chain.from_iterable(s for _, s, _ in kept), s_vocab, grow)
        t_ids = _encode(chain.from_iterable(t for _, _, t in kept), t_vocab, grow)
        s_ids = np.insert(s_ids, np.cumsum(s_len) - s_len, 0)  # NULL (id 0) before each source sentence
        m = s_len + 1
        # per group (target word): its sentence, its position j, where its source words start in s_ids
        self.n_groups = len(t_ids)
        self.group_sent = np.repeat(np.array([k for k, _, _ in kept], dtype=np.int64), n)
        self.group_j = np.arange(self.n_groups) - np.repeat(np.cumsum(n) - n, n)
        group_size = np.repeat(m, n)
        group_src = np.repeat(np.cumsum(m) - m, n)
        # per row
        self.group = np.repeat(np.arange(self.n_groups), group_size)
        self.pos = np.arange(len(self.group)) - np.repeat(np.cumsum(group_size) - group_size, group_size)
        s_row = s_ids[group_src[self.group] + self.pos]
        self.key = (s_row << 32) | t_ids[self.group]  # (source word, target word) pair: sorted by s, then t

    def __len__(self) -> int:
        return len(self.group)


def _merge(arrays: List[np.ndarray]) -> np.ndarray:
    """The sorted distinct keys of ``arrays`` (emptied, so that only the result stays),
    as np.unique (whose hash-based path is slower on int64 keys)."""
    a = np.concatenate(arrays)
    arrays.clear()
    a.sort()
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _encode(words: Iterable[str], vocab: Dict[str, int], grow: bool) -> np.ndarray:
    if grow:
        return np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64)
    return np.fromiter(map(vocab.__getitem__, words), dtype=np.int64)


class _PairIndex:
    """The position of each key in ``keys`` (sorted distinct non-negative int64), by a
    vectorized open-addressing hash table (Fibonacci hashing, linear probing, load at
    most 1/2): one or two random reads a row, several times faster than a binary
    search (np.searchsorted) over millions of pairs."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        self.bits = max(1, (2 * len(keys) - 1).bit_length())
        self.mask = (1 << self.bits) - 1
        self.table = np.full(1 << self.bits, -1, dtype=np.int32 if len(keys) < 2**31 else np.int64)
        pending = np.arange(len(keys))
        slot = self._hash(keys)
        while len(pending):
            free = np.flatnonzero(self.table[slot] == -1)
            self.table[slot[free]] = pending[free]  # one of the keys that share a free slot gets it
            keep = np.ones(len(pending), dtype=bool)
            keep[free[self.table[slot[free]] == pending[free]]] = False
            pending, slot = pending[keep], (slot[keep] + 1) & self.mask

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        product = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64
        return (product >> np.uint64(64 - self.bits)).astype(np.int64)

    def __call__(self, needles: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0 < len(needles):
            raise ValueError("a word pair the first pass did not see: the corpus changed while it was read")
        slot = self._hash(needles)
        out = self.table[slot].astype(np.int64)
        miss = np.flatnonzero((out < 0) | (self.keys[out] != needles))
        while len(miss):
            if (out[miss] < 0).any():  # an empty slot ends the probe: the key is absent
                raise ValueError("a word pair the first pass did not see: the corpus changed while it was read")
            slot[miss] = (slot[miss] + 1) & self.mask
            out[miss] = self.table[slot[miss]]
            miss = miss[(out[miss] < 0) | (self.keys[out[miss]] != needles[miss])]
        return out


class Model1:
    """IBM Model 1 for one direction (tgt generated from src), trained by streamed EM.

    Attributes: ``s_vocab`` (NULL is 0) and ``t_vocab`` (word -> id, by first
    occurrence), ``pairs`` (sorted keys ``s << 32 | t`` of the co-occurring
    pairs) and ``tau`` (tau(t | s) of each pair).
    """

    def __init__(self, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.s_vocab: Dict[str, int] = {NULL: 0}
        self.t_vocab: Dict[str, int] = {}
        self.pairs = np.zeros(0, dtype=np.int64)
        self.tau = np.zeros(0)
        self.index = _PairIndex(self.pairs)

    def _rows(self, src: Corpus, tgt: Corpus, grow: bool = False) -> Iterator[_Rows]:
        for chunk in _chunks(sentence_pairs(src, tgt), self.chunk_rows, _model1_rows):
            yield _Rows(chunk, self.s_vocab, self.t_vocab, grow)

    def fit(self, src: Corpus, tgt: Corpus, iterations: int = 5) -> "Model1":
        """Collect the vocabularies and pairs (one pass), then ``iterations`` EM passes from a uniform table."""
        pending, n_pending = [self.pairs], 0  # sorted distinct keys of the chunks seen
        for rows in self._rows(src, tgt, grow=True):
            pending.append(_merge([rows.key]))
            n_pending += len(pending[-1])
            if n_pending > max(len(pending[0]), self.chunk_rows):  # amortized: merge when the pending doubles
                pending, n_pending = [_merge(pending)], 0
        self.pairs = _merge(pending)
        self.index = _PairIndex(self.pairs)
        self.tau = np.ones(len(self.pairs))  # uniform start: every row of a group equally likely
        for _ in range(iterations):
            counts = np.zeros(len(self.pairs))
            for rows in self._rows(src, tgt):
                index = self.index(rows.key)
                prob = self.tau[index]
                posterior = prob / np.bincount(rows.group, weights=prob, minlength=rows.n_groups)[rows.group]
                np.add.at(counts, index, posterior)  # in corpus order, as one bincount would add them
            # tau(t | s) = c(s, t) / c(s), written over the counts (and the old tau freed first):
            # the arrays over pairs are what grows with a corpus
            self.tau = None
            pair_src = self.pairs >> 32
            totals = np.maximum(np.bincount(pair_src, weights=counts, minlength=len(self.s_vocab)), 1e-300)
            self.tau = np.divide(counts, totals[pair_src], out=counts)
        return self

    def viterbi_chunk(self, chunk: Sequence[Tuple[Sentence, Sentence]]) -> List[Alignment]:
        """The sorted Viterbi links of each sentence pair of ``chunk`` (sentences seen by ``fit``)."""
        links: List[Alignment] = [[] for _ in chunk]
        rows = _Rows(chunk, self.s_vocab, self.t_vocab)
        if rows.n_groups == 0:
            return links
        # the first row with the group's maximum (NULL row first, so ties go to NULL,
        # then to the leftmost source word)
        prob = self.tau[self.index(rows.key)]
        best = np.full(rows.n_groups, -np.inf)
        np.maximum.at(best, rows.group, prob)
        best_rows = np.flatnonzero(prob >= best[rows.group])
        g = rows.group[best_rows]
        first = np.r_[True, g[1:] != g[:-1]]  # groups are contiguous and in order
        best_rows, g = best_rows[first], g[first]
        for k, i, j in zip(rows.group_sent[g].tolist(), (rows.pos[best_rows] - 1).tolist(), rows.group_j[g].tolist()):
            if i >= 0:
                links[k].append((i, j))
        return [sorted(a) for a in links]

    def viterbi(self, src: Corpus, tgt: Corpus) -> Iterator[Alignment]:
        """The Viterbi links of each sentence pair, streamed in chunks."""
        for chunk in _chunks(sentence_pairs(src, tgt), self.chunk_rows, _model1_rows):
            yield from self.viterbi_chunk(chunk)

    def table(self) -> Dict[Tuple[str, str], float]:
        s_names = {i: w for w, i in self.s_vocab.items()}
        t_names = {i: w for w, i in self.t_vocab.items()}
        mask = (1 << 32) - 1
        return {(s_names[int(p) >> 32], t_names[int(p) & mask]): float(v) for p, v in zip(self.pairs, self.tau)}


def translation_table(
    src: Corpus, tgt: Corpus, iterations: int = 5, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Dict[Tuple[str, str], float]:
    """IBM Model 1's tau(t | s) after EM, for every co-occurring (s, t); s may be NULL."""
    return Model1(chunk_rows).fit(src, tgt, iterations).table()


def ibm1(src: Corpus, tgt: Corpus, iterations: int = 5, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> List[Alignment]:
    """Viterbi alignments of IBM Model 1 trained by EM on the corpus (tgt generated from src).

    Args:
        src, tgt: sentences as lists of words (same number of sentences).
        iterations: EM iterations from a uniform table.
        chunk_rows: rows held at once (memory); the result does not depend on it.

    Returns:
        For each sentence, the sorted (i, j) links: target word j is linked to the
        source word i it most probably translates; j gets no link when NULL is best.
    """
    return list(Model1(chunk_rows).fit(src, tgt, iterations).viterbi(src, tgt))


def invert(alignments: Iterable[Alignment]) -> List[Alignment]:
    """Swap the roles of source and target in (i, j) links."""
    return [sorted((j, i) for i, j in a) for a in alignments]


def grow_diag_final_and(forward: Alignment, backward: Alignment, n_src: int, n_tgt: int) -> Alignment:
    """Koehn et al. (2003) symmetrization of two directional alignments of one sentence.

    Start from the intersection; repeatedly add union links adjacent (also
    diagonally) to a link when their source or target word is still unaligned;
    finally add union links whose source and target words are both unaligned
    ("final-and"), forward direction first.
    """
    f, b = set(forward), set(backward)
    union, links = f | b, f & b
    neighbours = [(-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]

    def aligned():
        return {i for i, _ in links}, {j for _, j in links}

    added = True
    while added:
        added = False
        src_aligned, tgt_aligned = aligned()
        for i, j in sorted(links):
            for di, dj in neighbours:
                p = (i + di, j + dj)
                if p in union and p not in links and (p[0] not in src_aligned or p[1] not in tgt_aligned):
                    links.add(p)
                    src_aligned.add(p[0])
                    tgt_aligned.add(p[1])
                    added = True
    for direction in (f, b):
        src_aligned, tgt_aligned = aligned()
        for i, j in sorted(direction):
            if i not in src_aligned and j not in tgt_aligned:
                links.add((i, j))
                src_aligned.add(i)
                tgt_aligned.add(j)
    return sorted(p for p in links if 0 <= p[0] < n_src and 0 <= p[1] < n_tgt)


def iter_align(
    src: Corpus,
    tgt: Corpus,
    iterations: int = 5,
    symmetrize: str = "grow-diag-final-and",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[Tuple[Sentence, Sentence, Alignment]]:
    """(source sentence, target sentence, links) of each sentence pair, streamed: see :func:`align`.

    Trains both directions first (raises ValueError on a bad ``symmetrize`` or
    corpora of different lengths before the first item).
    """
    if symmetrize not in SYMMETRIZE:
        raise ValueError(f"symmetrize must be one of {SYMMETRIZE}, got {symmetrize!r}")
    forward = Model1(chunk_rows).fit(src, tgt, iterations)
    backward = None if symmetrize == "none" else Model1(chunk_rows).fit(tgt, src, iterations)

    def rows(pair):  # both directions' rows, one direction held at a time
        return max(_model1_rows(pair), _model1_rows(pair[::-1]))

    def links():
        for chunk in _chunks(sentence_pairs(src, tgt), chunk_rows, rows):
            fwd = forward.viterbi_chunk(chunk)
            if backward is None:
                yield from ((s, t, f) for (s, t), f in zip(chunk, fwd))
                continue
            bwd = invert(backward.viterbi_chunk([(t, s) for s, t in chunk]))
            for (s, t), f, b in zip(chunk, fwd, bwd):
                if symmetrize == "intersect":
                    yield s, t, sorted(set(f) & set(b))
                else:
                    yield s, t, grow_diag_final_and(f, b, len(s), len(t))

    return links()


def align(
    src: Corpus,
    tgt: Corpus,
    iterations: int = 5,
    symmetrize: str = "grow-diag-final-and",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> List[Alignment]:
    """Word alignments of a parallel corpus learned on itself.

    symmetrize: "none" (IBM 1 source -> target only: each target word has at
    most one link), "intersect" (links both directions agree on) or
    "grow-diag-final-and" (Koehn et al. 2003). chunk_rows: rows held at once
    (memory); the result does not depend on it.
    """
    return [a for _, _, a in iter_align(src, tgt, iterations, symmetrize, chunk_rows)]


def add_links(counts: Dict[str, Dict[str, int]], s: Sentence, t: Sentence, links: Alignment) -> None:
    """Add one sentence's links to ``counts`` (source word -> {target word: links})."""
    for i, j in links:
        row = counts.setdefault(s[i], {})
        row[t[j]] = row.get(t[j], 0) + 1


def link_counts(src: Corpus, tgt: Corpus, alignments: Iterable[Alignment]) -> Dict[str, Dict[str, int]]:
    """count(x aligned to y): source word -> {target word: number of links}."""
    counts: Dict[str, Dict[str, int]] = {}
    for s, t, a in zip(src, tgt, alignments):
        add_links(counts, s, t, a)
    return counts


def aligned_source_types(counts: Dict[str, Dict[str, int]]) -> Set[str]:
    return {x for x, row in counts.items() if sum(row.values()) > 0}
