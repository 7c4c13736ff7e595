"""fairseq-kd-merge-shards: sharded offline stages merge into what one process writes,
and a missing, overlapping or foreign part is a named error that writes nothing."""
import json
import os
import shutil

import pytest

import utils
from fairseq_kd.cli import distill_corpus, merge_shards
from fairseq_kd.data import shards

TIMING = ("sentences_per_second", "decode_seconds")


def _distill(data, teacher, out, *extra):
    """fairseq-kd-distill-corpus in this process (the same distill() the command runs)."""
    args = distill_corpus.build_parser().parse_args(
        [data, "--path", teacher, "--out", str(out), "--cpu", "--beam", "3", "--nbest", "2",
         "--select", "seq-inter", "--max-tokens", "200", "--copy-splits", "valid", *extra])
    return distill_corpus.distill(args)


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
    metas = [json.load(open(three / "train.parts" / p / "meta.json")) for p in parts]
    ranges = [m["range"] for m in metas]
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
    meta1 = json.load(open(parts / "part-00001-of-00003" / "meta.json"))
    start, end = meta1["range"]

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
    before = {p: os.stat(out / "train.parts" / p / "meta.json").st_mtime_ns for p in os.listdir(out / "train.parts")}
    os.makedirs(out / "train.parts" / ".part-00002-of-00003.tmp-99999")  # left by a killed run: ignored
    _distill(tiny_data, tiny_teacher, out, "--num-shards", "3", "--shard-id", "2")
    after = {p: os.stat(out / "train.parts" / p / "meta.json").st_mtime_ns
             for p in os.listdir(out / "train.parts") if not p.startswith(".")}
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
    meta = _distill(tiny_data, tiny_teacher, tmp_path / "env")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "1")
    meta_slurm = _distill(tiny_data, tiny_teacher, tmp_path / "slurm")
    reference = json.load(open(runs / "three" / "train.parts" / "part-00001-of-00003" / "meta.json"))
    for m in (meta, meta_slurm):
        assert m["shard"] == [1, 3] and m["range"] == reference["range"] and m["rank"] == reference["rank"]
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
        return {"name": shards.part_name(shards.Shard(n, i, 0)), "shard": [i, n], "range": r,
                "settings": {"teacher_sha256": [teacher], "K": 8}}

    shards.check_parts([part(0, 2, [0, 4]), part(1, 2, [4, 10])], 10)  # a cover: no error
    with pytest.raises(ValueError) as e:
        shards.check_parts([part(0, 3, [0, 4]), part(2, 3, [7, 10])], 10)
    assert str(e.value) == ("missing part-00001-of-00003 (rerun those shards); "
                            "sentences 4..6 are in no part (missing shard before part-00002-of-00003)")
    with pytest.raises(ValueError) as e:
        shards.check_parts([part(0, 2, [0, 4]), part(1, 2, [4, 10]), part(1, 3, [3, 10], teacher="u")], 10)
    message = str(e.value)
    assert "part-00001-of-00003 was made with other settings than the other parts " \
           "(teacher_sha256: ['u'] vs ['t'])" in message
    assert "part-00001-of-00003 [3, 10) overlaps part-00000-of-00002" in message
    with pytest.raises(ValueError, match="no parts found"):
        shards.check_parts([], 10)
