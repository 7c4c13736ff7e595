"""fairseq-kd-build-prior and the D2GPo prior store (fairseq_kd/data/prior.py)."""
import json
import math
import os

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

import utils
from fairseq_kd import losses
from fairseq_kd.data import array_store, prior

INF = float("inf")
# N(r; 0, 1) at r = 0, 1, 2
PDF = [1 / math.sqrt(2 * math.pi), math.exp(-0.5) / math.sqrt(2 * math.pi), math.exp(-2) / math.sqrt(2 * math.pi)]


def _dictionary(path, words):
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    d.save(str(path))
    return Dictionary.load(str(path))  # as fairseq reads it back


def _build_cmd(*args):
    """The real console command (a subprocess: slow, fairseq imports in ~5 s)."""
    return utils.run([utils.command("fairseq-kd-build-prior"), *args], check=False)


def _build(capsys, *args):
    """cli_main in this process: (exit code, stdout, stderr)."""
    from fairseq_kd.cli import build_prior

    try:
        build_prior.cli_main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gaussian_rank_weights_golden():
    assert losses.gaussian_rank_weights(3, 1.0).tolist() == pytest.approx(PDF, rel=1e-12)
    w2 = losses.gaussian_rank_weights(4, 2.0)
    expected = [math.exp(-r * r / 8) / (2 * math.sqrt(2 * math.pi)) for r in range(4)]
    assert w2.tolist() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        losses.gaussian_rank_weights(0)


def test_tiny_table_hand_computed(tmp_path):
    """4 words in 2-D, one dictionary word without a vector, k = 3.

    Cosines: a.b = .707, a.c = .196, a.d = -.995, b.c = .832, b.d = -.633, c.d = -.098,
    so the ranks are a: a b c, b: b c a, c: c b a, d: d c b."""
    d = _dictionary(tmp_path / "dict.txt", ["a", "b", "c", "d", "e"])
    vectors = tmp_path / "vec.txt"
    vectors.write_text("5 2\na 1 0\nb 1 1\nc 0.2 1\nd -1 0.1\nzzz 3 3\n")
    out = tmp_path / "prior"
    proc = _build_cmd("--dict", tmp_path / "dict.txt", "--word-vectors", vectors, "--out", out,
                      "--topk", "3", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert "1 of 5 dictionary words have no embedding" in proc.stdout + proc.stderr
    assert "build-prior: 9 words, k=3" in proc.stdout

    header, arrays = array_store.open_store(str(out), prior.KIND)
    assert header["k"] == 3 and header["sigma"] == 1.0 and header["vocab_size"] == len(d) == 9
    assert header["dictionary_checksum"] == array_store.dictionary_checksum(d)
    assert header["embedding"] == {
        "source": "word_vectors", "sha256": array_store.file_checksum(str(vectors)), "dim": 2,
    }
    assert header["n_without_embedding"] == 1
    ids, weights = np.asarray(arrays["ids"]), np.asarray(arrays["weights"])
    names = lambda row: [d[i] for i in row]  # noqa: E731
    assert names(ids[d.index("a")]) == ["a", "b", "c"]
    assert names(ids[d.index("b")]) == ["b", "c", "a"]
    assert names(ids[d.index("c")]) == ["c", "b", "a"]
    assert names(ids[d.index("d")]) == ["d", "c", "b"]
    for w in "abcd":
        assert weights[d.index(w)].tolist() == pytest.approx(PDF, rel=1e-6)
    # no vector, or a special symbol: only itself, the rest has weight -inf
    for w in ("e", "</s>", "<pad>", "<unk>", "<s>"):
        i = d.index(w)
        assert ids[i].tolist() == [i, i, i]
        assert weights[i].tolist() == [pytest.approx(PDF[0], rel=1e-6), -INF, -INF]
    assert os.path.exists(out / "command.json")


def test_blocks_and_full_vocabulary_equal_one_dense_ranking(tmp_path):
    """Block size does not change the result; with k = V each row is a full argsort."""
    V, dim = 37, 6
    torch.manual_seed(0)
    emb = torch.randn(V, dim)
    cand = np.ones(V, dtype=bool)
    cand[:4] = False
    h1 = prior.build(str(tmp_path / "b1"), emb, cand, V, 1.5, {}, dtype="float32", block_size=1)
    h2 = prior.build(str(tmp_path / "b2"), emb, cand, V, 1.5, {}, dtype="float32", block_size=512)
    assert h1 == h2
    _, a1 = array_store.open_store(str(tmp_path / "b1"))
    _, a2 = array_store.open_store(str(tmp_path / "b2"))
    assert np.array_equal(a1["ids"], a2["ids"]) and np.array_equal(a1["weights"], a2["weights"])

    unit = emb / emb.norm(dim=-1, keepdim=True)
    sims = (unit @ unit.T).numpy()
    gauss = losses.gaussian_rank_weights(V, 1.5).float().numpy()
    for v in range(4, V):
        others = [u for u in np.argsort(-sims[v], kind="stable") if u != v and cand[u]]
        assert a1["ids"][v].tolist()[: 1 + len(others)] == [v] + others
        assert np.allclose(a1["weights"][v][: 1 + len(others)], gauss[: 1 + len(others)])
        assert np.all(np.isneginf(a1["weights"][v][1 + len(others):]))


def test_interrupted_build_resumes_to_the_same_store(tmp_path):
    V = 20
    emb = torch.randn(V, 4, generator=torch.Generator().manual_seed(1))
    cand = np.ones(V, dtype=bool)

    def dies_after_two_blocks(blocks):
        for n, block in enumerate(blocks):
            if n == 2:
                raise KeyboardInterrupt
            yield block

    with pytest.raises(KeyboardInterrupt):
        prior.build(str(tmp_path / "p"), emb, cand, 5, 1.0, {"x": 1}, block_size=4, progress=dies_after_two_blocks)
    with pytest.raises(array_store.StoreError, match="unfinished store"):
        prior.load(str(tmp_path / "p"), None)
    with pytest.raises(array_store.StoreError, match="other settings"):
        prior.build(str(tmp_path / "p"), emb, cand, 5, 2.0, {"x": 1}, block_size=4)
    prior.build(str(tmp_path / "p"), emb, cand, 5, 1.0, {"x": 1}, block_size=4)
    prior.build(str(tmp_path / "fresh"), emb, cand, 5, 1.0, {"x": 1}, block_size=4)
    _, a = array_store.open_store(str(tmp_path / "p"))
    _, b = array_store.open_store(str(tmp_path / "fresh"))
    assert np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["weights"], b["weights"])


def test_checkpoint_source(tmp_path, capsys):
    """A fairseq checkpoint's decoder.embed_tokens (saved like fairseq, read safely)."""
    d = _dictionary(tmp_path / "dict.txt", ["x", "y", "z"])
    emb = torch.tensor([[0.0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [0, 1], [1, 0.9]])
    torch.save({"model": {"decoder.embed_tokens.weight": emb}}, tmp_path / "model.pt")
    code, _, err = _build(capsys, "--dict", tmp_path / "dict.txt", "--checkpoint", tmp_path / "model.pt",
                          "--out", tmp_path / "prior", "--topk", "2")
    assert code == 0, err
    _, arrays = array_store.open_store(str(tmp_path / "prior"))
    assert [d[i] for i in arrays["ids"][d.index("x")]] == ["x", "z"]
    assert [d[i] for i in arrays["ids"][d.index("y")]] == ["y", "z"]
    assert [d[i] for i in arrays["ids"][d.index("z")]] == ["z", "x"]  # cos .74 vs .67
    assert arrays["weights"].dtype == np.float16

    # another vocabulary size: refused, nothing written
    torch.save({"model": {"decoder.embed_tokens.weight": emb[:5]}}, tmp_path / "other.pt")
    code, _, err = _build(capsys, "--dict", tmp_path / "dict.txt", "--checkpoint", tmp_path / "other.pt",
                          "--out", tmp_path / "p2")
    assert code == 2
    assert "decoder embeddings have 5 rows, the dictionary has 7 symbols" in err
    assert not (tmp_path / "p2" / "header.json").exists()


def test_bert_source(tmp_path, capsys, caplog):
    """WordPiece lookup: BPE marker removed, lowercased (uncased vocab), pieces averaged."""
    from safetensors.torch import save_file

    bert = tmp_path / "bert"
    bert.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "dog", "##s", "cat", "run"]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    table = torch.arange(len(vocab) * 3, dtype=torch.float32).view(len(vocab), 3)
    save_file({"embeddings.word_embeddings.weight": table}, str(bert / "model.safetensors"))
    d = _dictionary(tmp_path / "dict.txt", ["dog", "dogs", "Cat@@", "xyz"])

    from fairseq_kd.cli.build_prior import bert_embeddings

    emb, found = bert_embeddings(str(bert), d)
    assert found.tolist() == [False] * 4 + [True, True, True, False]
    assert torch.equal(emb[d.index("dog")], table[4])
    assert torch.equal(emb[d.index("dogs")], (table[4] + table[5]) / 2)
    assert torch.equal(emb[d.index("Cat@@")], table[6])

    code, _, err = _build(capsys, "--dict", tmp_path / "dict.txt", "--bert", bert, "--out", tmp_path / "prior")
    assert code == 0, err
    assert "1 of 4 dictionary words have no embedding in the bert source (e.g. 'xyz')" in caplog.text
    header = json.loads((tmp_path / "prior" / "header.json").read_text())
    assert header["k"] == 8  # --topk 256 capped at V
    assert header["embedding"]["source"] == "bert"


def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path, capsys):
    _dictionary(tmp_path / "dict.txt", ["a", "b"])
    bad = tmp_path / "bad.vec"
    bad.write_text("a 1 2\nb 1\n")
    code, _, err = _build(capsys, "--dict", tmp_path / "dict.txt", "--word-vectors", bad, "--out", tmp_path / "p")
    assert code == 2
    assert f"{bad}:2: 1 values, earlier lines have 2" in err
    assert not (tmp_path / "p").exists()

    code, _, err = _build(capsys, "--dict", tmp_path / "nope.txt", "--word-vectors", bad, "--out", tmp_path / "p")
    assert code == 2 and f"--dict not found: {tmp_path / 'nope.txt'}" in err

    good = tmp_path / "good.vec"
    good.write_text("a 1 2\nb 2 1\n")
    assert _build(capsys, "--dict", tmp_path / "dict.txt", "--word-vectors", good, "--out", tmp_path / "p")[0] == 0
    code, _, err = _build(capsys, "--dict", tmp_path / "dict.txt", "--word-vectors", good, "--out", tmp_path / "p")
    assert code == 2 and "already holds a finished store" in err
