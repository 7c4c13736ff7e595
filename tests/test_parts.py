"""fairseq_kd.data.parts: one layout for the parts of every kind of sharded output.

A soft-label store and a distilled corpus, each run as 2 shards, are laid out by
the same functions, read by the same read_parts and merged into what one process
writes; a bad shard id is refused once, in one line, before anything is written."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from fairseq_kd.cli import distill_corpus, dump_soft_labels, merge_shards
from fairseq_kd.data import array_store, distilled_corpus, parts, soft_labels

SUBSET = ("--subset", "valid")  # 30 sentences
STORE = ("--topk", "4", "--max-tokens", "300", "--sort-window", "8", *SUBSET)
CORPUS = ("--beam", "2", "--max-tokens", "300", "--copy-splits", *SUBSET)
TIMING = ("sentences_per_second", "decode_seconds")


def _run(command, data, teacher, out, *extra):
    """The command's run() in this process, as its cli_main calls it."""
    return command.run(command.build_parser().parse_args(
        [data, "--path", teacher, "--out", str(out), "--cpu", *extra]))


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_teacher, tmp_path_factory):
    """The valid split as a store and as a corpus, by one process and by 2 shards."""
    root = tmp_path_factory.mktemp("parts")
    summaries = {}
    for name, command, extra in (("store", dump_soft_labels, STORE), ("corpus", distill_corpus, CORPUS)):
        summaries[name] = _run(command, tiny_data, tiny_teacher, root / name / "one", *extra)
        summaries[name + "_shards"] = [_run(command, tiny_data, tiny_teacher, root / name / "two", *extra,
                                            "--num-shards", "2", "--shard-id", str(i)) for i in range(2)]
    return root, summaries


def test_a_store_and_a_corpus_are_laid_out_by_the_same_functions(runs):
    root, summaries = runs
    outputs = {"store": str(root / "store" / "two"),  # T: the store OUT
               "corpus": distilled_corpus.output(str(root / "corpus" / "two"), "valid")}  # T: the split OUT/valid
    assert parts.parts_dir(outputs["store"]) == str(root / "store" / "two.parts")
    assert parts.parts_dir(outputs["corpus"]) == str(root / "corpus" / "two" / "valid.parts")
    kinds = {"store": soft_labels.KIND, "corpus": distilled_corpus.KIND}
    for what, output in outputs.items():
        names = ["part-00000-of-00002", "part-00001-of-00002"]
        assert sorted(os.listdir(parts.parts_dir(output))) == names, what  # no work folder left
        found = parts.read_parts(output, kinds[what])
        assert [p["name"] for p in found] == names
        assert [p["path"] for p in found] == [parts.part_path(output, 2, i) for i in range(2)]
        assert [(p["num_shards"], p["shard_id"]) for p in found] == [(2, 0), (2, 1)]
        assert [p["kind"] for p in found] == [kinds[what]] * 2
        ranges = [p["sentence_range"] for p in found]
        assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == found[0]["sentences"] == 30
        assert not os.path.exists(parts.work_path(output, 2, 0)) and \
            parts.work_path(output, 2, 0) == os.path.join(parts.parts_dir(output), ".part-00000-of-00002.tmp")
        for i, summary in enumerate(summaries[what + "_shards"]):
            assert summary["path"] == parts.part_path(output, 2, i), what
        with pytest.raises(array_store.StoreError, match="holds a .* part, expected"):
            parts.read_parts(output, kinds["corpus" if what == "store" else "store"])
    # distill-corpus returns one shape, for a part as for the whole split
    assert set(summaries["corpus_shards"][0]) == set(summaries["corpus"])


def test_merged_parts_equal_one_process_for_both_kinds(runs, tmp_path):
    import shutil

    root, _ = runs
    store, corpus = tmp_path / "store", tmp_path / "corpus"
    shutil.copytree(root / "store" / "two.parts", tmp_path / "store.parts")
    shutil.copytree(root / "corpus" / "two" / "valid.parts", corpus / "valid.parts")

    merged = merge_shards.merge(str(store))
    assert (merged["what"], merged["parts"], merged["sentences"]) == ("store", 2, 30)
    one = root / "store" / "one"
    for name in ("ids", "logits", "gold_logprob", "offsets"):
        assert np.array_equal(np.load(store / f"{name}.npy"), np.load(one / f"{name}.npy")), name
    assert json.load(open(store / "header.json")) == json.load(open(one / "header.json"))

    merged = merge_shards.merge(str(corpus), subset="valid", remove_parts=True)
    assert (merged["what"], merged["parts"], merged["sentences"]) == ("corpus", 2, 30)
    one = root / "corpus" / "one"
    files = sorted(n for n in os.listdir(one) if not n.startswith("command."))
    assert sorted(os.listdir(corpus)) == files  # the parts removed
    for name in files:
        if name != "distill.valid.json":
            assert open(one / name, "rb").read() == open(corpus / name, "rb").read(), name
    s_one, s_two = (json.load(open(d / "distill.valid.json")) for d in (one, corpus))
    for key in TIMING:
        s_one.pop(key), s_two.pop(key)
    assert s_one == s_two


def _cli_error(command, argv, env, monkeypatch):
    """(exit status, stderr) of the command run in this process under ``env``."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        command.cli_main([str(a) for a in argv])
    return exit_.value.code, err.getvalue()


@pytest.mark.parametrize("command", [dump_soft_labels, distill_corpus])
@pytest.mark.parametrize("shard, env", [(("--num-shards", "2", "--shard-id", "2"), {}),
                                        ((), {"WORLD_SIZE": "2", "RANK": "2"}),
                                        (("--num-shards", "0", "--shard-id", "0"), {})])
def test_a_bad_shard_is_refused_once_in_one_line_before_anything_is_written(
        command, shard, env, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    missing_teacher = tmp_path / "none.pt"  # never reached: the shard is checked first
    status, err = _cli_error(command, [tiny_data, "--path", missing_teacher, "--out", out, "--cpu", *shard],
                             env, monkeypatch)
    expected = "--num-shards must be >= 1, got 0" if "0" in shard[1:2] else "--shard-id must be in [0, 2), got 2"
    assert status == 2 and err.splitlines() == [f"{command.build_parser().prog}: error: {expected}"], err
    assert not out.exists() and not os.path.exists(parts.parts_dir(str(out)))


def test_read_parts_refuses_what_is_not_a_finished_part_of_its_name(runs, tmp_path):
    import shutil

    root, _ = runs
    output = str(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="no parts to merge: .*store.parts not found"):
        parts.read_parts(output)
    os.makedirs(parts.work_path(output, 2, 0))  # a shard being written: not a part
    with pytest.raises(ValueError, match="no finished parts in"):
        parts.read_parts(output)
    shutil.copytree(root / "store" / "two.parts" / "part-00001-of-00002", parts.part_path(output, 3, 1))
    with pytest.raises(ValueError, match="its header says shard 1 of 2, not part-00001-of-00003"):
        parts.read_parts(output)
    shutil.rmtree(parts.part_path(output, 3, 1))
    os.makedirs(parts.part_path(output, 2, 1))
    with pytest.raises(ValueError, match="is not a finished part .no header.json.: rerun its shard"):
        parts.read_parts(output)


def test_a_rerun_part_replaces_the_old_one_only_when_whole(tmp_path):
    output = str(tmp_path / "out")
    final, work = parts.part_path(output, 2, 1), parts.work_path(output, 2, 1)
    os.makedirs(work)
    with pytest.raises(ValueError, match="not a store"):  # no header.json yet: not published
        parts.publish(work, final)
    assert not os.path.exists(final)
    for version in (1, 2):
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, parts.HEADER), "w") as f:
            json.dump({"kind": "k", "version": version}, f)
        parts.publish(work, final)
        assert json.load(open(os.path.join(final, parts.HEADER)))["version"] == version
    assert sorted(os.listdir(parts.parts_dir(output))) == ["part-00001-of-00002"]  # no work or old folder


def test_part_names_and_cover():
    assert parts.part_name(4, 1) == "part-00001-of-00004"
    parts.check_cover([("a", 0, 5), ("b", 5, 9)], 9)
    with pytest.raises(ValueError, match=r"sentences 5\.\.6 are in no part"):
        parts.check_cover([("a", 0, 5), ("c", 7, 9)], 9)
    with pytest.raises(ValueError, match=r"b \[4, 9\) overlaps a"):
        parts.check_cover([("a", 0, 5), ("b", 4, 9)], 9)
    with pytest.raises(ValueError, match=r"sentences 5\.\.8 are in no part \(missing shard after a\)"):
        parts.check_cover([("a", 0, 5)], 9)
