"""Silent misalignment between teacher data and the data it is used with (issue 12 §2).

Each path used to train without a word on data that did not belong together:
a soft-label store of another split (tasks/translation_kd.py), a distilled
corpus of the same size but other sentences or dictionaries (cli/distill_corpus.py
writes, tasks/translation_kd.py checks), ``--left-pad-target`` with
soft labels or C-MLM masks (data/kd_dataset.py, tasks/conditional_mlm.py,
tasks/translation_lev_kd.py), and an online teacher with another source
dictionary (teacher.py). Each is now refused with one line naming both sides
and the fix.
"""
import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
from fairseq.data import Dictionary, data_utils

import utils
from fairseq_kd.data import array_store, soft_labels
from fairseq_kd.data.kd_dataset import KDLanguagePairDataset

KD_ARGS = ["--task", "translation_kd", "--criterion", "word_kd", "--label-smoothing", "0.1"]


# ------------------------------------------------------------------ helpers
def setup_task(argv):
    """Parse fairseq-train arguments and set up only the task (in this process)."""
    import fairseq_kd  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), ["--user-dir", utils.USER_DIR, *argv])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task)


def one_line(text, *parts):
    """The single line of ``text`` holding every one of ``parts`` (asserts there is one)."""
    lines = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert len(lines) == 1, f"no single line holds {parts}:\n{text[-3000:]}"
    return lines[0]


def nothing_finished(save_dir):
    return not os.path.exists(save_dir) or not any(n.endswith(".pt") for n in os.listdir(save_dir))


def split_lines(data_bin, split, lang):
    """The sentences of a binarized split, as text."""
    d = Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.src-tgt.{lang}"), d)
    return [d.string(ds[i]) for i in range(len(ds))]


def binarize(root, name, src_lines, tgt_lines, srcdict, tgtdict):
    """A train split from text lines, binarized with the given dictionary files."""
    text = os.path.join(root, name + "_text")
    os.makedirs(text, exist_ok=True)
    for lang, lines in (("src", src_lines), ("tgt", tgt_lines)):
        with open(os.path.join(text, f"train.{lang}"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return utils.preprocess(text, os.path.join(root, name), extra=["--srcdict", srcdict, "--tgtdict", tgtdict])


def write_dict(path, lines):
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def permuted_dict(data_bin, lang, path):
    """``dict.<lang>.txt`` with its symbols in reverse order: same size, other ids."""
    with open(os.path.join(data_bin, f"dict.{lang}.txt")) as f:
        return write_dict(path, f.readlines()[::-1])


def bigger_dict(data_bin, lang, path):
    """``dict.<lang>.txt`` with one more symbol."""
    with open(os.path.join(data_bin, f"dict.{lang}.txt")) as f:
        return write_dict(path, f.readlines() + ["zextra 1\n"])


def write_store(path, data_bin, split, K=3):
    """A finished top-K store for ``split`` of ``data_bin`` (random rows, right shapes)."""
    d = Dictionary.load(os.path.join(data_bin, "dict.tgt.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.src-tgt.tgt"), d)
    sizes = ds.sizes.copy()  # copied while ds lives: its memory map closes with it
    header = soft_labels.make_header(split, K, 1, d, sizes, teacher_checksum="test")
    store = soft_labels.create_or_resume(path, header, sizes)
    rng = np.random.RandomState(0)
    tokens = int(sizes.sum())
    store["ids"][:] = rng.randint(4, len(d), size=(tokens, K)).astype(np.int32)
    store["logits"][:] = -np.sort(-rng.randn(tokens, K), axis=1).astype(np.float16)
    store.mark_done(slice(None))
    array_store.finish(store)
    return path


# ------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def variants(tiny_data, tmp_path_factory):
    """tiny_data's train split rebinarized: reordered, with rotated targets, and with
    a permuted source / target dictionary and a bigger source dictionary (same text)."""
    root = str(tmp_path_factory.mktemp("variants"))
    src, tgt = split_lines(tiny_data, "train", "src"), split_lines(tiny_data, "train", "tgt")
    srcdict, tgtdict = (os.path.join(tiny_data, f"dict.{lang}.txt") for lang in ("src", "tgt"))
    order = list(range(len(src)))
    random.Random(0).shuffle(order)
    rotated = tgt[1:] + tgt[:1]  # same sources, each with another sentence's target
    out = {
        "shuffled": binarize(root, "shuffled", [src[i] for i in order], [tgt[i] for i in order], srcdict, tgtdict),
        "rotated_targets": binarize(root, "rotated_targets", src, rotated, srcdict, tgtdict),
        "permuted_src": binarize(root, "permuted_src", src, tgt,
                                 permuted_dict(tiny_data, "src", os.path.join(root, "perm.src.txt")), tgtdict),
        "permuted_tgt": binarize(root, "permuted_tgt", src, tgt, srcdict,
                                 permuted_dict(tiny_data, "tgt", os.path.join(root, "perm.tgt.txt"))),
        "bigger_src": binarize(root, "bigger_src", src, tgt,
                               bigger_dict(tiny_data, "src", os.path.join(root, "big.src.txt")), tgtdict),
    }
    # Each variant really is a same-size split that a sentence count cannot tell apart.
    for name, path in out.items():
        assert len(split_lines(path, "train", "src")) == len(src), name
    return out


@pytest.fixture(scope="module")
def distilled(tiny_data, tiny_teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("misalign") / "distilled")
    utils.distill_corpus(tiny_data, tiny_teacher, out, ["--beam", "1"])
    return out


def kd_task(data, *extra):
    return setup_task([data, *utils.TINY_TRANSFORMER, *KD_ARGS, "--cpu", *extra])


# ------------------------------------------------ 1. soft labels of another split
def test_training_refuses_a_soft_label_store_of_another_split(tiny_data, tmp_path):
    store = write_store(str(tmp_path / "valid_store"), tiny_data, "valid")
    save = str(tmp_path / "student")
    proc = utils.train(tiny_data, save, max_update=5, criterion=KD_ARGS, check=False,
                       extra=["--soft-labels", store])
    line = utils.usage_error(proc, "was dumped for the 'valid' split")
    assert "the training split (--train-subset) is 'train'" in line
    assert "fairseq-kd-dump-soft-labels ... --subset train" in line
    assert nothing_finished(save)


def test_log_names_the_splits_with_and_without_soft_labels(tiny_data, tmp_path, caplog):
    store = write_store(str(tmp_path / "train_store"), tiny_data, "train")
    task = kd_task(tiny_data, "--soft-labels", store)
    with caplog.at_level(logging.INFO, logger="fairseq_kd.tasks.translation_kd"):
        task.load_dataset("train")
        task.load_dataset("valid")
    assert isinstance(task.dataset("train"), KDLanguagePairDataset)
    assert not isinstance(task.dataset("valid"), KDLanguagePairDataset)
    assert f"soft labels for train: {store}" in caplog.text
    assert "no soft labels for valid (the store holds train)" in caplog.text


# ---------------------------------------------- 2. distilled corpus of other data
def test_distilled_metadata_records_sizes_and_dictionaries(tiny_data, distilled):
    from fairseq_kd.data.array_store import dictionary_checksum, sizes_checksum

    meta = json.load(open(os.path.join(distilled, "distill.train.json")))
    dicts = {lang: Dictionary.load(os.path.join(tiny_data, f"dict.{lang}.txt")) for lang in ("src", "tgt")}
    for lang, side in (("src", "source"), ("tgt", "target")):
        ds = data_utils.load_indexed_dataset(os.path.join(tiny_data, f"train.src-tgt.{lang}"), dicts[lang])
        assert meta[f"{side}_sizes_checksum"] == sizes_checksum(ds.sizes)
        assert meta[f"{side}_dictionary_checksum"] == dictionary_checksum(dicts[lang])
    task = kd_task(tiny_data, "--distilled-data", distilled)
    task.load_dataset("train")  # the data it was made from: accepted
    assert task.dataset("train").distilled is not None


@pytest.mark.parametrize("variant,what", [
    ("shuffled", "made from other source sentences than the data's"),
    ("rotated_targets", "made from other target sentences than the data's"),
    ("permuted_src", "made with another source dictionary than the data's"),
    ("permuted_tgt", "made with another target dictionary than the data's"),
])
def test_a_same_size_split_of_other_data_is_refused(variants, distilled, variant, what):
    task = kd_task(variants[variant], "--distilled-data", distilled)
    with pytest.raises(ValueError) as error:
        task.load_dataset("train")
    message = str(error.value)
    assert "\n" not in message and what in message
    assert f"re-run fairseq-kd-distill-corpus {variants[variant]} --subset train --out {distilled}" in message
    assert os.path.join(distilled, "distill.train.json") in message


def test_the_same_refusal_from_fairseq_train(variants, distilled, tmp_path):
    save = str(tmp_path / "student")
    proc = utils.train(variants["shuffled"], save, max_update=5, check=False,
                       criterion=["--task", "translation_kd", "--criterion", "seq_kd", "--label-smoothing", "0.1",
                                  "--kd-alpha", "0.5"], extra=["--distilled-data", distilled])
    utils.usage_error(proc, "the distilled train split was made from other source sentences", "re-run")
    assert nothing_finished(save)


@pytest.mark.parametrize("damage", ["old_fields", "no_meta"])
def test_a_corpus_that_cannot_be_checked_is_refused(tiny_data, distilled, tmp_path, damage):
    corpus = str(tmp_path / "corpus")
    shutil.copytree(distilled, corpus)
    meta_path = os.path.join(corpus, "distill.train.json")
    if damage == "old_fields":
        meta = json.load(open(meta_path))
        for side in ("source", "target"):
            meta.pop(f"{side}_sizes_checksum"), meta.pop(f"{side}_dictionary_checksum")
        json.dump(meta, open(meta_path, "w"))
        expected = "was written by an older fairseq-kd-distill-corpus"
    else:
        os.remove(meta_path)
        expected = f"has no {meta_path}"
    task = kd_task(tiny_data, "--distilled-data", corpus)
    with pytest.raises(ValueError, match=expected) as error:
        task.load_dataset("train")
    assert "re-run fairseq-kd-distill-corpus" in str(error.value)


def test_a_copied_gold_split_is_not_used_as_distilled(tiny_data, distilled, caplog):
    """valid was copied by --copy-splits (no distill.valid.json): gold target only, logged."""
    assert os.path.exists(os.path.join(distilled, "valid.src-tgt.tgt.bin"))
    task = kd_task(tiny_data, "--distilled-data", distilled)
    with caplog.at_level(logging.INFO, logger="fairseq_kd.tasks.translation_kd"):
        task.load_dataset("valid")
    assert not isinstance(task.dataset("valid"), KDLanguagePairDataset)
    assert "no distilled targets for valid" in caplog.text


# --------------------------------------------------------- 3. --left-pad-target
def test_translation_kd_soft_labels_refuse_left_padded_targets(tiny_data, tmp_path):
    store = write_store(str(tmp_path / "store"), tiny_data, "train")
    with pytest.raises(ValueError) as error:
        kd_task(tiny_data, "--soft-labels", store, "--left-pad-target")
    assert str(error.value) == (
        "translation_kd --soft-labels expects right-padded targets (soft-label rows are laid out from "
        "target column 0), got --left-pad-target: remove it (targets are right-padded by default)"
    )
    kd_task(tiny_data, "--soft-labels", store)  # right padding, the default: fine


def test_kd_dataset_refuses_soft_labels_on_left_padded_targets(tiny_data, tmp_path):
    store = write_store(str(tmp_path / "store"), tiny_data, "train")
    task = kd_task(tiny_data, "--left-pad-target")  # no --soft-labels: allowed
    task.load_dataset("train")
    with pytest.raises(ValueError, match="got --left-pad-target: remove it"):
        KDLanguagePairDataset(task.dataset("train"), soft_labels.SoftLabelStore(store))


def test_conditional_mlm_refuses_left_padded_targets(tmp_path):
    text = utils.make_copy_task(str(tmp_path / "text"), n_train=20, n_valid=5, n_test=5)
    data = utils.preprocess(text, str(tmp_path / "bin"), extra=["--joined-dictionary"])
    argv = [data, "--task", "conditional_mlm", "--arch", "bert_teacher_base", "--bert-path", str(tmp_path),
            "--criterion", "label_smoothed_cross_entropy", "--cpu"]
    with pytest.raises(ValueError) as error:
        setup_task(argv + ["--left-pad-target"])
    assert str(error.value) == (
        "conditional_mlm expects right-padded targets (masks are laid out from target column 0), "
        "got --left-pad-target: remove it (targets are right-padded by default)"
    )
    setup_task(argv)  # right padding: fine


def test_translation_lev_kd_refuses_left_padded_targets_at_setup(tiny_data, tiny_teacher):
    argv = [tiny_data, "--task", "translation_lev_kd", "--arch", "cmlm_transformer", "--noise", "random_mask",
            "--criterion", "nat_loss", "--cpu", "--teacher-path", tiny_teacher]
    with pytest.raises(ValueError, match=r"translation_lev_kd expects right-padded targets .* "
                                         r"got --left-pad-target: remove it"):
        setup_task(argv + ["--left-pad-target"])


# --------------------------------------- 4. the online teacher's source dictionary
@pytest.fixture(scope="module")
def other_source_teachers(variants, tmp_path_factory):
    """Teachers trained (1 update) on tiny_data's text with a permuted / a bigger source dictionary."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name in ("permuted_src", "bigger_src"):
        utils.train(variants[name], str(root / name), max_update=1)
        out[name] = str(root / name / "checkpoint_last.pt")
    return out


@pytest.mark.parametrize("teacher", ["permuted_src", "bigger_src"])
def test_teacher_with_another_source_dictionary_is_refused(tiny_data, variants, other_source_teachers,
                                                           teacher, tmp_path):
    d_T = Dictionary.load(os.path.join(variants[teacher], "dict.src.txt"))
    d_S = Dictionary.load(os.path.join(tiny_data, "dict.src.txt"))
    save = str(tmp_path / "student")
    proc = utils.train(tiny_data, save, max_update=5, criterion=KD_ARGS, check=False,
                       extra=["--teacher-path", other_source_teachers[teacher]])
    line = utils.usage_error(proc, f"{other_source_teachers[teacher]}: source dictionaries differ: "
                                 f"teacher dictionary has {len(d_T)} symbols, student dictionary has {len(d_S)}")
    if teacher == "permuted_src":
        assert len(d_T) == len(d_S)
        first = next(i for i in range(len(d_S)) if d_T[i] != d_S[i])
        assert f"first difference at index {first}: {d_T[first]!r} (teacher) vs {d_S[first]!r} (student)" in line
    assert "fairseq-preprocess --srcdict <student data>/dict.src.txt" in line
    assert "size mismatch" not in proc.stderr  # refused before load_state_dict
    assert nothing_finished(save)


def test_without_its_data_directory_the_teacher_source_size_is_compared(variants, other_source_teachers,
                                                                         tiny_data, tmp_path):
    """The teacher's data directory is gone: the encoder embedding's rows are compared."""
    from fairseq import checkpoint_utils

    from fairseq_kd.teacher import check_teacher_dictionary

    state = checkpoint_utils.load_checkpoint_to_cpu(other_source_teachers["bigger_src"])
    state["cfg"]["task"]["data"] = str(tmp_path / "gone")
    d_src = Dictionary.load(os.path.join(tiny_data, "dict.src.txt"))
    d_tgt = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    check_teacher_dictionary("t.pt", state, d_tgt)  # target only: the sizes agree
    with pytest.raises(ValueError) as error:
        check_teacher_dictionary("t.pt", state, d_tgt, d_src)
    assert str(error.value).startswith(
        f"t.pt: source dictionaries differ: teacher dictionary has {len(d_src) + 1} symbols, student "
        f"dictionary has {len(d_src)} (the teacher's data directory is gone, so only sizes were compared)"
    )
    assert state["model"]["encoder.embed_tokens.weight"].size(0) == len(d_src) + 1  # what was compared
