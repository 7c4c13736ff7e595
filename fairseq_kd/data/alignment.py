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

Implementation: every (sentence, source position incl. NULL, target position)
triple of the corpus is one row of flat numpy arrays, so an EM iteration is a
gather, a grouped sum (np.bincount) and a scatter; memory is
sum over sentences of (|s| + 1) * |t| rows (about 6M for Multi30k).

Alignments are lists of (i, j) pairs per sentence: i indexes the source
words, j the target words, both from 0.
"""
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

Alignment = List[Tuple[int, int]]
NULL = "<NULL>"
SYMMETRIZE = ("none", "intersect", "grow-diag-final-and")


class _Triples:
    """The flat (sentence, i, j) index of a parallel corpus for one direction."""

    def __init__(self, src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]]):
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source and {len(tgt)} target sentences")
        s_vocab: Dict[str, int] = {NULL: 0}
        t_vocab: Dict[str, int] = {}
        s_ids, t_ids, i_pos, j_pos, sent = [], [], [], [], []
        for k, (s, t) in enumerate(zip(src, tgt)):
            if not t:
                continue
            s_idx = np.array([0] + [s_vocab.setdefault(w, len(s_vocab)) for w in s], dtype=np.int64)
            t_idx = np.array([t_vocab.setdefault(w, len(t_vocab)) for w in t], dtype=np.int64)
            m, n = len(s_idx), len(t_idx)
            # rows ordered by target position j, then source position i (NULL = -1 first)
            s_ids.append(np.tile(s_idx, n))
            t_ids.append(np.repeat(t_idx, m))
            i_pos.append(np.tile(np.arange(-1, m - 1), n))
            j_pos.append(np.repeat(np.arange(n), m))
            sent.append(np.full(m * n, k))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
        self.s, self.t, self.i, self.j, self.sent = map(cat, (s_ids, t_ids, i_pos, j_pos, sent))
        self.n_src, self.n_tgt = len(s_vocab), len(t_vocab)
        self.s_vocab, self.t_vocab = s_vocab, t_vocab
        # one group per (sentence, target position): the rows competing for a_j
        new_group = np.r_[len(self.s) > 0, (self.sent[1:] != self.sent[:-1]) | (self.j[1:] != self.j[:-1])]
        self.group = np.cumsum(new_group) - 1  # rows of a group are contiguous
        self.n_groups = int(new_group.sum())
        self.pair = self.s * max(self.n_tgt, 1) + self.t  # (source word, target word) pair id


def _em(src, tgt, iterations):
    """(triples, pair index of each row, tau of each distinct pair) after EM."""
    x = _Triples(src, tgt)
    pairs, pair_index = np.unique(x.pair, return_inverse=True)
    pair_src = pairs // max(x.n_tgt, 1)
    tau = np.ones(len(pairs))  # uniform start: every row of a group equally likely
    for _ in range(iterations):
        prob = tau[pair_index]
        posterior = prob / np.bincount(x.group, weights=prob, minlength=x.n_groups)[x.group]
        counts = np.bincount(pair_index, weights=posterior, minlength=len(pairs))
        totals = np.bincount(pair_src, weights=counts, minlength=x.n_src)
        tau = counts / np.maximum(totals[pair_src], 1e-300)
    x.pairs = pairs
    return x, pair_index, tau


def translation_table(
    src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]], iterations: int = 5
) -> Dict[Tuple[str, str], float]:
    """IBM Model 1's tau(t | s) after EM, for every co-occurring (s, t); s may be NULL."""
    x, _, tau = _em(src, tgt, iterations)
    s_names = {i: w for w, i in x.s_vocab.items()}
    t_names = {i: w for w, i in x.t_vocab.items()}
    n_tgt = max(x.n_tgt, 1)
    return {(s_names[int(p) // n_tgt], t_names[int(p) % n_tgt]): float(v) for p, v in zip(x.pairs, tau)}


def ibm1(src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]], iterations: int = 5) -> List[Alignment]:
    """Viterbi alignments of IBM Model 1 trained by EM on the corpus (tgt generated from src).

    Args:
        src, tgt: sentences as lists of words (same number of sentences).
        iterations: EM iterations from a uniform table.

    Returns:
        For each sentence, the sorted (i, j) links: target word j is linked to the
        source word i it most probably translates; j gets no link when NULL is best.
    """
    x, pair_index, tau = _em(src, tgt, iterations)
    if x.n_groups == 0:
        return [[] for _ in src]
    # Viterbi: the first row with the group's maximum (NULL row first, so ties go to NULL,
    # then to the leftmost source word)
    prob = tau[pair_index]
    best = np.full(x.n_groups, -np.inf)
    np.maximum.at(best, x.group, prob)
    is_best = prob >= best[x.group]
    _, first = np.unique(x.group[is_best], return_index=True)
    rows = np.flatnonzero(is_best)[first]
    links: List[Alignment] = [[] for _ in src]
    for k, i, j in zip(x.sent[rows].tolist(), x.i[rows].tolist(), x.j[rows].tolist()):
        if i >= 0:
            links[k].append((i, j))
    return [sorted(a) for a in links]


def invert(alignments: Sequence[Alignment]) -> List[Alignment]:
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


def align(
    src: Sequence[Sequence[str]],
    tgt: Sequence[Sequence[str]],
    iterations: int = 5,
    symmetrize: str = "grow-diag-final-and",
) -> List[Alignment]:
    """Word alignments of a parallel corpus learned on itself.

    symmetrize: "none" (IBM 1 source -> target only: each target word has at
    most one link), "intersect" (links both directions agree on) or
    "grow-diag-final-and" (Koehn et al. 2003).
    """
    if symmetrize not in SYMMETRIZE:
        raise ValueError(f"symmetrize must be one of {SYMMETRIZE}, got {symmetrize!r}")
    forward = ibm1(src, tgt, iterations)
    if symmetrize == "none":
        return forward
    backward = invert(ibm1(tgt, src, iterations))
    if symmetrize == "intersect":
        return [sorted(set(f) & set(b)) for f, b in zip(forward, backward)]
    return [grow_diag_final_and(f, b, len(s), len(t)) for f, b, s, t in zip(forward, backward, src, tgt)]


def link_counts(
    src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]], alignments: Sequence[Alignment]
) -> Dict[str, Dict[str, int]]:
    """count(x aligned to y): source word -> {target word: number of links}."""
    counts: Dict[str, Dict[str, int]] = {}
    for s, t, a in zip(src, tgt, alignments):
        for i, j in a:
            row = counts.setdefault(s[i], {})
            row[t[j]] = row.get(t[j], 0) + 1
    return counts


def aligned_source_types(counts: Dict[str, Dict[str, int]]) -> Set[str]:
    return {x for x, row in counts.items() if sum(row.values()) > 0}
