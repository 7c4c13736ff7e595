"""fairseq_kd.data.alignment: IBM Model 1 by EM and symmetrization, on hand-built corpora."""
import pytest

from fairseq_kd.data import alignment as A

# a->x, b->y, c->z, with the target order scrambled so position cannot explain it
SRC = [s.split() for s in ["a b", "a c", "b c", "c a b", "b a"]]
TGT = [s.split() for s in ["y x", "z x", "z y", "y x z", "x y"]]
GOLD = [[(0, 1), (1, 0)], [(0, 1), (1, 0)], [(0, 1), (1, 0)], [(0, 2), (1, 1), (2, 0)], [(0, 1), (1, 0)]]


def test_one_em_iteration_by_hand():
    """From a uniform table over {NULL, a, b}: sentence 1 'a b'->'x y' gives each row 1/3,
    sentence 2 'a'->'x' gives NULL and a 1/2; so c(a,x) = 1/3 + 1/2, c(a,y) = 1/3, c(a) = 7/6."""
    table = A.translation_table([["a", "b"], ["a"]], [["x", "y"], ["x"]], iterations=1)
    assert table[("a", "x")] == pytest.approx(5 / 7)
    assert table[("a", "y")] == pytest.approx(2 / 7)
    assert table[("b", "x")] == pytest.approx(1 / 2)
    assert table[(A.NULL, "x")] == pytest.approx(5 / 7)
    for s in ("a", "b", A.NULL):  # tau(.|s) is a distribution
        assert sum(v for (w, _), v in table.items() if w == s) == pytest.approx(1.0)


def test_em_converges_to_the_unambiguous_lexicon():
    table = A.translation_table(SRC, TGT, iterations=20)
    for s, t in (("a", "x"), ("b", "y"), ("c", "z")):
        assert table[(s, t)] > 0.9


@pytest.mark.parametrize("symmetrize", A.SYMMETRIZE)
def test_unambiguous_corpus_is_aligned_exactly(symmetrize):
    assert A.align(SRC, TGT, iterations=10, symmetrize=symmetrize) == GOLD


def test_directions_and_inversion():
    assert A.ibm1(SRC, TGT, 10) == GOLD
    assert A.invert(A.ibm1(TGT, SRC, 10)) == GOLD  # the reverse direction agrees here
    assert A.invert([[(0, 2), (1, 0)]]) == [[(0, 1), (2, 0)]]


def test_grow_diag_final_and_by_hand():
    # intersection {(0,0)}; (1,1) is its diagonal neighbour with both words unaligned,
    # then (1,2) and (2,2) neighbour (1,1) with target 2 / source 2 unaligned.
    assert A.grow_diag_final_and([(0, 0), (1, 1)], [(0, 0), (1, 2), (2, 2)], 3, 3) == [
        (0, 0), (1, 1), (1, 2), (2, 2)]
    # (2,2) is not adjacent to the intersection: only "final-and" adds it.
    assert A.grow_diag_final_and([(0, 0), (2, 2)], [(0, 0)], 3, 3) == [(0, 0), (2, 2)]
    # a union link whose source word is already aligned and not adjacent is not added
    assert A.grow_diag_final_and([(0, 0), (0, 2)], [(0, 0)], 3, 3) == [(0, 0)]


def test_empty_sentences_and_null():
    links = A.align([[], ["a"], ["a", "b"]], [["x"], [], ["x", "y"]], symmetrize="none")
    assert links[0] == [] and links[1] == []  # nothing to link: source or target empty
    with pytest.raises(ValueError, match="2 source and 1 target"):
        A.align([["a"], ["b"]], [["x"]])
    with pytest.raises(ValueError, match="symmetrize"):
        A.align(SRC, TGT, symmetrize="union")


def test_link_counts():
    counts = A.link_counts([["a", "b", "a"]], [["x", "y"]], [[(0, 0), (2, 0), (1, 1)]])
    assert counts == {"a": {"x": 2}, "b": {"y": 1}}
