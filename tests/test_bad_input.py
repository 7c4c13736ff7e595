"""Every bad input to a fairseq-kd-* command is ONE line on stderr naming the problem
and the fix, exit status 2, no traceback, and nothing that reads as finished.

One parametrized test runs each console script of setup.py against the bad inputs
that make sense for it (a teacher case only where the command takes a checkpoint,
a store case only where it reads or resumes a store):

- ``missing`` / ``empty`` / ``directory``: a file argument that does not exist, has
  0 bytes, or is a directory;
- ``truncated`` / ``corrupt_header`` / ``foreign_store``: a store with a cut array,
  a cut ``header.json``, or made for another split (for a command that writes a
  store: an unfinished store at ``--out`` made with other settings);
- ``not_checkpoint``: a teacher that is a PyTorch file but no fairseq checkpoint
  (a bare state dict); ``refused_type``: a fairseq checkpoint that also pickles a
  type safe loading refuses;
- ``bad_option``: a nonsensical option value of the right type (``--beam 0``).

The error line must name the bad input (its path, or the option). stderr may also
hold log records that libraries emit while being imported, before the command has
set up logging (``INFO:fairseq.tasks.text_to_speech:...``, logging's default
format): those are not counted; the command's own log records go to stdout.
"""
import fractions
import os
import re
import shutil

import numpy as np
import pytest
import torch

import utils

COMMANDS = ("dump-soft-labels", "bert-tokenize", "distill-corpus", "data-stats", "evaluate", "merge-shards",
            "dump-logits", "augment", "build-prior")
TEACHER_CASES = ("missing", "empty", "directory", "not_checkpoint", "refused_type", "bad_option")
FILE_CASES = ("missing", "empty", "directory", "bad_option")
CASES = {
    "dump-soft-labels": TEACHER_CASES,
    "bert-tokenize": FILE_CASES,
    "distill-corpus": TEACHER_CASES,
    "data-stats": FILE_CASES + ("corrupt_header",),
    "evaluate": TEACHER_CASES,
    "merge-shards": ("missing", "empty", "directory", "truncated", "corrupt_header", "foreign_store"),
    "dump-logits": TEACHER_CASES,
    "augment": FILE_CASES,
    "build-prior": TEACHER_CASES + ("foreign_store",),
}
# Log records of imported libraries in logging's default format (LEVEL:logger:message).
IMPORT_LOG = re.compile(r"^(DEBUG|INFO):[\w.]+:")


def test_every_command_of_setup_py_is_covered():
    import ast

    tree = ast.parse(open(os.path.join(utils.REPO, "setup.py")).read())
    commands = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMMANDS")
    assert sorted(commands) == sorted(f"fairseq-kd-{c}" for c in COMMANDS)


# ------------------------------------------------------------------ inputs
def _soft_label_parts(out: str, splits=("train", "train")) -> None:
    """A 2-shard soft-label dump of a made-up 5-sentence split, as the shards leave it
    (``out.parts/part-0000I-of-00002``); part I is made for split ``splits[I]``."""
    from fairseq.data import Dictionary

    from fairseq_kd.data import array_store, parts, soft_labels
    from fairseq_kd.data.shards import shard_range

    dictionary = Dictionary()
    for word in ("a", "b", "c"):
        dictionary.add_symbol(word)
    sizes = np.array([3, 2, 4, 1, 2])
    for shard_id, split in enumerate(splits):
        start, end = shard_range(sizes, 2, shard_id)
        header = soft_labels.make_header(split, 2, 1, dictionary, sizes, "0" * 64, num_shards=2,
                                         shard_id=shard_id, sentence_range=(start, end))
        store = soft_labels.create_or_resume(parts.part_path(out, 2, shard_id), header, sizes)
        store["ids"][:] = 4
        store["logits"][:] = 1.0
        store.mark_done(slice(None))
        array_store.finish(store)


@pytest.fixture(scope="module")
def x(tiny_data, tiny_teacher, tmp_path_factory):
    """The good and bad inputs every case draws from (read-only)."""
    root = tmp_path_factory.mktemp("bad_input")
    paths = {"data": tiny_data, "teacher": tiny_teacher, "dict": os.path.join(tiny_data, "dict.tgt.txt"),
             "missing": str(root / "missing.pt"), "empty": str(root / "empty.pt"),
             "directory": str(root / "a_directory")}
    open(paths["empty"], "w").close()
    os.makedirs(paths["directory"])
    paths["not_checkpoint"] = str(root / "state_dict.pt")  # what a Hugging Face pytorch_model.bin holds
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, paths["not_checkpoint"])
    state = torch.load(tiny_teacher, weights_only=False)  # a fixture this test wrote itself
    state["extra_state"]["surprise"] = fractions.Fraction(1, 3)
    paths["refused_type"] = str(root / "refused.pt")
    torch.save(state, paths["refused_type"])

    text = utils.make_copy_task(str(root / "text"), n_train=20, n_valid=5, n_test=5)
    paths["src"], paths["tgt"] = os.path.join(text, "train.src"), os.path.join(text, "train.tgt")
    paths["vocab"] = str(root / "vocab.txt")
    with open(paths["vocab"], "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"a{i}" for i in range(12)]) + "\n")
    paths["vectors"] = str(root / "vectors.txt")
    with open(paths["vectors"], "w") as f:
        f.writelines(f"b{i} {i % 3} {i % 5 + 1}\n" for i in range(12))
    distilled = root / "distilled"  # a fairseq-kd-distill-corpus output whose summary is cut
    distilled.mkdir()
    (distilled / "distill.train.json").write_text('{"source_lang": "src", "target_')
    paths["distilled"], paths["distill_json"] = str(distilled), str(distilled / "distill.train.json")

    cls_text = utils.make_classification_task(str(root / "cls_text"), n_train=20, n_valid=8)
    paths["cls_data"] = utils.preprocess_classification(cls_text, str(root / "cls_bin"))

    _soft_label_parts(str(root / "parts" / "store"))
    _soft_label_parts(str(root / "foreign_parts" / "store"), splits=("train", "valid"))
    paths["parts"], paths["foreign_parts"] = str(root / "parts" / "store.parts"), str(root / "foreign_parts" / "store.parts")
    return paths


def _merge(x, out, case):
    """merge-shards OUT, OUT.parts holding the parts spoiled as ``case`` says."""
    store = str(out / "store")
    if case != "missing":
        shutil.copytree(x["foreign_parts" if case == "foreign_store" else "parts"], store + ".parts")
    part = os.path.join(store + ".parts", "part-00001-of-00002")
    named = {"missing": store, "foreign_store": "part-00001-of-00002"}.get(case)
    if case == "empty":
        named = os.path.join(part, "offsets.npy")
        open(named, "w").close()
    elif case == "directory":
        named = os.path.join(part, "header.json")
        os.remove(named)
        os.mkdir(named)
    elif case == "truncated":  # the last row cut off (a copy that stopped early)
        named = os.path.join(part, "ids.npy")
        with open(named, "rb+") as f:
            f.truncate(os.path.getsize(named) - 8)
    elif case == "corrupt_header":
        named = os.path.join(part, "header.json")
        with open(named, "rb+") as f:
            f.truncate(os.path.getsize(named) // 2)
    return [store], named, [os.path.join(store, "header.json")]


def _scenario(command, case, x, out):
    """(arguments, what the error line must name, paths that must not exist afterwards)."""
    def teacher_command(base, finished, option):
        if case == "bad_option":  # a good teacher, a bad option
            return [*base, "--path", x["teacher"], *option], option[0], finished
        return [*base, "--path", x[case]], x[case], finished

    if command == "dump-soft-labels":
        return teacher_command([x["data"], "--out", out / "store", "--cpu"], [out / "store" / "header.json"],
                               ("--topk", "0"))
    if command == "distill-corpus":
        return teacher_command([x["data"], "--subset", "valid", "--out", out / "d", "--cpu"],
                               [out / "d" / "distill.valid.json"], ("--beam", "0"))
    if command == "evaluate":
        return teacher_command([x["data"], "--cpu", "--latency-sentences", "0", "--results-path", out / "r"],
                               [out / "r" / "scores.json"], ("--beam", "0"))
    if command == "dump-logits":
        return teacher_command(["--data", x["cls_data"], "--split", "valid", "--out", out / "l", "--cpu"],
                               [out / "l" / "header.json"], ("--batch-size", "0"))
    if command == "build-prior":
        finished = [out / "p" / "header.json"]
        if case in ("not_checkpoint", "refused_type"):
            return ["--dict", x["dict"], "--checkpoint", x[case], "--out", out / "p"], x[case], finished
        base = ["--word-vectors", x["vectors"], "--out", out / "p"]
        if case == "bad_option":
            return ["--dict", x["dict"], *base, "--topk", "0"], "--topk", finished
        if case == "foreign_store":  # an unfinished prior of other settings at --out
            from fairseq_kd.data import array_store

            array_store.create(str(out / "p"), {"kind": "d2gpo_prior", "k": 99}, {"ids": ((2, 2), "int32")}, 2)
            return ["--dict", x["dict"], *base], str(out / "p"), finished
        return ["--dict", x[case], *base], x[case], finished
    if command == "bert-tokenize":
        finished = [out / "wp.txt"]
        if case == "empty":
            return [x["src"], "--vocab", x["empty"], "-o", out / "wp.txt"], x["empty"], finished
        if case == "bad_option":
            return [x["src"], "--vocab", x["vocab"], "-o", out / "wp.txt", "--batch-lines", "0"], "--batch-lines", \
                finished
        return [x[case], "--vocab", x["vocab"], "-o", out / "wp.txt"], x[case], finished
    if command == "augment":
        base = ["--out-prefix", out / "aug", "--pos-source", "none"]
        finished = [out / "aug.input0"]
        if case == "bad_option":
            return ["--input0", x["src"], *base, "--p-mask", "2"], "--p-mask", finished
        return ["--input0", x[case], *base], x[case], finished
    if command == "data-stats":
        finished = [out / "stats.json"]
        if case == "corrupt_header":
            return [x["distilled"], "--out", out / "stats.json"], x["distill_json"], finished
        if case == "bad_option":
            return ["--source", x["src"], "--target", x["tgt"], "--out", out / "stats.json", "--iterations", "-1"], \
                "--iterations", finished
        target = x["empty"] if case == "empty" else x["tgt"]  # an empty corpus: both sides empty
        return ["--source", x[case], "--target", target, "--out", out / "stats.json"], x[case], finished
    if command == "merge-shards":
        return _merge(x, out, case)
    raise AssertionError(command)


def _params():
    for command in COMMANDS:
        for case in CASES[command]:
            yield pytest.param(command, case, id=f"{command}-{case}")


@pytest.mark.parametrize("command,case", list(_params()))
def test_bad_input_is_one_line_exit_2_and_nothing_finished(command, case, x, tmp_path):
    args, named, finished = _scenario(command, case, x, tmp_path)
    prog = f"fairseq-kd-{command}"
    proc = utils.run([utils.command(prog), *args], check=False)
    shown = f"--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not IMPORT_LOG.match(line)]
    print("\n".join(lines))  # shown with pytest -rA
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), shown
    assert str(named) in lines[0], f"the error does not name {named}:\n{lines[0]}"
    for path in finished:
        assert not os.path.exists(path), f"{path} was written"


# ------------------------------------------------ filters read standard input
def test_bert_tokenize_reads_standard_input_when_no_file_is_given(x, tmp_path, monkeypatch, capsys):
    """A filter, as subword-nmt: no input file (or ``-``) reads stdin; output goes to stdout."""
    import io
    import subprocess

    from fairseq_kd.cli.bert_tokenize import cli_main

    proc = subprocess.run([utils.command("fairseq-kd-bert-tokenize"), "--vocab", x["vocab"]],
                          input="A1 a2\na10 a3 zz\n", capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a1 a2\na10 a3 [UNK]\n"  # uncased vocabulary: lowercased, then WordPiece
    assert "tokenized 2 lines, 5 pieces (lowercase=True)" in proc.stderr and "- -> -" in proc.stderr

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("a3 a1\n".encode())))
    cli_main(["-", "--vocab", x["vocab"], "-o", str(tmp_path / "wp.txt")])
    assert (tmp_path / "wp.txt").read_text() == "a3 a1\n"
    assert "tokenized 1 lines, 2 pieces" in capsys.readouterr().err
