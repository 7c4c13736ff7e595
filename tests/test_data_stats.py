"""fairseq-kd-data-stats: complexity C(d) and faithfulness F(d) (Zhou et al., ICLR 2020)."""
import gzip
import json
import math
import os
import random
import re

import numpy as np
import pytest

import utils
from fairseq_kd.cli import data_stats as S
from fairseq_kd.data import alignment as A

# Hand-built corpora with hand-given alignments: a -> {p: 2, q: 2}, b -> {r: 2} in
# the real corpus; a -> {p: 4}, b -> {r: 2} in the distilled one.
SRC = [s.split() for s in ["a b", "a", "a b", "a"]]
REAL = [s.split() for s in ["p r", "q", "q r", "p"]]
DISTILLED = [s.split() for s in ["p r", "p", "p r", "p"]]
LINKS = [[(0, 0), (1, 1)], [(0, 0)], [(0, 0), (1, 1)], [(0, 0)]]


def _counts(tgt):
    return A.link_counts(SRC, tgt, LINKS)


def test_complexity_by_hand():
    real = _counts(REAL)
    assert real == {"a": {"p": 2, "q": 2}, "b": {"r": 2}}
    assert S.conditional_entropies(real) == pytest.approx({"a": math.log(2), "b": 0.0})
    assert S.complexity(real, "types") == pytest.approx(math.log(2) / 2)  # (ln 2 + 0) / 2 types
    assert S.complexity(real, "tokens") == pytest.approx(4 * math.log(2) / 6)  # 4 links of a, 2 of b
    assert S.complexity(_counts(DISTILLED)) == 0.0  # one translation per source word
    assert S.complexity({"a": {y: 1 for y in "pqrs"}}) == pytest.approx(math.log(4))


def test_faithfulness_by_hand():
    eps, V = 0.1, 3  # target types linked in either corpus: p, q, r
    p_a = {"p": (1 - eps) * 1.0 + eps / V, "q": eps / V}  # smoothed p_distilled(.|a)
    kl_a = 0.5 * math.log(0.5 / p_a["p"]) + 0.5 * math.log(0.5 / p_a["q"])
    kl_b = math.log(1.0 / ((1 - eps) + eps / V))
    real, distilled = _counts(REAL), _counts(DISTILLED)
    assert S.faithfulness(real, distilled, eps) == pytest.approx((kl_a + kl_b) / 2)
    assert S.faithfulness(real, distilled, eps, "tokens") == pytest.approx((4 * kl_a + 2 * kl_b) / 6)
    # Identity: a corpus against itself costs only the smoothing, -log(1 - eps).
    # Identity: a corpus against itself costs only the smoothing. For b (one
    # translation): -log(1 - eps + eps/V); for a: sum_y 0.5 log(0.5 / (0.5 (1 - eps) + eps/V)).
    self_a = math.log(0.5 / (0.5 * (1 - eps) + eps / V))
    self_b = -math.log(1 - eps + eps / V)
    assert S.faithfulness(real, real, eps) == pytest.approx((self_a + self_b) / 2)
    assert 0 < S.faithfulness(real, real, eps) < -math.log(1 - eps)
    # A source word the distilled corpus never aligns gets the uniform 1/|V_y|.
    assert S.faithfulness({"c": {"s": 1}}, {"a": {"p": 1, "q": 1}}, eps) == pytest.approx(math.log(3))
    with pytest.raises(ValueError):
        S.faithfulness(real, distilled, 0.0)


def test_cli_on_text_files_matches_direct_computation(tmp_path, capsys):
    src = [s.split() for s in ["a b c", "c a", "b c a", "a b", "c b"]]
    real = [s.split() for s in ["x y z", "z x", "y u x", "x y", "w y"]]
    dist = [s.split() for s in ["x y z", "z x", "y z x", "x y", "z y"]]
    for name, corpus in (("train.src", src), ("train.tgt.gold", real), ("train.tgt", dist)):
        (tmp_path / name).write_text("".join(" ".join(s) + "\n" for s in corpus))
    (tmp_path / "distill.train.json").write_text(json.dumps({"source_lang": "src", "target_lang": "tgt"}))
    out = tmp_path / "stats.json"
    S.cli_main([str(tmp_path), "--iterations", "8", "--symmetrize", "intersect", "--out", str(out)])
    result = json.loads(out.read_text())
    expected = {}
    for name, tgt in (("real", real), ("distilled", dist)):
        expected[name] = A.link_counts(src, tgt, A.align(src, tgt, 8, "intersect"))
        assert result[name]["complexity"] == pytest.approx(S.complexity(expected[name]))
        assert result[name]["sentences"] == 5
    assert result["faithfulness"] == pytest.approx(S.faithfulness(expected["real"], expected["distilled"]))
    assert result["distilled"]["complexity"] < result["real"]["complexity"]
    assert "C(real)" in capsys.readouterr().out
    assert (tmp_path / "stats.json.command.json").exists()
    # Mismatched line counts are a clear error naming both files.
    (tmp_path / "short.tgt").write_text("x\n")
    with pytest.raises(SystemExit):
        S.cli_main(["--source", str(tmp_path / "train.src"), "--target", str(tmp_path / "short.tgt")])
    err = capsys.readouterr().err
    assert "train.src has 5 lines" in err and "short.tgt has 1" in err


def test_console_command_and_missing_directory(tmp_path):
    proc = utils.run([utils.command("fairseq-kd-data-stats"), str(tmp_path)], check=False)
    assert proc.returncode == 2 and "distill.train.json not found" in proc.stderr


def _tokenize(line):
    return " ".join(re.findall(r"\w+|[^\w\s]", line.lower()))


@pytest.mark.skipif(not os.environ.get("FAIRSEQ_KD_DATA"), reason="FAIRSEQ_KD_DATA (real data) is not set")
def test_beam_distilled_multi30k_is_less_complex(tmp_path):
    """Zhou et al.'s main observation: a beam-search teacher's output has lower C(d)
    than the real targets. Teacher: a tiny Transformer trained here on 2k pairs
    for 150 updates; it is weak (corpus BLEU about 1.5 against the references, repetitive
    output), so this checks the pipeline on real data more than the paper's claim.
    Measured: C(real) 0.567, C(distilled) 0.254 nats (benchmarks/results_seqkd.md)."""
    root = os.path.join(os.environ["FAIRSEQ_KD_DATA"], "multi30k")
    (tmp_path / "text").mkdir()
    for lang in ("de", "en"):
        with gzip.open(os.path.join(root, f"train.{lang}.gz"), "rt", encoding="utf-8") as f:
            lines = [_tokenize(next(f)) for _ in range(2000)]
        (tmp_path / "text" / f"train.{lang}").write_text("\n".join(lines) + "\n")
    data = utils.preprocess(str(tmp_path / "text"), str(tmp_path / "bin"), "de", "en", ["--joined-dictionary"])
    arch = [*utils.TINY_TRANSFORMER, "--share-all-embeddings"]
    utils.train(data, str(tmp_path / "teacher"), arch=arch, max_update=150, extra=["--max-tokens", "2000"])
    utils.distill_corpus(data, str(tmp_path / "teacher" / "checkpoint_last.pt"), str(tmp_path / "kd"),
                         ["--beam", "4", "--remove-bpe", "none", "--max-len-a", "1.2", "--max-len-b", "10"])
    out = tmp_path / "stats.json"
    S.cli_main([str(tmp_path / "kd"), "--remove-bpe", "none", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["real"]["sentences"] == result["distilled"]["sentences"] == 2000
    assert result["distilled"]["complexity"] < result["real"]["complexity"]
    assert result["faithfulness"] > 0


# ------------------------------------------------ streamed EM against the in-memory reference
# The previous implementation of fairseq_kd.data.alignment (every (sentence, i, j) row of the
# corpus in memory at once), copied here as the reference the streamed, chunked EM must equal.
def _reference_em(src, tgt, iterations):
    s_vocab, t_vocab = {A.NULL: 0}, {}
    s_ids, t_ids, i_pos, j_pos, sent = [], [], [], [], []
    for k, (s, t) in enumerate(zip(src, tgt)):
        if not t:
            continue
        s_idx = np.array([0] + [s_vocab.setdefault(w, len(s_vocab)) for w in s], dtype=np.int64)
        t_idx = np.array([t_vocab.setdefault(w, len(t_vocab)) for w in t], dtype=np.int64)
        m, n = len(s_idx), len(t_idx)
        s_ids.append(np.tile(s_idx, n))
        t_ids.append(np.repeat(t_idx, m))
        i_pos.append(np.tile(np.arange(-1, m - 1), n))
        j_pos.append(np.repeat(np.arange(n), m))
        sent.append(np.full(m * n, k))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    s_ids, t_ids, i_pos, j_pos, sent = map(cat, (s_ids, t_ids, i_pos, j_pos, sent))
    n_src, n_tgt = len(s_vocab), max(len(t_vocab), 1)
    new_group = np.r_[len(s_ids) > 0, (sent[1:] != sent[:-1]) | (j_pos[1:] != j_pos[:-1])]
    group = np.cumsum(new_group) - 1
    n_groups = int(new_group.sum())
    pairs, pair_index = np.unique(s_ids * n_tgt + t_ids, return_inverse=True)
    pair_src = pairs // n_tgt
    tau = np.ones(len(pairs))
    for _ in range(iterations):
        prob = tau[pair_index]
        posterior = prob / np.bincount(group, weights=prob, minlength=n_groups)[group]
        counts = np.bincount(pair_index, weights=posterior, minlength=len(pairs))
        totals = np.bincount(pair_src, weights=counts, minlength=n_src)
        tau = counts / np.maximum(totals[pair_src], 1e-300)
    names_s = {i: w for w, i in s_vocab.items()}
    names_t = {i: w for w, i in t_vocab.items()}
    table = {(names_s[int(p) // n_tgt], names_t[int(p) % n_tgt]): float(v) for p, v in zip(pairs, tau)}
    links = [[] for _ in src]
    if n_groups:
        prob = tau[pair_index]
        best = np.full(n_groups, -np.inf)
        np.maximum.at(best, group, prob)
        is_best = prob >= best[group]
        _, first = np.unique(group[is_best], return_index=True)
        rows = np.flatnonzero(is_best)[first]
        for k, i, j in zip(sent[rows].tolist(), i_pos[rows].tolist(), j_pos[rows].tolist()):
            if i >= 0:
                links[k].append((i, j))
    return table, [sorted(a) for a in links]


def _reference_align(src, tgt, iterations, symmetrize):
    forward = _reference_em(src, tgt, iterations)[1]
    if symmetrize == "none":
        return forward
    backward = A.invert(_reference_em(tgt, src, iterations)[1])
    if symmetrize == "intersect":
        return [sorted(set(f) & set(b)) for f, b in zip(forward, backward)]
    return [A.grow_diag_final_and(f, b, len(s), len(t)) for f, b, s, t in zip(forward, backward, src, tgt)]


def _random_corpus(seed, n, vocab=6, max_len=6):
    """Small vocabularies and short sentences, so that tied probabilities are common; empty sentences too."""
    rng = random.Random(seed)
    sentence = lambda side: [f"{side}{rng.randrange(vocab)}" for _ in range(rng.randrange(max_len))]  # noqa: E731
    return [sentence("s") for _ in range(n)], [sentence("t") for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_streamed_em_equals_the_in_memory_reference(seed):
    """Tables and links bit for bit, for any chunk size, one sentence a chunk included."""
    src, tgt = _random_corpus(seed, 40)
    table = _reference_em(src, tgt, 4)[0]
    for chunk_rows in (1, 9, 64, A.DEFAULT_CHUNK_ROWS):
        assert A.translation_table(src, tgt, 4, chunk_rows=chunk_rows) == table
        for symmetrize in A.SYMMETRIZE:
            assert A.align(src, tgt, 4, symmetrize, chunk_rows=chunk_rows) == _reference_align(src, tgt, 4, symmetrize)


def test_rows_held_at_once_never_exceed_chunk_rows(monkeypatch):
    """The bound on memory: no more than chunk_rows alignment rows at a time, however long the
    corpus (here 10x longer), while a single in-memory pass would hold all of them."""
    held = []
    rows_class = A._Rows

    def counting_rows(*args, **kwargs):
        rows = rows_class(*args, **kwargs)
        held.append(len(rows))
        return rows

    monkeypatch.setattr(A, "_Rows", counting_rows)
    src, tgt = _random_corpus(0, 30)
    total = sum((len(s) + 1) * len(t) for s, t in zip(src, tgt))
    for scale in (1, 10):
        held.clear()
        links = A.align(src * scale, tgt * scale, 3, chunk_rows=40)
        assert links == _reference_align(src * scale, tgt * scale, 3, "grow-diag-final-and")
        assert 0 < max(held) <= 40 < total and sum(held) > scale * total  # many chunks, each bounded


def test_cli_streams_text_files_and_equals_the_reference(tmp_path):
    """The command on text files (tiny chunks, subword joining, --max-sentences) gives the
    reference alignments' C and F."""
    src, real = _random_corpus(5, 60)
    dist = [t[:2] for t in real]
    bpe = lambda s: " ".join(w[:1] + "@@ " + w[1:] if len(w) > 1 else w for w in s)  # noqa: E731
    for name, corpus in (("src", src), ("real", real), ("dist", dist)):
        (tmp_path / name).write_text("".join(bpe(s) + "\n" for s in corpus))
    out = tmp_path / "stats.json"
    S.cli_main(["--source", str(tmp_path / "src"), "--target", str(tmp_path / "real"),
                "--distilled", str(tmp_path / "dist"), "--max-sentences", "50", "--iterations", "3",
                "--chunk-rows", "17", "--out", str(out)])
    result = json.loads(out.read_text())
    src, real, dist = src[:50], real[:50], dist[:50]
    counts = {}
    for name, tgt in (("real", real), ("distilled", dist)):
        links = _reference_align(src, tgt, 3, "grow-diag-final-and")
        counts[name] = A.link_counts(src, tgt, links)
        assert result[name]["complexity"] == pytest.approx(S.complexity(counts[name]), rel=1e-12, abs=1e-12)
        assert result[name]["sentences"] == 50
        assert result[name]["links"] == sum(map(len, links))
        assert result[name]["source_tokens"] == sum(map(len, src))
        assert result[name]["target_tokens"] == sum(map(len, tgt))
    assert result["faithfulness"] == pytest.approx(S.faithfulness(counts["real"], counts["distilled"]), rel=1e-12)


def test_distill_json_without_source_lang_is_a_one_line_error(tmp_path):
    (tmp_path / "train.en.gold").write_text("x\n")
    (tmp_path / "train.en").write_text("x\n")
    meta = tmp_path / "distill.train.json"
    meta.write_text(json.dumps({"subset": "train", "target_lang": "en"}))
    out = tmp_path / "stats.json"
    proc = utils.run([utils.command("fairseq-kd-data-stats"), str(tmp_path), "--out", str(out)], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("fairseq-kd-data-stats: error: ")
    assert str(meta) in errors[0] and '"source_lang"' in errors[0] and "target_lang\" field" not in errors[0]
    assert "add it" in errors[0] and "--source" in errors[0]  # the fixes
    assert not out.exists()
