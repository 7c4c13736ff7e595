"""cli/dump_soft_labels.py end to end: every stored entry against a direct teacher
forward, resume after a kill, alignment under shuffled/bucketed/sharded batches,
and a student trained from the store and decoded with fairseq-generate."""
import json
import os
import signal

import numpy as np
import pytest
import torch

import utils
from fairseq_kd.data.array_store import StoreError
from fairseq_kd.data.soft_labels import SoftLabelStore
from fairseq_kd.tasks.conditional_mlm import num_passes, pass_mask
from fairseq_kd.teacher import load_teacher

K = 5


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    return tmp_path_factory.mktemp("dump"), tiny_bert["bin"], tiny_bert["teacher"]


def dump(data_bin, teacher, out, passes, extra=(), env=None, check=True):
    return utils.run([
        utils.command("fairseq-kd-dump-soft-labels"), data_bin, "--path", teacher, "--subset", "train",
        "--topk", str(K), "--passes", str(passes), "--out", out, "--cpu", *extra,
    ], env=env, check=check)


@pytest.fixture(scope="module")
def store3(setup):
    root, data_bin, teacher = setup
    out = str(root / "store3")
    proc = dump(data_bin, teacher, out, passes=3, extra=["--max-tokens", "300"])
    return out, proc


@pytest.mark.parametrize("passes", [0, 3])
def test_every_entry_equals_a_direct_forward_with_that_slot_masked(setup, store3, passes):
    root, data_bin, teacher = setup
    if passes == 3:
        out, proc = store3
    else:
        out = str(root / "store0")
        proc = dump(data_bin, teacher, out, passes=0)
    assert "dumped train: 120 sentences" in proc.stdout
    loaded = load_teacher(teacher, data=data_bin)
    model, task = loaded.models[0], loaded.task
    dataset = task.load_pair_dataset("train")
    store = SoftLabelStore(out)
    store.check(dataset, task.target_dictionary)
    assert store.passes == passes and store.topk == K
    gold_logprob = np.load(os.path.join(out, "gold_logprob.npy"))
    counts = {"tokens": 0, "top1": 0, "in_topk": 0, "nll": 0.0}
    for i in range(len(dataset)):
        src, tgt = dataset[i]["source"], dataset[i]["target"]
        ids_i, logits_i = store[i]
        assert ids_i.shape == (len(tgt), K)  # every target token, EOS included
        seen = torch.zeros(len(tgt), dtype=torch.bool)
        for p in range(num_passes(len(tgt), passes)):
            mask = pass_mask(len(tgt), passes, p)
            with torch.no_grad():
                logits = model(src[None], None, tgt.masked_fill(mask, model.mask_idx)[None])[0][0]  # T x V
            values, ids = logits[mask].topk(K, dim=-1)
            assert torch.equal(ids_i[mask], ids), (i, p)
            assert torch.allclose(logits_i[mask].float(), values, atol=2e-2, rtol=1e-3)
            # the teacher's quality: log p(gold) from the full softmax
            gold = tgt[mask]
            lp = torch.log_softmax(logits[mask].double(), -1).gather(1, gold[:, None]).squeeze(1)
            a = int(store.offsets[i])
            stored = torch.from_numpy(gold_logprob[a:a + len(tgt)][mask.numpy()]).double()
            assert torch.allclose(stored, lp, atol=1e-4), (i, p)
            counts["tokens"] += len(gold)
            counts["top1"] += int((ids[:, 0] == gold).sum())
            counts["in_topk"] += int((ids == gold[:, None]).any(1).sum())
            counts["nll"] -= float(lp.sum())
            seen |= mask
        assert seen.all()
    quality = store.quality
    assert quality["tokens"] == counts["tokens"] == len(store.ids)
    assert quality["top1_correct"] == counts["top1"] and quality["gold_in_topk"] == counts["in_topk"]
    assert 0 < quality["top1_correct"] <= quality["gold_in_topk"] <= quality["tokens"]
    assert quality["top1_accuracy"] == pytest.approx(100 * counts["top1"] / counts["tokens"])
    assert quality["gold_nll"] == pytest.approx(counts["nll"] / counts["tokens"], rel=1e-4)
    assert f"teacher top-1 accuracy {quality['top1_accuracy']:.1f}%" in proc.stdout
    assert f"gold word in the stored top-{K} {quality['gold_in_topk_rate']:.1f}%" in proc.stdout
    assert json.load(open(os.path.join(out, "command.json")))["args"]["passes"] == passes


def test_killed_dump_resumes_to_the_same_store(setup, store3):
    root, data_bin, teacher = setup
    out = str(root / "killed")
    proc = dump(data_bin, teacher, out, passes=3, extra=["--max-tokens", "300"],
                env={"FAIRSEQ_KD_DUMP_KILL_AFTER": "3"}, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "header.json"))
    with pytest.raises(StoreError, match="unfinished store"):
        SoftLabelStore(out)
    done = np.load(os.path.join(out, "done.npy"))
    assert 0 < done.sum() < len(done)
    # a rerun with other settings is refused, not mixed in
    code, err = dump_in_process(data_bin, teacher, out, passes=2)
    assert code == 2 and "unfinished store written with other settings (passes)" in err
    proc = dump(data_bin, teacher, out, passes=3, extra=["--max-tokens", "300"])
    assert f"({int(done.sum())} sentences resumed)" in proc.stdout
    for name in ("ids", "logits", "gold_logprob", "offsets"):
        assert np.array_equal(np.load(os.path.join(out, f"{name}.npy")), np.load(os.path.join(store3[0], f"{name}.npy")))
    assert SoftLabelStore(out).quality == SoftLabelStore(store3[0]).quality
    assert not os.path.exists(os.path.join(out, "done.npy"))
    # a finished store is never overwritten
    code, err = dump_in_process(data_bin, teacher, out, passes=3)
    assert code == 2 and "already holds a finished store" in err


def dump_in_process(data_bin, teacher, out, passes):
    """(exit status, stderr) of the command run in this process (no start-up cost)."""
    import contextlib
    import io

    from fairseq_kd.cli.dump_soft_labels import cli_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        cli_main([data_bin, "--path", teacher, "--topk", str(K), "--passes", str(passes), "--out", out, "--cpu"])
    return exit_.value.code, err.getvalue()


def test_errors_name_the_bad_input(setup, tmp_path):
    root, data_bin, teacher = setup
    code, err = dump_in_process(data_bin, str(tmp_path / "nope.pt"), str(tmp_path / "o"), passes=3)
    assert code == 2 and "teacher checkpoint not found: " + str(tmp_path / "nope.pt") in err
    code, err = dump_in_process(str(tmp_path / "nodata"), teacher, str(tmp_path / "o"), passes=3)
    assert code == 2 and "data directory not found: " + str(tmp_path / "nodata") in err


def student_args(data_bin, store, kd_topk=3):
    return [data_bin, "--task", "translation_kd", "--soft-labels", store, "--criterion", "word_kd",
            "--kd-alpha", "0.5", "--kd-temperature", "10", "--kd-topk", str(kd_topk), "--label-smoothing", "0.1",
            *utils.TINY_TRANSFORMER, "--cpu"]


@pytest.mark.parametrize("num_shards", [1, 2])
def test_soft_labels_follow_their_sentences_in_shuffled_bucketed_sharded_batches(setup, store3, num_shards):
    root, data_bin, _ = setup
    _, task, _, _ = utils.build_in_process(student_args(data_bin, store3[0]))
    task.load_dataset("train")
    store = SoftLabelStore(store3[0])
    seen = []
    for shard_id in range(num_shards):  # as GPUs would see them
        itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=150, seed=5, num_workers=0,
                                      num_shards=num_shards, shard_id=shard_id,
                                      disable_iterator_cache=True).next_epoch_itr(shuffle=True)
        for batch in itr:
            if not batch:
                continue
            for b, i in enumerate(batch["id"].tolist()):
                ids_i, logits_i = store[i]
                n = len(ids_i)
                assert torch.equal(batch["soft_labels"]["ids"][b, :n], ids_i)
                assert torch.equal(batch["soft_labels"]["logits"][b, :n], logits_i)
                assert batch["target"][b, :n].ne(1).all() and batch["target"][b, n:].eq(1).all()
                seen.append(i)
    assert sorted(seen) == list(range(120))  # each sentence once across shards


def test_student_trains_from_the_store_and_decodes(setup, store3, tmp_path):
    root, data_bin, _ = setup
    proc = utils.train(data_bin, str(tmp_path / "student"), max_update=40, criterion=(), extra=[
        "--task", "translation_kd", "--soft-labels", store3[0], "--criterion", "word_kd", "--kd-alpha", "0.5",
        "--kd-temperature", "10", "--kd-topk", "3", "--label-smoothing", "0.1", "--update-freq", "2",
    ])
    logs = utils.json_logs(proc.stdout + proc.stderr)
    kd = [float(r["kd_loss"]) for r in logs if "kd_loss" in r and "num_updates" in r]
    assert kd and all(np.isfinite(kd))
    assert "soft labels for train" in proc.stdout + proc.stderr
    hyps = utils.generate(data_bin, str(tmp_path / "student" / "checkpoint_last.pt"))
    assert len(hyps) == 20  # every test sentence decoded


def test_student_refuses_a_store_of_other_data(setup, store3, tmp_path):
    _, other_bin = utils.make_bert_task(str(tmp_path), n_train=100)
    proc = utils.train(other_bin, str(tmp_path / "s"), max_update=2, criterion=(), check=False, extra=[
        "--task", "translation_kd", "--soft-labels", store3[0], "--criterion", "word_kd",
    ])
    utils.usage_error(proc, "does not match the train split and dictionary it is used with: sentences is 120 in the "
                            "store, 100 here")


def test_an_lstm_student_distills_from_the_store(setup, store3):
    root, data_bin, _ = setup
    lstm = ["--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
            "--decoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-hidden-size", "16",
            "--decoder-out-embed-dim", "16"]
    args = student_args(data_bin, store3[0])
    args[args.index("--arch"):args.index("--arch") + len(utils.TINY_TRANSFORMER)] = lstm
    _, task, model, criterion = utils.build_in_process(args)
    sample = utils.first_batch(task)
    loss, sample_size, logs = criterion(model, sample)
    loss.backward()
    assert torch.isfinite(loss) and logs["kd_tokens"] == sample_size == sample["ntokens"]
    assert float(logs["kd_loss"]) > 0
