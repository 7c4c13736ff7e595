"""fairseq-kd-merge-shards: sharded offline stages (fairseq-kd-distill-corpus,
fairseq-kd-dump-soft-labels) merge into what one process writes, and a missing,
overlapping or foreign part is a named error that writes nothing."""
import json
import os
import shutil

import numpy as np
import pytest

import utils
from fairseq_kd.cli import distill_corpus, dump_soft_labels, merge_shards
from fairseq_kd.data import parts as parts_layout
from fairseq_kd.data import shards
from fairseq_kd.teacher import load_teacher

TIMING = ("sentences_per_second", "decode_seconds")


def _distill(data, teacher, out, *extra):
    """fairseq-kd-distill-corpus in this process (the same run() the command runs)."""
    args = distill_corpus.build_parser().parse_args(
        [data, "--path", teacher, "--out", str(out), "--cpu", "--beam", "3", "--nbest", "2",
         "--select", "seq-inter", "--max-tokens", "200", "--copy-splits", "valid", *extra])
    return distill_corpus.run(args)


def _files(folder):
    return sorted(n for n in os.listdir(folder) if not n.startswith("command.") and not n.endswith(".parts"))


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_teacher, tmp_path_factory):
    """The train split (300 sentences) distilled by one process, and by 3 shards run one after another."""
    root = tmp_path_factory.mktemp("shards")
    _distill(tiny_data, tiny_teacher, root / "one")
    for i in range(3):
        _distill(tiny_data, tiny_teacher, root / "three", "--num-shards", "3", "--shard-id", str(i))
    return root


def test_three_shards_merged_equal_one_process(runs, tiny_data):
    one, three = runs / "one", runs / "three"
    parts = sorted(os.listdir(three / "train.parts"))
    assert parts == [f"part-0000{i}-of-00003" for i in range(3)]
    metas = [json.load(open(three / "train.parts" / p / "header.json")) for p in parts]
    ranges = [m["sentence_range"] for m in metas]
    assert ranges[0][0] == 0 and ranges[-1][1] == 300 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    from fairseq.data import data_utils

    source = data_utils.load_indexed_dataset(os.path.join(tiny_data, "train.src-tgt.src"), None)
    sizes = source.sizes.copy()  # copied: the memory map closes with its dataset
    assert ranges == [list(shards.shard_range(sizes, 3, i)) for i in range(3)]  # token-balanced ranges
    assert not (three / "distill.train.json").exists()  # nothing merged before the merge

    proc = utils.run([utils.command("fairseq-kd-merge-shards"), str(three)])
    assert "3 parts -> 300 sentences" in proc.stdout
    assert _files(one) == _files(three)
    for name in _files(one):  # bin/idx, text and dictionaries: byte for byte
        if name != "distill.train.json":
            assert open(one / name, "rb").read() == open(three / name, "rb").read(), name
    s_one, s_three = (json.load(open(d / "distill.train.json")) for d in (one, three))
    for key in TIMING:
        s_one.pop(key), s_three.pop(key)
    assert s_one == s_three and s_one["seq_inter_not_top"] > 0
    assert sorted(os.listdir(three / "train.parts")) == parts  # parts kept by default


def _copy(src, dst):
    shutil.copytree(src, dst)
    for name in os.listdir(dst):  # only the parts, not a merged corpus
        if name != "train.parts":
            os.remove(dst / name)
    return dst


def _merge_fails(out, *messages):
    proc = utils.run([utils.command("fairseq-kd-merge-shards"), str(out)], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr
    assert os.listdir(out) == ["train.parts"]  # nothing written
    return proc.stderr


def test_missing_overlapping_and_foreign_parts_are_named_and_nothing_is_written(
        runs, tiny_data, tiny_teacher, tiny_teacher2, tmp_path):
    parts = runs / "three" / "train.parts"
    meta1 = json.load(open(parts / "part-00001-of-00003" / "header.json"))
    start, end = meta1["sentence_range"]

    missing = _copy(runs / "three", tmp_path / "missing")
    shutil.rmtree(missing / "train.parts" / "part-00001-of-00003")
    _merge_fails(missing, "missing part-00001-of-00003", f"sentences {start}..{end - 1} are in no part")

    # Shard 1 of 2 overlaps shards 1 and 2 of 3.
    overlap = _copy(runs / "three", tmp_path / "overlap")
    _distill(tiny_data, tiny_teacher, tmp_path / "two", "--num-shards", "2", "--shard-id", "1")
    shutil.copytree(tmp_path / "two" / "train.parts" / "part-00001-of-00002", overlap / "train.parts" / "part-00001-of-00002")
    err = _merge_fails(overlap, "part-00001-of-00002 [", "overlaps", "missing part-00000-of-00002")

    # Shard 1 decoded by another teacher: same range, other checkpoint hash.
    foreign = _copy(runs / "three", tmp_path / "foreign")
    _distill(tiny_data, tiny_teacher2, tmp_path / "other", "--num-shards", "3", "--shard-id", "1")
    shutil.rmtree(foreign / "train.parts" / "part-00001-of-00003")
    shutil.copytree(tmp_path / "other" / "train.parts" / "part-00001-of-00003", foreign / "train.parts" / "part-00001-of-00003")
    err = _merge_fails(foreign, "part-00001-of-00003 was made with other settings", "teacher_sha256")
    assert "part-00000" not in err and "part-00002" not in err


def test_a_rerun_shard_replaces_only_its_part(runs, tiny_data, tiny_teacher, tmp_path):
    out = _copy(runs / "three", tmp_path / "rerun")
    before = {p: os.stat(out / "train.parts" / p / "header.json").st_mtime_ns for p in os.listdir(out / "train.parts")}
    os.makedirs(out / "train.parts" / ".part-00002-of-00003.tmp")  # left by a killed run: started afresh
    (out / "train.parts" / ".part-00002-of-00003.tmp" / "targets.bin").write_bytes(b"cut")
    _distill(tiny_data, tiny_teacher, out, "--num-shards", "3", "--shard-id", "2")
    after = {p: os.stat(out / "train.parts" / p / "header.json").st_mtime_ns
             for p in os.listdir(out / "train.parts")}
    assert sorted(after) == sorted(before)  # the work folder is gone
    assert after["part-00000-of-00003"] == before["part-00000-of-00003"]
    assert after["part-00001-of-00003"] == before["part-00001-of-00003"]
    assert after["part-00002-of-00003"] != before["part-00002-of-00003"]
    merge_shards.merge(str(out), remove_parts=True)
    assert open(out / "train.tgt").read() == open(runs / "one" / "train.tgt").read()
    assert not (out / "train.parts").exists()


def test_shard_comes_from_torchrun_or_slurm_environment(runs, tiny_data, tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = _distill(tiny_data, tiny_teacher, tmp_path / "env")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "1")
    slurm = _distill(tiny_data, tiny_teacher, tmp_path / "slurm")
    reference = json.load(open(runs / "three" / "train.parts" / "part-00001-of-00003" / "header.json"))
    for summary in (env, slurm):  # the part it wrote
        m = json.load(open(os.path.join(summary["path"], "header.json")))
        assert (m["shard_id"], m["num_shards"]) == (1, 3) and m["sentence_range"] == reference["sentence_range"] \
            and m["rank"] == reference["rank"]
        assert (summary["shard_id"], summary["num_shards"], summary["range"]) == (1, 3, reference["sentence_range"])
    for out in ("env", "slurm"):
        assert (open(tmp_path / out / "train.parts" / "part-00001-of-00003" / "targets.bin", "rb").read()
                == open(runs / "three" / "train.parts" / "part-00001-of-00003" / "targets.bin", "rb").read())


def test_torchrun_launches_one_shard_per_process(runs, tiny_data, tiny_teacher, tmp_path):
    torchrun = os.path.join(utils.BIN, "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not installed")
    out = tmp_path / "torchrun"
    utils.run([torchrun, "--standalone", "--nproc_per_node", "3", utils.command("fairseq-kd-distill-corpus"),
               tiny_data, "--path", tiny_teacher, "--out", str(out), "--cpu", "--beam", "3", "--nbest", "2",
               "--select", "seq-inter", "--max-tokens", "200", "--copy-splits", "valid"])
    merge_shards.merge(str(out))
    for name in _files(runs / "one"):
        if name != "distill.train.json":
            assert open(runs / "one" / name, "rb").read() == open(out / name, "rb").read(), name


def test_check_parts_golden_messages():
    def part(i, n, r, teacher="t"):
        return {"name": parts_layout.part_name(n, i), "num_shards": n, "shard_id": i, "sentence_range": r,
                "teacher_sha256": [teacher], "K": 8, "sentences": 10}

    settings = ("teacher_sha256", "K", "sentences")
    assert parts_layout.check_parts([part(0, 2, [0, 4]), part(1, 2, [4, 10])], settings) == {  # a cover: no error
        "teacher_sha256": ["t"], "K": 8, "sentences": 10}
    with pytest.raises(ValueError) as e:
        parts_layout.check_parts([part(0, 3, [0, 4]), part(2, 3, [7, 10])], settings)
    assert str(e.value) == ("missing part-00001-of-00003 (rerun those shards); "
                            "sentences 4..6 are in no part (missing shard before part-00002-of-00003)")
    with pytest.raises(ValueError) as e:
        parts_layout.check_parts([part(0, 2, [0, 4]), part(1, 2, [4, 10]), part(1, 3, [3, 10], teacher="u")],
                                 settings)
    message = str(e.value)
    assert "part-00001-of-00003 was made with other settings than the other parts " \
           "(teacher_sha256: ['u'] vs ['t'])" in message
    assert "part-00001-of-00003 [3, 10) overlaps part-00000-of-00002" in message
    with pytest.raises(ValueError, match="no parts found"):
        parts_layout.check_parts([], settings)


# ------------------------------------------------------ soft-label stores
ARRAYS = ("ids", "logits", "gold_logprob", "offsets")
STORE_BATCHING = ("--max-tokens", "300", "--sort-window", "16")


def _dump(bert, out, *extra, teacher=None):
    """fairseq-kd-dump-soft-labels in this process (the same dump() the command runs),
    batching several sentences a forward within blocks of 16 sentences."""
    args = dump_soft_labels.build_parser().parse_args(
        [bert["bin"], "--path", teacher or bert["teacher"], "--out", str(out), "--cpu", "--topk", "4",
         "--passes", "3", *STORE_BATCHING, *extra])
    return dump_soft_labels.run(args)


def _arrays(path):
    return {name: np.load(os.path.join(path, f"{name}.npy")) for name in ARRAYS}


def _header(path):
    return json.load(open(os.path.join(path, "header.json")))


@pytest.fixture(scope="module")
def store_runs(tiny_bert, tmp_path_factory):
    """The 120-sentence train split dumped by one process, and by 3 shards one after another."""
    root = tmp_path_factory.mktemp("store_shards")
    _dump(tiny_bert, root / "one")
    for i in range(3):
        _dump(tiny_bert, root / "three", "--num-shards", "3", "--shard-id", str(i))
    return root


def _split_sizes(bert):
    from fairseq.data import data_utils

    sizes = []
    for lang in ("src", "tgt"):
        dataset = data_utils.load_indexed_dataset(os.path.join(bert["bin"], f"train.src-tgt.{lang}"), None)
        sizes.append(dataset.sizes.copy())  # copied while the dataset (its memory map) is alive
    return sizes[0] + sizes[1], sizes[1]


def test_store_shards_merged_equal_one_process(store_runs, tiny_bert):
    from fairseq_kd.data.array_store import StoreError
    from fairseq_kd.data.soft_labels import SoftLabelStore

    one, parts = store_runs / "one", store_runs / "three.parts"
    names = sorted(os.listdir(parts))
    assert names == [f"part-0000{i}-of-00003" for i in range(3)]  # no work folder left
    headers = [_header(parts / n) for n in names]
    src_tgt, tgt = _split_sizes(tiny_bert)
    assert [h["sentence_range"] for h in headers] == [list(shards.shard_range(src_tgt, 3, i, 16))
                                                       for i in range(3)]
    assert all(h["sentence_range"][0] % 16 == 0 for h in headers)  # shards start at sort-window blocks
    batches = dump_soft_labels.make_batches(src_tgt - tgt, tgt, 3, 300, 16)
    assert max(len(b) for b in batches) > 1  # sentences share forwards: equality below is not trivial
    assert [(h["shard_id"], h["num_shards"]) for h in headers] == [(0, 3), (1, 3), (2, 3)]
    bounds = np.concatenate([[0], np.cumsum(tgt)])
    assert [h["token_range"] for h in headers] == [[int(bounds[a]), int(bounds[b])]
                                                   for a, b in (h["sentence_range"] for h in headers)]
    assert all(0 < b - a < 120 for a, b in (h["sentence_range"] for h in headers))
    with pytest.raises(StoreError, match="holds part 1 of 3 of a sharded dump .* merge the parts first"):
        SoftLabelStore(str(parts / names[1]))
    assert not (store_runs / "three").exists()  # nothing merged before the merge

    proc = utils.run([utils.command("fairseq-kd-merge-shards"), str(store_runs / "three")])
    assert "merge-shards | 3 parts -> store of 120 sentences, 737 tokens" in proc.stdout
    merged, single = _arrays(store_runs / "three"), _arrays(one)
    for name in ARRAYS:
        assert merged[name].dtype == single[name].dtype and np.array_equal(merged[name], single[name]), name
    assert _header(store_runs / "three") == _header(one)  # num_shards 1, full ranges, same checksums
    assert _header(one)["num_shards"] == 1 and _header(one)["sentence_range"] == [0, 120]
    assert sorted(os.listdir(store_runs / "three")) == sorted(["command.merge.json", "header.json", *(
        f"{n}.npy" for n in ARRAYS)])
    assert "teacher_quality" in _header(one)  # summed over the parts: equal to one process's (above)
    assert sorted(os.listdir(parts)) == names  # parts kept by default
    task = load_teacher(tiny_bert["teacher"], data=tiny_bert["bin"]).task
    SoftLabelStore(str(store_runs / "three")).check(task.load_pair_dataset("train"), task.target_dictionary)


def test_store_shards_with_larger_windows_equal_one_process_bit_for_bit(tiny_bert, tmp_path):
    """Two shards with the default batch size and blocks of 40 sentences: every sentence
    meets the same batch partners as in one process, so the logits are equal, not close."""
    extra = ("--max-tokens", "8192", "--sort-window", "40")
    _dump(tiny_bert, tmp_path / "one", *extra)
    for i in range(2):
        _dump(tiny_bert, tmp_path / "two", "--num-shards", "2", "--shard-id", str(i), *extra)
    starts = [_header(tmp_path / "two.parts" / f"part-0000{i}-of-00002")["sentence_range"][0] for i in range(2)]
    assert starts[0] == 0 and starts[1] in (40, 80)
    merge_shards.merge(str(tmp_path / "two"), remove_parts=True)
    merged, single = _arrays(tmp_path / "two"), _arrays(tmp_path / "one")
    for name in ARRAYS:
        assert np.array_equal(merged[name], single[name]), name
    assert _header(tmp_path / "two") == _header(tmp_path / "one")
    assert not (tmp_path / "two.parts").exists()  # --remove-parts


def test_make_batches_keep_to_their_window_and_budget():
    src, tgt = np.array([5, 1, 4, 2, 3, 9, 1, 1]), np.array([3, 3, 3, 3, 3, 3, 3, 3])
    batches = dump_soft_labels.make_batches(src, tgt, 0, 60, 4)  # --passes 0: 3 rows a sentence
    for b in batches:
        assert len({int(i) // 4 for i in b}) == 1  # one window
    # by length 1+src+tgt within a window: 1 (5), 3 (6), 2 (8), 0 (9) | 6 (5), 7 (5), 4 (7), 5 (13);
    # cost = rows x longest <= 60: [1, 3] = 6 x 6, [2, 0] = 6 x 9, [6, 7] = 6 x 5, then 9 x 7 > 60 ...
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0], [6, 7], [4], [5]]


def _store_parts_copy(src_parts, dst):
    shutil.copytree(src_parts, dst / "out.parts")
    return dst / "out"


def _store_merge_fails(out, *messages):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        merge_shards.cli_main([str(out)])
    assert exit_.value.code == 2, err.getvalue()
    for message in messages:
        assert message in err.getvalue(), err.getvalue()
    assert os.listdir(os.path.dirname(out)) == ["out.parts"]  # no OUT, no temporary folder
    return err.getvalue()


def test_store_missing_overlapping_and_foreign_parts_are_named_and_nothing_is_written(
        store_runs, tiny_bert, tmp_path):
    parts = store_runs / "three.parts"
    start, end = _header(parts / "part-00001-of-00003")["sentence_range"]

    missing = _store_parts_copy(parts, tmp_path / "missing")
    shutil.rmtree(tmp_path / "missing" / "out.parts" / "part-00001-of-00003")
    _store_merge_fails(missing, "missing part-00001-of-00003", f"sentences {start}..{end - 1} are in no part",
                       "nothing written")

    # Shard 1 of 2 overlaps shards 1 and 2 of 3.
    overlap = _store_parts_copy(parts, tmp_path / "overlap")
    _dump(tiny_bert, tmp_path / "two", "--num-shards", "2", "--shard-id", "1")
    shutil.copytree(tmp_path / "two.parts" / "part-00001-of-00002",
                    tmp_path / "overlap" / "out.parts" / "part-00001-of-00002")
    _store_merge_fails(overlap, "part-00001-of-00002 [", "overlaps", "missing part-00000-of-00002",
                       "parts of different --num-shards (2, 3) are mixed")

    # Shard 1 dumped by another teacher: same range, other checkpoint hash.
    other = tmp_path / "teacher2"
    utils.train_bert_teacher(tiny_bert["bin"], tiny_bert["bert"], str(other), max_update=3)
    foreign = _store_parts_copy(parts, tmp_path / "foreign")
    _dump(tiny_bert, tmp_path / "other", "--num-shards", "3", "--shard-id", "1",
          teacher=str(other / "checkpoint_last.pt"))
    shutil.rmtree(tmp_path / "foreign" / "out.parts" / "part-00001-of-00003")
    shutil.copytree(tmp_path / "other.parts" / "part-00001-of-00003",
                    tmp_path / "foreign" / "out.parts" / "part-00001-of-00003")
    err = _store_merge_fails(foreign, "part-00001-of-00003 was made with other settings", "teacher_checksum")
    assert "part-00000" not in err and "part-00002" not in err

    # Another K: named with the field.
    other_k = _store_parts_copy(parts, tmp_path / "other_k")
    _dump(tiny_bert, tmp_path / "k3", "--num-shards", "3", "--shard-id", "2", "--topk", "3")
    shutil.rmtree(tmp_path / "other_k" / "out.parts" / "part-00002-of-00003")
    shutil.copytree(tmp_path / "k3.parts" / "part-00002-of-00003", tmp_path / "other_k" / "out.parts" / "part-00002-of-00003")
    _store_merge_fails(other_k, "part-00002-of-00003 was made with other settings than the other parts (topk: 3 vs 4)")


def test_killed_store_shard_resumes_and_replaces_only_its_part(store_runs, tiny_bert, tmp_path):
    out = _store_parts_copy(store_runs / "three.parts", tmp_path)
    parts = tmp_path / "out.parts"
    before = {p: os.stat(parts / p / "header.json").st_mtime_ns for p in os.listdir(parts)}
    proc = utils.run([utils.command("fairseq-kd-dump-soft-labels"), tiny_bert["bin"], "--path", tiny_bert["teacher"],
                      "--out", str(out), "--cpu", "--topk", "4", "--passes", "3", *STORE_BATCHING,
                      "--num-shards", "3", "--shard-id", "2"], env={"FAIRSEQ_KD_DUMP_KILL_AFTER": "2"}, check=False)
    assert proc.returncode == -9
    work = parts / ".part-00002-of-00003.tmp"
    flagged = int(np.load(work / "done.npy").sum())
    start, end = _header(parts / "part-00002-of-00003")["sentence_range"]
    src_tgt, tgt = _split_sizes(tiny_bert)
    first_two = dump_soft_labels.make_batches((src_tgt - tgt)[start:end], tgt[start:end], 3, 300, 16)[:2]
    assert flagged == sum(len(b) for b in first_two) < end - start  # the first 2 batches flagged
    assert os.stat(parts / "part-00002-of-00003" / "header.json").st_mtime_ns == before["part-00002-of-00003"]
    summary = _dump(tiny_bert, out, "--num-shards", "3", "--shard-id", "2")
    assert summary["resumed_sentences"] == flagged and summary["path"] == str(parts / "part-00002-of-00003")
    after = {p: os.stat(parts / p / "header.json").st_mtime_ns for p in os.listdir(parts)}
    assert sorted(after) == sorted(before)  # the work folder is gone
    assert after["part-00000-of-00003"] == before["part-00000-of-00003"]
    assert after["part-00001-of-00003"] == before["part-00001-of-00003"]
    assert after["part-00002-of-00003"] != before["part-00002-of-00003"]
    for name, array in _arrays(parts / "part-00002-of-00003").items():
        assert np.array_equal(array, _arrays(store_runs / "three.parts" / "part-00002-of-00003")[name]), name
    merge_shards.merge(str(out))
    for name, array in _arrays(out).items():
        assert np.array_equal(array, _arrays(store_runs / "one")[name]), name


def test_store_shard_comes_from_torchrun_or_slurm_environment(store_runs, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = _dump(tiny_bert, tmp_path / "env")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "1")
    slurm = _dump(tiny_bert, tmp_path / "slurm")
    reference = store_runs / "three.parts" / "part-00001-of-00003"
    for summary, out in ((env, "env"), (slurm, "slurm")):
        assert (summary["num_shards"], summary["shard_id"]) == (3, 1)
        part = tmp_path / f"{out}.parts" / "part-00001-of-00003"
        assert _header(part) == _header(reference)
        for name, array in _arrays(part).items():
            assert np.array_equal(array, _arrays(reference)[name]), name
    assert not (tmp_path / "env").exists() and not (tmp_path / "slurm").exists()


def test_store_shard_options_are_documented_and_checked(tiny_bert, tmp_path):
    help_text = dump_soft_labels.build_parser().format_help()
    assert "--num-shards" in help_text and "--shard-id" in help_text and "WORLD_SIZE" in help_text
    with pytest.raises(ValueError, match="--shard-id must be in"):
        _dump(tiny_bert, tmp_path / "bad", "--num-shards", "3", "--shard-id", "3")
    with pytest.raises(ValueError, match="go together"):
        _dump(tiny_bert, tmp_path / "bad", "--num-shards", "3")
