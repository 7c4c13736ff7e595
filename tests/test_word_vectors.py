"""fairseq_kd/data/word_vectors.py: the one reader of word2vec / fastText / GloVe text files."""
import pytest

from fairseq_kd.data.word_vectors import read_word_vectors

SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c"]


@pytest.mark.parametrize("header", ["3 2\n", ""])  # word2vec / fastText, GloVe
def test_reads_the_dictionarys_words_in_both_formats(tmp_path, header):
    path = tmp_path / "v.txt"
    path.write_text(header + "a 1 2\nzzz 5 5 \nc -1 0.5\n\na 9 9\n")
    vectors, found, n = read_word_vectors(str(path), SYMBOLS)
    assert n == 4 and vectors.shape == (7, 2)
    assert found.tolist() == [False] * 4 + [True, False, True]
    assert vectors[4].tolist() == [1, 2]  # a word listed twice keeps its first vector
    assert vectors[6].tolist() == [-1, 0.5] and vectors[5].tolist() == [0, 0]
    assert read_word_vectors(str(path), SYMBOLS, dim=2)[2] == 4


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1 2\nb 1\n")
    with pytest.raises(ValueError, match=r"v.txt:2: 1 values, earlier lines have 2"):
        read_word_vectors(str(path), SYMBOLS)
    with pytest.raises(ValueError, match=r"v.txt:1: vector of 'a' has 2 values, --embed-dim is 3"):
        read_word_vectors(str(path), SYMBOLS, 3, "--embed-dim")
    path.write_text("a 1 x\n")
    with pytest.raises(ValueError, match=r"v.txt:1: non-numeric vector for 'a'"):
        read_word_vectors(str(path), SYMBOLS)
    path.write_text("a 1 2\nlonely\n")
    with pytest.raises(ValueError, match=r"v.txt:2: expected 'word v1 ... vd'"):
        read_word_vectors(str(path), SYMBOLS)
    path.write_text("2 3\n")
    with pytest.raises(ValueError, match="no word vectors found"):
        read_word_vectors(str(path), SYMBOLS)
    path.write_bytes(b"2 3\n\xff\xfe\x00\x01 binary\n")
    with pytest.raises(ValueError, match="not UTF-8 text.*binary word2vec"):
        read_word_vectors(str(path), SYMBOLS)
