"""cli/dump_soft_labels.py with autoregressive translation teachers (one model or an
ensemble): every stored row against a direct teacher-forced forward, a student's
loss from the store against online word_kd's on the same batch (K = V and K = 8),
the header, sharding and resume, and a student trained through fairseq-train."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch

import utils
from fairseq_kd.cli import dump_soft_labels, merge_shards
from fairseq_kd.data.array_store import file_checksum
from fairseq_kd.data.soft_labels import SoftLabelStore, joined_checksum
from fairseq_kd.teacher import load_teacher

ARRAYS = ("ids", "logits", "gold_logprob", "offsets")
BATCHING = ("--max-tokens", "300", "--sort-window", "64")  # several sentences a forward, padded
T = 2.0  # the KD temperature of the loss tests (and the ensemble stores' dump temperature)


def _dump(data, path, out, *extra):
    """fairseq-kd-dump-soft-labels in this process (the same dump() the command runs)."""
    args = dump_soft_labels.build_parser().parse_args([data, "--path", path, "--out", str(out), "--cpu", *BATCHING,
                                                     *extra])
    return dump_soft_labels.run(args)


def _cli(argv):
    """(exit status, stderr) of the command run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        dump_soft_labels.cli_main([str(a) for a in argv])
    return exit_.value.code, err.getvalue()


def _arrays(path):
    return {name: np.load(os.path.join(path, f"{name}.npy")) for name in ARRAYS}


def _header(path):
    return json.load(open(os.path.join(path, "header.json")))


@pytest.fixture(scope="module")
def stores(tiny_data, tiny_teacher, tiny_teacher2, tmp_path_factory):
    """Stores of the 300-sentence train split: one teacher with K = V and K = 8, the
    ensemble of both at T with K = V and K = 8 (the last through the real command)."""
    root = tmp_path_factory.mktemp("at_stores")
    ensemble = f"{tiny_teacher}:{tiny_teacher2}"
    task = load_teacher(tiny_teacher, data=tiny_data).task
    V = len(task.target_dictionary)
    _dump(tiny_data, tiny_teacher, root / "one_V", "--topk", str(V))
    _dump(tiny_data, tiny_teacher, root / "one_8", "--topk", "8")
    _dump(tiny_data, ensemble, root / "ens_V", "--topk", str(V), "--temperature", str(T))
    proc = utils.run([utils.command("fairseq-kd-dump-soft-labels"), tiny_data, "--path", ensemble, "--topk", "8",
                      "--temperature", str(T), "--out", str(root / "ens_8"), "--cpu", *BATCHING])
    return {"root": root, "V": V, "ensemble": ensemble, "stdout": proc.stdout,
            **{name: str(root / name) for name in ("one_V", "one_8", "ens_V", "ens_8")}}


def _direct(models, dataset, i):
    """Each model's T x V logits for sentence i alone, teacher-forced on its gold target
    (prev_output_tokens = </s> followed by the target without its final </s>)."""
    item = dataset[i]
    src, tgt = item["source"], item["target"]
    prev = torch.cat([tgt.new_tensor([tgt[-1]]), tgt[:-1]])  # the target ends in </s>
    with torch.no_grad():
        return [m(src_tokens=src[None], src_lengths=torch.tensor([len(src)]), prev_output_tokens=prev[None])[0][0]
                for m in models], tgt


def test_every_row_equals_a_direct_teacher_forced_forward(stores, tiny_data, tiny_teacher):
    teacher = load_teacher(tiny_teacher, data=tiny_data)
    kind, task = dump_soft_labels.teacher_kind(teacher), teacher.task
    assert kind == "translation" and len(teacher) == 1
    task.load_dataset("train")
    dataset = task.dataset("train")
    store = SoftLabelStore(stores["one_8"])
    store.check(dataset, task.target_dictionary)
    gold_logprob = np.load(os.path.join(stores["one_8"], "gold_logprob.npy"))
    top1 = in_topk = ties = 0
    for i in range(len(dataset)):
        (logits,), tgt = _direct(teacher.models, dataset, i)
        ids_i, values_i = store[i]
        assert ids_i.shape == (len(tgt), 8)  # every target token, EOS included
        values, ids = logits.topk(8, dim=-1)
        # The stored values are the top-8 logits, and they are the logits of the stored ids
        # (the ids are exact except between logits that tie to within batching round-off).
        assert torch.allclose(values_i.float(), values, atol=1e-2, rtol=1e-3), i
        assert torch.allclose(logits.gather(1, ids_i), values, atol=1e-2, rtol=1e-3), i
        tie = (values[:, :, None] - values[:, None, :]).abs().lt(1e-4).sum(-1).gt(1)
        assert (ids_i.eq(ids) | tie).all(), i
        ties += int((ids_i.ne(ids)).sum())
        lp = torch.log_softmax(logits.double(), -1).gather(1, tgt[:, None]).squeeze(1)
        a = int(store.offsets[i])
        assert np.allclose(gold_logprob[a:a + len(tgt)], lp.numpy(), atol=1e-4), i
        top1 += int(ids[:, 0].eq(tgt).sum())
        in_topk += int(ids.eq(tgt[:, None]).any(1).sum())
    assert ties <= 2
    quality = store.quality
    assert quality["tokens"] == len(store.ids) == int(dataset.tgt_sizes.sum())
    assert abs(quality["top1_correct"] - top1) <= ties and abs(quality["gold_in_topk"] - in_topk) <= ties
    assert quality["top1_accuracy"] > 50  # a trained teacher: the rows are not noise


def test_an_ensemble_stores_the_log_of_its_averaged_probabilities(stores, tiny_data):
    teacher = load_teacher(stores["ensemble"], data=tiny_data)
    task = teacher.task
    assert len(teacher) == 2
    task.load_dataset("train")
    dataset = task.dataset("train")
    store = SoftLabelStore(stores["ens_V"])
    assert store.topk == stores["V"] and store.temperature == T
    gold_logprob = np.load(os.path.join(stores["ens_V"], "gold_logprob.npy"))
    got, want = [], []
    for i in range(0, len(dataset), 7):
        logits, tgt = _direct(teacher.models, dataset, i)
        q = sum(torch.softmax(z.double() / T, -1) for z in logits) / 2  # L x V, the average at T
        ids_i, values_i = store[i]
        assert torch.equal(ids_i.sort(-1).values, torch.arange(stores["V"]).expand_as(ids_i))  # K = V: all words
        got.append(torch.exp(values_i.double() / T))  # the stored T log q
        want.append(q.gather(1, ids_i))
        q1 = sum(torch.softmax(z.double(), -1) for z in logits) / 2  # gold log-probability at T = 1
        a = int(store.offsets[i])
        assert np.allclose(gold_logprob[a:a + len(tgt)], q1.gather(1, tgt[:, None]).squeeze(1).log().numpy(),
                           atol=1e-4), i
    got, want = torch.cat(got), torch.cat(want)
    utils.assert_close_by_norm(got, want, rtol=2e-3, what="exp(values / T) vs the averaged q")
    assert (want[:, :-1] >= want[:, 1:] - 1e-6).all()  # sorted by the averaged probability
    assert torch.allclose(got.sum(-1), torch.ones(len(got), dtype=got.dtype), atol=5e-3)


def _student(data, teacher_args, kd_topk=0, temperature=T):
    argv = [data, "--task", "translation_kd", *teacher_args, "--criterion", "word_kd", "--kd-alpha", "0.5",
            "--kd-temperature", str(temperature), "--kd-topk", str(kd_topk), "--label-smoothing", "0.1",
            *utils.TINY_TRANSFORMER, "--cpu"]
    _, task, model, criterion = utils.build_in_process(argv)
    return task, model, criterion


@pytest.mark.parametrize("store_name,K", [("one_V", "V"), ("one_8", 8), ("ens_V", "V"), ("ens_8", 8)])
def test_the_student_loss_from_the_store_equals_online_word_kd(stores, tiny_data, store_name, K):
    """K = V: the store is the teacher's whole distribution; K = 8: online --kd-topk 8.
    Equal within the float16 rounding of the stored values, at T = 2."""
    teacher_path = stores["ensemble"] if store_name.startswith("ens") else stores["ensemble"].split(":")[0]
    online_topk = 0 if K == "V" else K
    task_S, model_S, criterion_S = _student(tiny_data, ["--soft-labels", stores[store_name]])
    task_O, model_O, criterion_O = _student(tiny_data, ["--teacher-path", teacher_path], kd_topk=online_topk)
    model_O.load_state_dict(model_S.state_dict())  # the same student (loading the teacher drew random numbers)
    model_S.eval(), model_O.eval()  # no dropout: the two forwards are the same
    sample_S, sample_O = utils.first_batch(task_S), utils.first_batch(task_O)
    assert torch.equal(sample_S["id"], sample_O["id"]) and torch.equal(sample_S["target"], sample_O["target"])
    assert sample_S["soft_labels"]["ids"].size(-1) == (stores["V"] if K == "V" else 8)
    loss_S, size_S, logs_S = criterion_S(model_S, sample_S)
    loss_O, size_O, logs_O = criterion_O(model_O, sample_O)
    assert size_S == size_O == sample_S["ntokens"]
    utils.assert_close_by_norm(loss_S.detach(), loss_O.detach(), rtol=1e-3, what="loss")
    utils.assert_close_by_norm(torch.as_tensor(logs_S["kd_loss"]), torch.as_tensor(logs_O["kd_loss"]), rtol=1e-3,
                               what="kd_loss")
    # The teacher distributions themselves, and not trivially: with K = 8 the store's is
    # online --kd-topk 8's, much closer to it than to the full-vocabulary one.
    mask = sample_S["target"].ne(task_S.target_dictionary.pad())
    V = stores["V"]

    def dense(q, ids):
        return q if ids is None else torch.zeros(len(q), V).scatter_(1, ids, q)

    q_S = dense(*task_S.teacher_soft_targets(sample_S, model_S, mask, T, 0)[:2])
    q_O = dense(*task_O.teacher_soft_targets(sample_O, model_O, mask, T, online_topk)[:2])
    err = (q_S - q_O).norm()
    assert err <= 1e-3 * q_O.norm()
    if K == 8:
        q_V = task_O.teacher_soft_targets(sample_O, model_O, mask, T, 0)[0]
        assert 10 * err < (q_S - q_V).norm()


def test_an_ensemble_store_refuses_another_kd_temperature(stores, tiny_data):
    task, model, criterion = _student(tiny_data, ["--soft-labels", stores["ens_8"]], temperature=1.0)
    with pytest.raises(ValueError, match=r"averaged at temperature 2, the criterion's is 1: train with "
                                         r"--kd-temperature 2"):
        criterion(model, utils.first_batch(task))
    # a single teacher's raw logits are exact at any temperature
    task, model, criterion = _student(tiny_data, ["--soft-labels", stores["one_8"]], temperature=1.0)
    loss, _, _ = criterion(model, utils.first_batch(task))
    assert torch.isfinite(loss)


def test_header_records_the_teacher(stores, tiny_teacher, tiny_teacher2):
    one, ens = _header(stores["one_8"]), _header(stores["ens_8"])
    sha1, sha2 = file_checksum(tiny_teacher), file_checksum(tiny_teacher2)
    assert one["version"] == 4 and one["values"] == "topk" and one["teacher_kind"] == ens["teacher_kind"] == "translation"
    assert one["teacher_checksums"] == [sha1] and one["teacher_checksum"] == sha1
    assert one["temperature"] is None and one["passes"] is None and one["topk"] == 8
    assert ens["teacher_checksums"] == [sha1, sha2]
    assert ens["teacher_checksum"] == joined_checksum([sha1, sha2]) not in (sha1, sha2)
    assert ens["temperature"] == T and ens["passes"] is None
    assert ens["teacher"]["path"] == "checkpoint_last.pt:checkpoint_last.pt"
    for key in ("top1_accuracy", "gold_in_topk_rate", "gold_nll"):
        assert key in ens["teacher_quality"]
    store = SoftLabelStore(stores["ens_8"])
    assert (store.teacher_kind, store.temperature, store.passes) == ("translation", T, None)
    assert "dumped train: 300 sentences" in stores["stdout"]
    assert f"teacher top-1 accuracy {ens['teacher_quality']['top1_accuracy']:.1f}%" in stores["stdout"]
    assert "2 translation teachers, probabilities averaged at T=2 (train with --kd-temperature 2)" in stores["stdout"]


def test_two_shards_merged_and_a_resumed_dump_equal_one_process(stores, tiny_data, tiny_teacher, tmp_path,
                                                                monkeypatch):
    for i in range(2):
        summary = _dump(tiny_data, tiny_teacher, tmp_path / "two", "--topk", "8", "--num-shards", "2",
                        "--shard-id", str(i))
        assert summary["sentence_range"][0] % 64 == 0  # shards start at --sort-window blocks
    merge_shards.merge(str(tmp_path / "two"), remove_parts=True)
    single = _arrays(stores["one_8"])
    for name, array in _arrays(tmp_path / "two").items():
        assert array.dtype == single[name].dtype and np.array_equal(array, single[name]), name
    assert _header(tmp_path / "two") == _header(stores["one_8"])

    # A dump that dies after 3 batches, rerun: resumes and writes the same store.
    scored = dump_soft_labels.translation_topk
    calls = []

    def dies_after_3(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt("killed")
        return scored(*args, **kwargs)

    monkeypatch.setattr(dump_soft_labels, "translation_topk", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        _dump(tiny_data, tiny_teacher, tmp_path / "resumed", "--topk", "8")
    monkeypatch.setattr(dump_soft_labels, "translation_topk", scored)
    assert not os.path.exists(tmp_path / "resumed" / "header.json")
    summary = _dump(tiny_data, tiny_teacher, tmp_path / "resumed", "--topk", "8")
    assert 0 < summary["resumed_sentences"] < 300
    for name, array in _arrays(tmp_path / "resumed").items():
        assert np.array_equal(array, single[name]), name
    assert _header(tmp_path / "resumed") == _header(stores["one_8"])


def test_options_that_do_not_apply_are_refused(stores, tiny_data, tiny_teacher, tmp_path):
    code, err = _cli([tiny_data, "--path", tiny_teacher, "--passes", "3", "--out", tmp_path / "o", "--cpu"])
    assert code == 2 and "--passes is for conditional_mlm teachers" in err
    code, err = _cli([tiny_data, "--path", tiny_teacher, "--temperature", "2", "--out", tmp_path / "o", "--cpu"])
    assert code == 2 and "--temperature is for ensembles" in err
    code, err = _cli([tiny_data, "--path", f"{tiny_teacher}:{tmp_path / 'nope.pt'}", "--out", tmp_path / "o"])
    assert code == 2 and f"teacher checkpoint not found: {tmp_path / 'nope.pt'}" in err
    assert not os.path.exists(tmp_path / "o")


def test_a_conditional_mlm_store_says_so(tiny_bert, tmp_path):
    summary = _dump(tiny_bert["bin"], tiny_bert["teacher"], tmp_path / "cmlm", "--topk", "4", "--passes", "3")
    header = _header(tmp_path / "cmlm")
    assert summary["teacher_kind"] == header["teacher_kind"] == "conditional_mlm"
    assert header["passes"] == 3 and header["temperature"] is None
    assert header["teacher_checksums"] == [header["teacher_checksum"]] == [file_checksum(tiny_bert["teacher"])]
    code, err = _cli([tiny_bert["bin"], "--path", f"{tiny_bert['teacher']}:{tiny_bert['teacher']}",
                      "--out", tmp_path / "o", "--cpu"])
    assert code == 2 and "ensembles of conditional_mlm teachers are not supported" in err
    code, err = _cli([tiny_bert["bin"], "--path", tiny_bert["teacher"], "--temperature", "2",
                      "--out", tmp_path / "o", "--cpu"])
    assert code == 2 and "--temperature is for ensembles of translation teachers" in err


def test_a_student_trains_from_an_ensemble_store(stores, tiny_data, tmp_path):
    proc = utils.train(tiny_data, str(tmp_path / "student"), max_update=40, criterion=(), extra=[
        "--task", "translation_kd", "--soft-labels", stores["ens_8"], "--criterion", "word_kd", "--kd-alpha", "0.5",
        "--kd-temperature", str(T), "--label-smoothing", "0.1",
    ])
    logs = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "kd_loss" in r and "num_updates" in r]
    assert len(logs) >= 3
    loss, kd = [float(r["loss"]) for r in logs], [float(r["kd_loss"]) for r in logs]
    assert loss[-1] < loss[0] and kd[-1] < kd[0]
    assert "soft labels for train" in proc.stdout + proc.stderr
