"""Multi-process (data-parallel) training with the plugin, on CPU.

fairseq runs DDP on CPU only as one ``fairseq-train`` process per rank, joined
by ``--distributed-init-method tcp://...`` with ``--distributed-no-spawn``,
``--distributed-backend gloo`` and ``--ddp-backend legacy_ddp`` (torchrun
fails in fairseq's launcher on CPU; c10d DDP passes GPU device ids). Two such
ranks see the batches that one process with ``--update-freq 2`` groups into an
update (rank r gets batches r, r + 2, ... of the same shuffled epoch), and
fairseq sums their gradients over ranks: after a few updates the student must
be the same, for word KD from an online teacher, word KD from a soft-label
store, sequence-level KD from a distilled corpus, and on-policy word KD (each
batch of an update flips its own coin, the same in both runs). Dropout is off, since
each rank and each delayed-update step draws its own masks.
"""
import json
import os
import socket
import subprocess

import numpy as np
import pytest
import torch

import utils

WORLD = 2
UPDATES = 5
MAX_TOKENS = 200  # ~25 sentences a batch: the 2 x 5 batches stay within tiny_data's first epoch

DETERMINISTIC_STUDENT = [*utils.TINY_TRANSFORMER, "--dropout", "0", "--attention-dropout", "0",
                         "--activation-dropout", "0"]


@pytest.fixture(scope="module")
def soft_label_store(tiny_data, tmp_path_factory):
    """A top-K store of tiny_data's train split written with the store writer
    (random rows, K = 4: the test checks alignment and arithmetic, not quality)."""
    from fairseq.data import Dictionary, data_utils

    from fairseq_kd.data import array_store, soft_labels

    path = str(tmp_path_factory.mktemp("distributed") / "store")
    tgt_dict = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    target = data_utils.load_indexed_dataset(os.path.join(tiny_data, "train.src-tgt.tgt"), tgt_dict)
    sizes = np.array(target.sizes, dtype=np.int64)  # a copy: the memory map closes with `target`
    K, tokens = 4, int(np.sum(sizes))
    header = soft_labels.make_header("train", K, 0, tgt_dict, sizes, teacher_checksum="random")
    store = soft_labels.create_or_resume(path, header, sizes)
    rng = np.random.RandomState(0)
    store["ids"][:] = rng.randint(tgt_dict.nspecial, len(tgt_dict), size=(tokens, K)).astype(np.int32)
    store["logits"][:] = -np.sort(-3 * rng.randn(tokens, K), axis=1).astype(np.float16)
    store.mark_done(slice(None))
    array_store.finish(store)
    return path


@pytest.fixture(scope="module")
def distilled(tiny_data, tiny_teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distributed") / "distilled")
    utils.distill_corpus(tiny_data, tiny_teacher, out, ["--beam", "2"])
    return out


@pytest.fixture(scope="module")
def plain_student(tiny_data):
    """A plain translation student of the same architecture (no teacher anywhere)."""
    _, _, model, _ = utils.build_in_process([tiny_data, *DETERMINISTIC_STUDENT, "--cpu"])
    return model


def _kd_args(case, tiny_teacher, soft_label_store, distilled):
    word_kd = ["--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5", "--kd-temperature", "2"]
    return {
        "teacher": ["--task", "translation_kd", "--teacher-path", tiny_teacher, *word_kd],
        "on_policy": ["--task", "translation_kd", "--teacher-path", tiny_teacher, *word_kd,
                      "--kd-on-policy-ratio", "0.5"],
        "soft_labels": ["--task", "translation_kd", "--soft-labels", soft_label_store, *word_kd, "--kd-topk", "3"],
        "seq_kd": ["--task", "translation_kd", "--distilled-data", distilled, "--criterion", "seq_kd",
                   "--label-smoothing", "0.1", "--kd-alpha", "0.5"],
    }[case]


def _logged(output, key):
    """The values of ``key`` in fairseq-train's per-update json log lines."""
    return [float(json.loads(line[line.index("{"):])[key]) for line in output.splitlines()
            if '"train_inner"' in line or (f'"{key}"' in line and '"update"' in line and "{" in line)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_command(data_bin, save_dir, kd_args, num_workers, extra=()):
    return [
        utils.command("fairseq-train"), data_bin, "--user-dir", utils.USER_DIR, "--save-dir", save_dir,
        *DETERMINISTIC_STUDENT, *kd_args,
        "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "2",
        "--max-tokens", str(MAX_TOKENS), "--max-update", str(UPDATES), "--seed", "1",
        "--num-workers", str(num_workers), "--log-format", "json", "--log-interval", "1",
        "--no-epoch-checkpoints", "--no-progress-bar", "--cpu", "--disable-validation", *extra,
    ]


def _run_together(commands, log_dir, timeout=300):
    """Start every command at once (the ranks wait for each other), wait for all, and
    fail with the output of those that failed; a hung rank is killed. Output goes to
    files, not pipes, so that no process blocks on a full pipe while another waits."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [os.path.join(log_dir, f"command{i}.log") for i in range(len(commands))]
    procs = []
    try:
        for c, log in zip(commands, logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen([str(a) for a in c], env=env, stdout=out, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [open(log).read() for log in logs]
    failed = [(c, p.returncode, out) for c, p, out in zip(commands, procs, outputs) if p.returncode != 0]
    assert not failed, "\n".join(
        f"command failed ({code}): {' '.join(map(str, c))}\n{out[-4000:]}" for c, code, out in failed)
    return outputs


@pytest.mark.parametrize("case,num_workers", [("teacher", 1), ("soft_labels", 0), ("seq_kd", 1), ("on_policy", 1)])
def test_two_ranks_equal_one_process_with_update_freq_2(
    case, num_workers, tiny_data, tiny_teacher, soft_label_store, distilled, plain_student, tmp_path
):
    from fairseq_kd import checkpoint

    kd_args = _kd_args(case, tiny_teacher, soft_label_store, distilled)
    ranks_dir, single_dir = str(tmp_path / "ranks"), str(tmp_path / "single")
    port = _free_port()
    distributed = ["--distributed-world-size", str(WORLD), "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                   "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    outputs = _run_together(
        [_train_command(tiny_data, ranks_dir, kd_args, num_workers, [*distributed, "--distributed-rank", str(r)])
         for r in range(WORLD)]
        + [_train_command(tiny_data, single_dir, kd_args, num_workers, ["--update-freq", str(WORLD)])],
        str(tmp_path),
    )
    assert f"distributed init (rank 1): tcp://127.0.0.1:{port}" in outputs[1]
    if case == "on_policy":
        # Each of an update's batches flips its own coin, the same in both runs (rank r's
        # batch is the single process's r-th): rank 0 logs the fraction over both ranks.
        fractions = [_logged(out, "on_policy") for out in (outputs[0], outputs[2])]
        assert fractions[0] == fractions[1] and len(fractions[0]) == UPDATES, fractions
        assert 0.5 in fractions[0] and 0 < sum(fractions[0]) < UPDATES, fractions

    ranks = checkpoint.load(os.path.join(ranks_dir, "checkpoint_last.pt"))
    single = checkpoint.load(os.path.join(single_dir, "checkpoint_last.pt"))
    for state in (ranks, single):
        assert state["optimizer_history"][-1]["num_updates"] == UPDATES
        assert state["extra_state"]["train_iterator"]["epoch"] == 1
    assert ranks["extra_state"]["train_iterator"]["iterations_in_epoch"] == UPDATES
    assert single["extra_state"]["train_iterator"]["iterations_in_epoch"] == WORLD * UPDATES

    # The student only: the keys and shapes of a plain student, nothing of the teacher,
    # and the optimizer holds state for the student's parameters only.
    plain = plain_student.state_dict()
    for state in (ranks, single):
        assert {k: tuple(v.shape) for k, v in state["model"].items()} == {k: tuple(v.shape) for k, v in plain.items()}
        assert not state.get("criterion")
        assert len(state["last_optimizer_state"]["state"]) == len(list(plain_student.parameters()))

    for name, want in single["model"].items():
        utils.assert_close_by_norm(ranks["model"][name], want, rtol=1e-4, what=name)

    # The comparison has teeth: the updates moved the weights far more than the tolerance.
    # (The initial student as fairseq-train builds it, teacher loading included: it draws
    # from the same seeded generators.)
    _, _, initial, _ = utils.build_in_process([tiny_data, *DETERMINISTIC_STUDENT, *kd_args, "--seed", "1", "--cpu"])
    initial = initial.state_dict()
    floats = [k for k, v in initial.items() if v.is_floating_point()]
    moved = torch.cat([(single["model"][k] - initial[k]).double().flatten() for k in floats]).norm()
    scale = torch.cat([single["model"][k].double().flatten() for k in floats]).norm()
    assert moved > 1e-2 * scale, f"{moved:.3g} vs |weights| = {scale:.3g}"


@pytest.mark.parametrize("case", ["soft_labels", "seq_kd"])
def test_each_rank_collates_its_own_sentences_teacher_rows(
    case, tiny_data, tiny_teacher, soft_label_store, distilled
):
    """Build the training iterator as rank r of 2 does (fairseq's Trainer.get_train_iterator):
    every batch's soft-label / distilled rows are those of the batch's sentence ids,
    and the two ranks together see every sentence of the epoch once."""
    from fairseq import utils as fairseq_utils

    from fairseq_kd.data.soft_labels import SoftLabelStore

    cfg, task, model, _ = utils.build_in_process([
        tiny_data, *DETERMINISTIC_STUDENT, *_kd_args(case, tiny_teacher, soft_label_store, distilled),
        "--max-tokens", str(MAX_TOKENS), "--seed", "1", "--num-workers", "1", "--cpu",
    ])
    task.load_dataset("train")
    dataset = task.dataset("train")
    pad = task.target_dictionary.pad()
    store = SoftLabelStore(soft_label_store) if case == "soft_labels" else None
    seen = []
    for rank in range(WORLD):
        itr = task.get_batch_iterator(
            dataset=dataset, max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
            max_positions=fairseq_utils.resolve_max_positions(task.max_positions(), model.max_positions(),
                                                              cfg.dataset.max_tokens),
            ignore_invalid_inputs=True, required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
            seed=cfg.common.seed, num_shards=WORLD, shard_id=rank, num_workers=cfg.dataset.num_workers, epoch=1,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=True)
        for batch in itr:
            if not batch:  # the padding batch of an uneven shard
                continue
            for b, i in enumerate(batch["id"].tolist()):
                if store is not None:
                    ids_i, logits_i = store[i]
                    n = len(ids_i)
                    assert torch.equal(batch["soft_labels"]["ids"][b, :n], ids_i), (rank, i)
                    assert torch.equal(batch["soft_labels"]["logits"][b, :n], logits_i), (rank, i)
                    assert batch["soft_labels"]["ids"][b, n:].eq(pad).all()
                    assert batch["target"][b, :n].ne(pad).all() and batch["target"][b, n:].eq(pad).all()
                else:
                    row = batch["distilled"]["target"][b]
                    assert torch.equal(row[row.ne(pad)], dataset.distilled[i].long()), (rank, i)
                seen.append(i)
    # fairseq would drop the epoch's last batch (issue #5036); the plugin keeps it.
    assert sorted(seen) == list(range(len(dataset)))
