"""Shared fixtures: a tiny binarized copy task and a teacher trained on it, built once."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import utils  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Binarized synthetic src->tgt data (train/valid/test)."""
    root = tmp_path_factory.mktemp("tiny")
    utils.make_copy_task(str(root / "text"))
    return utils.preprocess(str(root / "text"), str(root / "bin"))


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data, tmp_path_factory):
    """A 1-layer Transformer trained 120 updates on tiny_data: checkpoint path."""
    save = tmp_path_factory.mktemp("teacher")
    utils.train(tiny_data, str(save), max_update=120)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="session")
def tiny_teacher2(tiny_data, tmp_path_factory):
    """A second teacher (another seed) for ensembles."""
    save = tmp_path_factory.mktemp("teacher2")
    utils.train(tiny_data, str(save), max_update=60, extra=["--seed", "7"])
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT fine-tuned 25 updates as a C-MLM teacher on a 120-sentence
    copy task: {"bin": data directory, "bert": BERT folder, "teacher": checkpoint}."""
    root = tmp_path_factory.mktemp("bert")
    bert_dir, data_bin = utils.make_bert_task(str(root), n_train=120)
    utils.train_bert_teacher(data_bin, bert_dir, str(root / "teacher"), max_update=25)
    return {"bin": data_bin, "bert": bert_dir, "teacher": str(root / "teacher" / "checkpoint_last.pt")}


@pytest.fixture(scope="session")
def nat_data(tmp_path_factory):
    """The copy task with a joined dictionary, an autoregressive teacher and its distilled
    corpus, for the NAT students (read only): {"bin", "teacher", "distilled"}."""
    return utils.make_nat_data(str(tmp_path_factory.mktemp("nat")))
