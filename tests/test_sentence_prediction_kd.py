"""--task sentence_prediction_kd: teacher logits in batches, unlabelled examples, store checks."""
import os
import shutil

import numpy as np
import pytest
import torch

import utils
from fairseq_kd import losses
from fairseq_kd.data import array_store, logits_store
from fairseq_kd.data.array_store import StoreError

N_TRAIN, N_AUG = 60, 25


def write_store(path, data, split, logits, num_classes=2, finish=True):
    """A classifier-logit store written by hand (what fairseq-kd-dump-logits writes)."""
    header = dict(logits_store.fingerprint(data, split), kind=logits_store.KIND, num_classes=num_classes,
                  teacher_sha256="0" * 64)
    store = array_store.create(path, header, {"logits": (logits.shape, "float32")}, units=len(logits))
    store["logits"][:] = logits
    store.mark_done(slice(None))
    if finish:
        array_store.finish(store)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train (labelled), train_aug = train + N_AUG unlabelled sentences (<unk>), valid."""
    root = tmp_path_factory.mktemp("spkd")
    text = utils.make_classification_task(str(root / "text"), n_train=N_TRAIN, n_valid=20)
    extra = utils.make_classification_task(str(root / "extra"), n_train=N_AUG, n_valid=1, seed=9)
    for key in ("input0", "label"):
        with open(os.path.join(text, f"train_aug.{key}"), "w") as out:
            out.write(open(os.path.join(text, f"train.{key}")).read())
            for line in open(os.path.join(extra, f"train.{key}")):
                out.write(line if key == "input0" else "<unk>\n")
    return utils.preprocess_classification(text, str(root / "bin"), splits=("train", "valid", "train_aug"))


def rule_logits(data, split):
    """Row i = [i, -i]: a store whose rows name their sentence."""
    n = logits_store.fingerprint(data, split)["sentences"]
    return np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)


def build(data, store, criterion=("--criterion", "logit_mse")):
    return utils.build_in_process([data, "--task", "sentence_prediction_kd", "--num-classes", "2",
                                   "--teacher-logits", store, *utils.TINY_BILSTM, *criterion])


def batches(task, split):
    task.load_dataset(split)
    return list(task.get_batch_iterator(dataset=task.dataset(split), max_sentences=16, seed=1, num_workers=0)
                .next_epoch_itr(shuffle=True))


def test_teacher_logits_follow_the_batch_order(data, tmp_path):
    store = write_store(str(tmp_path / "store"), data, "train_aug", rule_logits(data, "train_aug"))
    _, task, _, _ = build(data, store)
    seen = []
    for sample in batches(task, "train_aug"):
        ids = sample["id"]
        assert sample["teacher_logits"].dtype == torch.float32
        assert sample["teacher_logits"][:, 0].tolist() == ids.float().tolist()
        assert sample["teacher_logits"][:, 1].tolist() == (-ids.float()).tolist()
        target = sample["target"].view(-1)
        assert (target[ids >= N_TRAIN] == -1).all()  # augmented: no gold label
        assert (target[ids < N_TRAIN] >= 0).all()
        seen += ids.tolist()
    assert sorted(seen) == list(range(N_TRAIN + N_AUG))
    assert all("teacher_logits" not in s for s in batches(task, "valid"))  # other splits: gold only


def test_criterion_on_a_real_batch_equals_the_objective(data, tmp_path):
    rng = np.random.RandomState(0)
    logits = rng.randn(N_TRAIN + N_AUG, 2).astype(np.float32)
    store = write_store(str(tmp_path / "store"), data, "train_aug", logits)
    _, task, model, criterion = build(data, store, ("--criterion", "logit_mse", "--kd-alpha", "0.6"))
    model.train()
    torch.manual_seed(0)
    sample = batches(task, "train_aug")[0]
    loss, sample_size, log = criterion(model, sample)
    model.eval()  # same logits: dropout off for both
    loss, _, _ = criterion(model, sample)
    z_S = model(**sample["net_input"], features_only=True, classification_head_name="sentence_classification_head")[0]
    z_T = torch.from_numpy(logits[sample["id"].numpy()])
    expected = losses.logit_mse_objective(z_S, z_T, sample["target"].view(-1), 0.4)[0].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sample_size == len(sample["id"])


def test_store_is_checked_against_the_split(data, tmp_path):
    # made for another split: not attached to this one (validation stays gold-only) ...
    store = write_store(str(tmp_path / "valid"), data, "valid", rule_logits(data, "valid"))
    _, task, _, _ = build(data, store)
    task.load_dataset("train")
    assert not isinstance(task.dataset("train"), logits_store.TeacherLogitsDataset)
    # ... and each fingerprint must match the data
    with pytest.raises(StoreError, match="num_classes is 2 in the store, 3 here"):
        logits_store.LogitsStore(store).check(data, "valid", 3)
    other = utils.preprocess_classification(
        utils.make_classification_task(str(tmp_path / "other_text"), n_train=N_TRAIN, n_valid=20, seed=4),
        str(tmp_path / "other_bin"))
    with pytest.raises(StoreError, match="sizes_checksum"):
        logits_store.LogitsStore(store).check(other, "valid", 2)
    # a store whose header was edited to claim another split is refused on load
    shutil.copytree(store, tmp_path / "renamed")
    header = array_store.read_header(str(tmp_path / "renamed"))
    header["split"] = "train"
    array_store._write_json_atomic(str(tmp_path / "renamed" / "header.json"), header)
    _, task, _, _ = build(data, str(tmp_path / "renamed"))
    with pytest.raises(StoreError, match="sentences is 20 in the store, 60 here"):
        task.load_dataset("train")


def test_unfinished_or_missing_store_is_refused(data, tmp_path):
    write_store(str(tmp_path / "half"), data, "train", rule_logits(data, "train"), finish=False)
    with pytest.raises(StoreError, match="unfinished store"):
        build(data, str(tmp_path / "half"))
    with pytest.raises(FileNotFoundError, match="--teacher-logits directory not found"):
        build(data, str(tmp_path / "nowhere"))


def test_distills_through_fairseq_train(data, tmp_path):
    """BiLSTM_SOFT on train_aug (labelled + unlabelled) with an oracle teacher:
    logits +-4 from the rule that made the labels."""
    text = os.path.join(os.path.dirname(data), "text")
    words = [line.split() for line in open(os.path.join(text, "train_aug.input0"))]
    score = np.array([sum(1 if w[0] == "p" else -1 for w in ws) for ws in words])
    logits = np.stack([-4.0 * (score > 0), 4.0 * (score > 0)], 1).astype(np.float32)
    store = write_store(str(tmp_path / "store"), data, "train_aug", logits)
    proc = utils.train_classifier(data, str(tmp_path / "ck"), task="sentence_prediction_kd",
                                  criterion=["--criterion", "logit_mse"], max_update=24,
                                  extra=["--teacher-logits", store, "--train-subset", "train_aug"])
    logs = utils.json_logs(proc.stdout + proc.stderr)
    train = [r for r in logs if "train_mse_loss" in r]
    assert len(train) >= 2 and float(train[-1]["train_mse_loss"]) < float(train[0]["train_mse_loss"])
    assert float(train[-1]["train_loss"]) == pytest.approx(float(train[-1]["train_mse_loss"]))  # kd_alpha = 1
    valid = [r for r in logs if "valid_accuracy" in r]
    assert valid and "valid_mse_loss" not in valid[-1]  # validation: gold labels only
    assert "25 of 85 examples have no gold label" in proc.stdout + proc.stderr
