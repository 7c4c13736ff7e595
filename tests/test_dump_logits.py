"""fairseq-kd-dump-logits: a fairseq classifier's logits, aligned with the student's split."""
import os

import numpy as np
import pytest
import torch

import utils
from fairseq_kd.data import array_store, logits_store
from fairseq_kd.data.array_store import StoreError

# A 1-layer, 16-wide RoBERTa: "any fairseq classifier checkpoint" as the teacher.
TINY_ROBERTA = ["--arch", "roberta", "--encoder-layers", "1", "--encoder-embed-dim", "16",
                "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--max-positions", "32"]


def transform_text(src, dst, fn, keys=("input0", "label"), splits=("train", "valid", "train_aug")):
    os.makedirs(dst, exist_ok=True)
    for split in splits:
        for key in keys:
            lines = open(os.path.join(src, f"{split}.{key}")).read().splitlines()
            with open(os.path.join(dst, f"{split}.{key}"), "w") as f:
                f.writelines((fn(line) if key == "input0" else line) + "\n" for line in lines)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Teacher data (lowercase words), student data (the same sentences uppercased: another
    dictionary), a train_aug split with unlabelled lines, and a RoBERTa teacher."""
    root = tmp_path_factory.mktemp("dump")
    text = utils.make_classification_task(str(root / "text"), n_train=80, n_valid=20)
    for key in ("input0", "label"):
        lines = open(os.path.join(text, f"train.{key}")).read().splitlines()
        extra = [" ".join(reversed(s.split())) for s in lines[:15]] if key == "input0" else ["<unk>"] * 15
        with open(os.path.join(text, f"train_aug.{key}"), "w") as f:
            f.writelines(line + "\n" for line in lines + extra)
    transform_text(text, str(root / "text_student"), str.upper)
    splits = ("train", "valid", "train_aug")
    teacher_data = utils.preprocess_classification(text, str(root / "bin_teacher"), splits=splits)
    student_data = utils.preprocess_classification(str(root / "text_student"), str(root / "bin_student"),
                                                   splits=splits)
    utils.train_classifier(teacher_data, str(root / "teacher"), arch=TINY_ROBERTA, max_update=12,
                           extra=["--disable-validation"])
    return {"root": root, "teacher_data": teacher_data, "student_data": student_data,
            "teacher": str(root / "teacher" / "checkpoint_last.pt")}


def dump(setup, out, split="train_aug", align=None, check=True, extra=()):
    args = [utils.command("fairseq-kd-dump-logits"), "--path", setup["teacher"], "--data", setup["teacher_data"],
            "--split", split, "--out", out, "--batch-size", "7", "--cpu", *extra]
    if align:
        args += ["--align-with", align]
    return utils.run(args, check=check)


def test_logits_are_the_teachers_for_each_sentence(setup, tmp_path):
    out = str(tmp_path / "logits")
    proc = dump(setup, out, align=setup["student_data"])
    assert "95 sentences x 2 classes of split 'train_aug'" in proc.stdout
    assert "on 80 labelled" in proc.stdout  # augmented lines are not scored
    header, arrays = array_store.open_store(out, kind=logits_store.KIND)
    assert header["teacher_sha256"] == array_store.file_checksum(setup["teacher"])
    student = logits_store.fingerprint(setup["student_data"], "train_aug")
    assert {k: header[k] for k in student} == student  # aligned with the student's split
    assert os.path.exists(os.path.join(out, "command.json"))

    # Row i is the teacher's output for sentence i, run alone.
    import fairseq_kd  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [setup["teacher"]], arg_overrides={"data": setup["teacher_data"]})
    model = models[0].eval()
    task.load_dataset("train_aug")
    dataset = task.dataset("train_aug")
    with torch.no_grad():
        for i in (0, 1, 40, 79, 80, 94):
            tokens = dataset[i]["net_input.src_tokens"].unsqueeze(0)
            z = model(tokens, features_only=True, classification_head_name="sentence_classification_head")[0]
            np.testing.assert_allclose(arrays["logits"][i], z[0].numpy(), rtol=1e-4, atol=1e-5)


def test_student_task_accepts_it_and_teacher_data_does_not(setup, tmp_path):
    out = str(tmp_path / "logits")
    dump_in_process(setup, out, "train", align=setup["student_data"])
    store = logits_store.LogitsStore(out)
    store.check(setup["student_data"], "train", 2)
    with pytest.raises(StoreError, match="dictionary_checksum"):  # same lengths, other dictionary
        store.check(setup["teacher_data"], "train", 2)
    with pytest.raises(StoreError, match="split is 'train' in the store, 'train_aug' here"):
        store.check(setup["student_data"], "train_aug", 2)


def dump_in_process(setup, out, split, align=None, extra=()):
    """The command's main() in this process (error paths: no fairseq import per call)."""
    from fairseq_kd.cli import dump_logits

    argv = ["--path", setup["teacher"], "--data", setup["teacher_data"], "--split", split, "--out", out, "--cpu",
            *extra] + (["--align-with", align] if align else [])
    return dump_logits.run(dump_logits.build_parser().parse_args(argv))


def test_validation_errors(setup, tmp_path):
    root = setup["root"]
    dump_in_process(setup, str(tmp_path / "a"), "valid")
    # a student split with other sentences
    short = root / "text_short"
    transform_text(str(root / "text"), str(short), str.upper, splits=("train", "valid"))
    with open(short / "valid.input0", "a") as f, open(short / "valid.label", "a") as g:
        f.write("P1\n"), g.write("1\n")
    short_bin = utils.preprocess_classification(str(short), str(root / "bin_short"))
    with pytest.raises(ValueError, match=r"20 sentences in .* and 21 in .*not the same sentences"):
        dump_in_process(setup, str(tmp_path / "b"), "valid", align=short_bin)
    assert not os.path.exists(tmp_path / "b" / "header.json")
    # labels that disagree: the splits are not aligned
    flipped = root / "text_flipped"
    transform_text(str(root / "text"), str(flipped), str.upper, splits=("train", "valid"))
    labels = (flipped / "valid.label").read_text().splitlines()
    (flipped / "valid.label").write_text("\n".join(["1" if x == "0" else "0" for x in labels]) + "\n")
    flipped_bin = utils.preprocess_classification(str(flipped), str(root / "bin_flipped"))
    with pytest.raises(ValueError, match="gold labels differ at sentence 0"):
        dump_in_process(setup, str(tmp_path / "c"), "valid", align=flipped_bin)
    # an existing finished store is never overwritten; a missing head is named
    with pytest.raises(StoreError, match="already holds a finished store"):
        dump_in_process(setup, str(tmp_path / "a"), "valid")
    with pytest.raises(ValueError, match="no classification head 'nope'"):
        dump_in_process(setup, str(tmp_path / "d"), "valid", extra=["--classification-head-name", "nope"])


def test_cli_reports_errors_without_a_traceback(setup, tmp_path):
    proc = dump(setup, str(tmp_path / "x"), split="nosuchsplit", check=False)
    assert proc.returncode == 2 and "split 'nosuchsplit' not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_interrupted_dump_resumes_to_the_same_store(setup, tmp_path, monkeypatch):
    full = str(tmp_path / "full")
    dump_in_process(setup, full, "valid")
    calls = {"n": 0}
    original = array_store.PendingStore.mark_done

    def killed_after_two_batches(self, units):
        original(self, units)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(array_store.PendingStore, "mark_done", killed_after_two_batches)
    part = str(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        dump_in_process(setup, part, "valid", extra=["--batch-size", "4"])
    assert not os.path.exists(os.path.join(part, "header.json"))  # unfinished: refused by readers
    with pytest.raises(StoreError, match="unfinished store"):
        logits_store.LogitsStore(part)
    monkeypatch.setattr(array_store.PendingStore, "mark_done", original)
    dump_in_process(setup, part, "valid", extra=["--batch-size", "4"])  # resumes
    np.testing.assert_allclose(array_store.open_store(part)[1]["logits"], array_store.open_store(full)[1]["logits"],
                               rtol=1e-5, atol=1e-6)


def test_batches_group_sentences_of_similar_length_and_refuse_too_long_ones():
    from fairseq_kd.cli.dump_logits import length_sorted_batches

    class Sized:
        sizes = [5, 2, 9, 2, 7]

        def __len__(self):
            return len(self.sizes)

        def num_tokens(self, i):
            return self.sizes[i]

    batches = length_sorted_batches(Sized(), 2, max_positions=9)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 4], [2]]
    with pytest.raises(ValueError, match="sentence 2 has 9 tokens; the teacher takes at most 8"):
        length_sorted_batches(Sized(), 2, max_positions=8)
