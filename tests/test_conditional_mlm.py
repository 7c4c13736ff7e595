"""tasks/conditional_mlm.py: C-MLM masking invariants, the [CLS] src [SEP] tgt [SEP]
layout, and a few real fine-tuning updates through fairseq-train."""
import math

import numpy as np
import pytest
import torch

import utils
from fairseq_kd.tasks.conditional_mlm import draw_mask, num_passes, pass_mask


@pytest.fixture(scope="module")
def bert_task(tmp_path_factory):
    return utils.make_bert_task(str(tmp_path_factory.mktemp("cmlm")), n_train=300)


def build(data_bin, bert_dir, extra=()):
    return utils.build_in_process([
        data_bin, "--task", "conditional_mlm", "--arch", "bert_teacher_base", "--bert-path", bert_dir,
        "--criterion", "label_smoothed_cross_entropy", "--cpu", "--seed", "3", *extra,
    ])


def all_batches(task, split="train", epoch=1):
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=400, seed=1, num_workers=0, epoch=epoch)
    return list(itr.next_epoch_itr(shuffle=False))


def test_only_target_slots_are_masked_always_with_mask_and_at_least_one(bert_task):
    bert_dir, data_bin = bert_task
    _, task, model, _ = build(data_bin, bert_dir)
    d = task.target_dictionary
    pad, M = d.pad(), task.mask_idx
    assert M == len(d) == model.mask_idx
    plain = task.load_pair_dataset("train")
    masked = masked_eos = tokens = 0
    for batch in all_batches(task):
        tgt_in, target = batch["net_input"]["tgt_tokens"], batch["target"]
        assert not batch["net_input"]["src_tokens"].eq(M).any()  # the source is never masked
        assert "prev_output_tokens" not in batch["net_input"]
        is_masked = tgt_in.eq(M)
        assert is_masked.sum(1).min() >= 1  # every sentence has a masked slot
        assert torch.equal(target.ne(pad), is_masked)  # loss exactly on masked slots
        assert batch["ntokens"] == int(is_masked.sum())
        for b, i in enumerate(batch["id"].tolist()):
            gold = plain[i]["target"]
            n = len(gold)
            # masked slots keep their gold word as the target, the others are unchanged input
            assert torch.equal(torch.where(is_masked[b, :n], target[b, :n], tgt_in[b, :n]), gold)
            assert tgt_in[b, n:].eq(pad).all()
            masked_eos += int(is_masked[b, n - 1])
        masked += int(is_masked.sum())
        tokens += int(tgt_in.ne(pad).sum())
    assert tokens == int(plain.tgt_sizes.sum())
    # 0.15 per slot, conditioned on at least one per sentence (the redraw):
    # E[masked | n slots] = 0.15 n / (1 - 0.85^n)
    n = plain.tgt_sizes.astype(np.float64)
    expected = float((0.15 * n / (1 - 0.85**n)).sum())
    assert abs(masked - expected) < 4 * np.sqrt(0.15 * 0.85 * tokens), (masked, expected)
    assert masked_eos > 0  # the final slot learns </s>


def test_masks_are_deterministic_per_seed_and_epoch(bert_task):
    bert_dir, data_bin = bert_task
    _, task, _, _ = build(data_bin, bert_dir)
    ep1 = [b["net_input"]["tgt_tokens"] for b in all_batches(task, epoch=1)]
    ep1_again = [b["net_input"]["tgt_tokens"] for b in all_batches(task, epoch=1)]
    ep2 = [b["net_input"]["tgt_tokens"] for b in all_batches(task, epoch=2)]
    assert all(torch.equal(a, b) for a, b in zip(ep1, ep1_again))
    assert not all(torch.equal(a, b) for a, b in zip(ep1, ep2))


def _masks_by_epoch(task, split, epochs=3, num_workers=1):
    """{sentence id: [mask of epoch 1, 2, ...]}, read the way fairseq-train reads
    the data: trainer.get_train_iterator asks the task for an iterator at each
    epoch (the task may hand back a cached one) and takes its next epoch, with
    DataLoader workers (fairseq-train's default --num-workers is 1)."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    masks = {}
    epoch_itr = None
    for epoch in range(1, epochs + 1):
        epoch_itr = task.get_batch_iterator(
            dataset=dataset, max_tokens=400, seed=1, num_workers=num_workers, epoch=epoch
        )
        assert epoch_itr.next_epoch_idx == epoch
        for batch in epoch_itr.next_epoch_itr(shuffle=True):
            is_masked = batch["net_input"]["tgt_tokens"].eq(task.mask_idx)
            assert torch.equal(batch["net_input"]["positions"], is_masked)
            for b, i in enumerate(batch["id"].tolist()):
                masks.setdefault(i, []).append(tuple(is_masked[b].nonzero().flatten().tolist()))
    return masks


@pytest.mark.parametrize("num_workers", [1, 0])
def test_training_masks_change_every_epoch_with_dataloader_workers(bert_task, num_workers):
    bert_dir, data_bin = bert_task
    _, task, _, _ = build(data_bin, bert_dir)
    masks = _masks_by_epoch(task, "train", num_workers=num_workers)
    assert len(masks) == len(task.dataset("train")) and all(len(m) == 3 for m in masks.values())
    # With fresh masks, a sentence keeps the same mask in two epochs rarely
    # (mostly one-slot masks of short targets); with stale ones, always.
    same = sum(m[0] == m[1] for m in masks.values()) + sum(m[1] == m[2] for m in masks.values())
    assert same < 0.3 * 2 * len(masks), same


def test_valid_masks_are_fixed_across_epochs(bert_task):
    bert_dir, data_bin = bert_task
    _, task, _, _ = build(data_bin, bert_dir)
    masks = _masks_by_epoch(task, "valid")
    assert masks and all(m[0] == m[1] == m[2] for m in masks.values())


def test_model_scores_masked_slots_only_with_the_stock_criterion(bert_task):
    """The N x V logits of the masked slots give the loss and accuracy that
    B x T x V logits over every slot give."""
    bert_dir, data_bin = bert_task
    _, task, model, criterion = build(data_bin, bert_dir, ["--report-accuracy"])
    model.eval()
    batch = all_batches(task)[0]
    loss, size, logs = criterion(model, batch)
    full_input = {k: v for k, v in batch["net_input"].items() if k != "positions"}
    logits_all = model(**full_input)[0]
    assert logits_all.dim() == 3 and model(**batch["net_input"])[0].shape == (size, logits_all.size(-1))
    lprobs = torch.log_softmax(logits_all.float(), -1)
    target = batch["target"]
    keep = target.ne(task.target_dictionary.pad())
    nll = -lprobs[keep].gather(-1, target[keep].unsqueeze(-1)).sum()
    assert size == batch["ntokens"] == int(keep.sum())
    assert logs["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert logs["n_correct"] == int(lprobs[keep].argmax(-1).eq(target[keep]).sum())
    assert logs["nsentences"] == target.size(0)


def test_draw_mask_redraws_until_something_is_masked():
    np.random.seed(0)
    for length in (1, 2, 5):
        for _ in range(50):
            assert draw_mask(length, 0.15).any()
    assert draw_mask(7, 1.0).all()


@pytest.mark.parametrize("passes", [0, 1, 3, 7])
def test_every_slot_is_masked_in_exactly_one_pass(passes):
    for length in range(1, 12):
        masks = torch.stack([pass_mask(length, passes, p) for p in range(num_passes(length, passes))])
        assert torch.equal(masks.sum(0), torch.ones(length, dtype=torch.long))
        assert masks.any(1).all()  # no empty pass is run
        if passes:
            assert masks[0].nonzero().flatten().tolist() == list(range(0, length, passes))


def test_layout_is_cls_source_target_with_segments(bert_task):
    bert_dir, data_bin = bert_task
    _, task, model, _ = build(data_bin, bert_dir)
    d = task.target_dictionary
    pad, eos, M = d.pad(), d.eos(), model.mask_idx
    a1, a2, b1, b2 = (d.index(w) for w in ("a1", "a2", "b1", "b2"))
    src = torch.tensor([[pad, a1, eos], [a1, a2, eos]])  # left-padded
    tgt = torch.tensor([[b1, M, eos, pad], [b2, b1, M, eos]])  # right-padded
    ids, segments, allowed, positions = model.layout(src, tgt)
    bos = d.bos()
    assert ids.tolist() == [[bos, a1, eos, b1, M, eos, pad, pad], [bos, a1, a2, eos, b2, b1, M, eos]]
    assert segments[0, :6].tolist() == [0, 0, 0, 1, 1, 1] and segments[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert positions.tolist() == [[3, 4, 5, 6], [4, 5, 6, 7]]
    assert allowed.shape == (2, 1, 8, 8) and allowed[0, 0, 0].tolist() == [True] * 6 + [False] * 2


def test_a_few_cmlm_updates_lower_the_masked_loss_and_report_accuracy(bert_task, tmp_path):
    bert_dir, data_bin = bert_task
    proc = utils.train_bert_teacher(data_bin, bert_dir, str(tmp_path / "teacher"), max_update=40)
    logs = utils.json_logs(proc.stdout + proc.stderr)
    losses = [float(r["loss"]) for r in logs if "loss" in r and "num_updates" in r]  # train_inner records
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.3
    valid = [r for r in logs if "valid_accuracy" in r]
    assert valid and 0 <= float(valid[-1]["valid_accuracy"]) <= 100
    assert "imported BERT from" in proc.stdout + proc.stderr


def test_half_precision_cmlm_training_on_cpu(bert_task, tmp_path):
    """fairseq's --fp16 optimizer needs CUDA; --memory-efficient-fp16 runs the same
    float16 model (dynamic loss scaling) on a CPU: the C-MLM's masks, attention and
    output layer must stay finite in half precision and the masked loss must fall."""
    bert_dir, data_bin = bert_task
    save = tmp_path / "teacher"
    proc = utils.train_bert_teacher(data_bin, bert_dir, str(save), max_update=40,
                                    extra=["--memory-efficient-fp16"])
    logs = utils.json_logs(proc.stdout + proc.stderr)
    inner = [r for r in logs if "loss" in r and "num_updates" in r]
    losses = [float(r["loss"]) for r in inner]
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.3
    assert all("loss_scale" in r for r in inner)  # fairseq's fp16 loss scaler was in use
    valid = [r for r in logs if "valid_accuracy" in r]
    assert valid and math.isfinite(float(valid[-1]["valid_loss"]))
    from fairseq_kd import checkpoint

    state = checkpoint.load(str(save / "checkpoint_last.pt"))
    assert state["cfg"]["common"]["memory_efficient_fp16"]  # (fairseq saves the weights cast to float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fairseq's --fp16 training needs a GPU")
def test_fp16_cmlm_updates(bert_task, tmp_path):
    bert_dir, data_bin = bert_task
    proc = utils.run([
        utils.command("fairseq-train"), data_bin, "--user-dir", utils.USER_DIR, "--task", "conditional_mlm",
        "--arch", "bert_teacher_base", "--bert-path", bert_dir, "--save-dir", str(tmp_path / "t"),
        "--criterion", "label_smoothed_cross_entropy", "--report-accuracy", "--optimizer", "adam",
        "--lr", "0.002", "--max-tokens", "600", "--max-update", "10", "--fp16", "--log-format", "json",
        "--no-epoch-checkpoints", "--no-progress-bar",
    ])
    assert any("valid_accuracy" in r for r in utils.json_logs(proc.stdout + proc.stderr))
