"""``fairseq-kd-dump-soft-labels``: dump a C-MLM teacher's top-K logits for a split.

Chen et al. (2020) mask each target position of a sentence once and record
the teacher's distribution there. Pass p (of P = ``--passes``) masks slots
p, p + P, p + 2P, ... so every slot, the final </s> slot included, is masked
in exactly one pass; ``--passes 0`` masks one slot per pass (exact: each
prediction sees all other target words). All passes of a batch run as the
rows of one forward, and only masked slots go through the output layer.

    fairseq-kd-dump-soft-labels DATA --path teacher/checkpoint_best.pt \\
        --subset train --topk 8 --passes 7 --out soft_labels

The output is a soft-label store (:mod:`fairseq_kd.data.soft_labels`) aligned
with DATA's binarized target split, the one ``fairseq-train DATA --task
translation_kd --soft-labels DIR`` reads. A killed run, rerun with the same
arguments, resumes at the first batch not yet flagged done and produces the
same store; ``header.json`` appears only when every sentence is written.

Sharding: with ``--num-shards N --shard-id I`` (or under ``torchrun`` /
``srun``, from RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS, the GPU from
LOCAL_RANK / SLURM_LOCALID) a process dumps only shard I: a contiguous range of
sentences balanced by source + target tokens (:mod:`fairseq_kd.data.shards`).
It writes a finished store of that range, ``OUT.parts/part-0000I-of-0000N/``
(its range and shard in ``header.json``), first in
``OUT.parts/.part-0000I-of-0000N.tmp/``, where a killed shard resumes when
rerun, then renamed into place (replacing an older part of that shard; the
others are kept). ``fairseq-kd-merge-shards OUT`` checks that the parts cover
the split exactly once with the same K, passes, dictionary, split and teacher,
and writes the store OUT with the same header and arrays as one process.

Batches are formed within blocks of ``--sort-window`` consecutive sentences
(sorted by length inside a block) and shards start at block boundaries, so
every sentence is scored in the same batch, with the same padding, in a shard
as in one process: the merged arrays equal a single-process dump's bit for bit
(same ``--max-tokens``, ``--sort-window``, device and precision). The price is
granularity: shards are balanced to within a block.

(Testing hook: with FAIRSEQ_KD_DUMP_KILL_AFTER=N in the environment, the
process SIGKILLs itself after N batches are flagged done, having written the
data of batch N+1 but not its flag.)
"""
import argparse
import logging
import mmap
import os
import signal
import time

import numpy as np
import torch

from ._common import add_shard_arguments, progress, record_run, run_command

logger = logging.getLogger("fairseq_kd.dump_soft_labels")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-dump-soft-labels",
        description="Dump a conditional_mlm (BERT) teacher's top-K logits for every target token "
        "of a binarized split into a memory-mapped soft-label store.",
    )
    parser.add_argument("data", help="fairseq data directory (binarized with --joined-dictionary), as the student uses it")
    parser.add_argument("--path", required=True, help="teacher checkpoint trained with --task conditional_mlm")
    parser.add_argument("--subset", default="train", help="split to dump (default: train)")
    parser.add_argument("--topk", type=int, default=8, help="logits kept per target token (default: 8)")
    parser.add_argument("--passes", type=int, default=7,
                        help="masked copies per sentence: pass p masks slots p, p+P, ...; 0 = one slot "
                             "per pass (exact, slowest) (default: 7)")
    parser.add_argument("--out", required=True, help="output directory of the store")
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="tokens per forward, all masked copies counted, padding included (default: 8192)")
    parser.add_argument("--sort-window", type=int, default=1000,
                        help="sort sentences by length and batch them within blocks of this many consecutive "
                        "sentences; shards start at block boundaries, which makes a merged sharded dump "
                        "bit-identical to one process's (default: 1000)")
    parser.add_argument("--source-lang", default=None, help="source language (default: inferred from DATA)")
    parser.add_argument("--target-lang", default=None, help="target language (default: inferred from DATA)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="run the teacher in float16 (GPU)")
    precision.add_argument("--bf16", action="store_true", help="run the teacher in bfloat16")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is available")
    add_shard_arguments(parser, "source + target tokens", "OUT.parts/")
    return parser


def load_teacher(path, data, source_lang=None, target_lang=None):
    """(model, task) of a conditional_mlm checkpoint, its task reading ``data``."""
    import fairseq_kd  # noqa: F401  (registers the task and model; safe checkpoint loading)
    from fairseq import checkpoint_utils, tasks
    from omegaconf import open_dict

    from ..teacher import check_teacher_dictionary

    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    if not os.path.isdir(data):
        raise FileNotFoundError(f"data directory not found: {data}")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = state["cfg"]
    if cfg.task._name != "conditional_mlm":
        raise ValueError(f"{path} was trained with --task {cfg.task._name}, not conditional_mlm")
    task_cfg = cfg.task.copy()
    with open_dict(task_cfg):
        task_cfg.data = data
        if source_lang:
            task_cfg.source_lang = source_lang
        if target_lang:
            task_cfg.target_lang = target_lang
    task = tasks.setup_task(task_cfg)
    check_teacher_dictionary(path, state, task.target_dictionary, task.source_dictionary)
    rows = state["model"]["output_projection.weight"].size(0)
    if rows != len(task.target_dictionary):
        raise ValueError(
            f"{path}: teacher scores {rows} words, {data}'s target dictionary has {len(task.target_dictionary)}"
        )
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True)
    model.eval().requires_grad_(False)
    return model, task


def make_batches(src_sizes, tgt_sizes, passes, max_tokens, window):
    """Deterministic batches of sentence indices: within each block of ``window``
    consecutive sentences, sorted by length, cut where a batch's cost (its rows,
    all masked copies, times its longest [CLS] src tgt) would pass ``max_tokens``.

    No batch crosses a block boundary, and shards start at block boundaries
    (``shard_range(..., granularity=window)``), so a sentence meets the same
    batch partners in a shard as in one process: the teacher's numbers, and the
    merged store, are bit-identical to a single-process dump.
    """
    from ..tasks.conditional_mlm import num_passes

    src_sizes, tgt_sizes = np.asarray(src_sizes), np.asarray(tgt_sizes)
    length = 1 + src_sizes + tgt_sizes
    index = np.arange(len(length))
    block = index // window
    order = np.lexsort((index, length, block))  # by block, then length, then index
    batches, current, rows, longest = [], [], 0, 0
    for i in order:
        n = num_passes(int(tgt_sizes[i]), passes)
        if current and (block[i] != block[current[0]] or (rows + n) * max(longest, int(length[i])) > max_tokens):
            batches.append(np.array(current, dtype=np.int64))
            current, rows, longest = [], 0, 0
        current.append(int(i))
        rows += n
        longest = max(longest, int(length[i]))
    if current:
        batches.append(np.array(current, dtype=np.int64))
    return batches


@torch.no_grad()
def teacher_topk(model, items, passes, topk, device, dtype):
    """Top-K of the teacher at every target slot of ``items`` (dataset items),
    each slot scored in the pass that masks it.

    Returns (sentence, slot, ids N x K, logits N x K, gold_logprob N): N = all
    target tokens; gold_logprob is the teacher's log-probability (full softmax,
    T = 1) of the gold word, its quality measure.
    """
    from fairseq.data import data_utils

    from ..tasks.conditional_mlm import num_passes, pass_mask

    pad = model.pad
    src_rows, tgt_rows, gold_rows, mask_rows, row_sentence = [], [], [], [], []
    for b, item in enumerate(items):
        target = item["target"]
        for p in range(num_passes(len(target), passes)):
            mask = pass_mask(len(target), passes, p)
            src_rows.append(item["source"])
            tgt_rows.append(target.masked_fill(mask, model.mask_idx))
            gold_rows.append(target)
            mask_rows.append(mask)
            row_sentence.append(b)
    src = data_utils.collate_tokens(src_rows, pad).to(device)
    tgt = data_utils.collate_tokens(tgt_rows, pad).to(device)
    positions = data_utils.collate_tokens([m.long() for m in mask_rows], 0).bool().to(device)  # R x T
    logits = model(src, None, tgt, positions=positions)[0].float()  # N x V, row-major over positions
    values, ids = logits.topk(topk, dim=-1)  # N x K, descending
    gold = data_utils.collate_tokens(gold_rows, pad).to(device)[positions]  # N
    gold_logprob = logits.gather(1, gold.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1)
    rows, slots = positions.nonzero(as_tuple=True)
    sentence = torch.tensor(row_sentence, device=device)[rows]
    return (sentence.cpu().numpy(), slots.cpu().numpy(), ids.int().cpu().numpy(), values.cpu().numpy(),
            gold_logprob.cpu().numpy())


def _drop_pages(store) -> None:
    """Let the kernel reclaim the written (already flushed) pages of the output
    maps, so the process's resident memory does not grow with the split."""
    for array in store.arrays.values():
        m = getattr(array, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED)


def dump(args) -> dict:
    """Run the command; returns its summary (for one shard of several, the part's)."""
    from ..data import array_store, soft_labels
    from ..data.shards import shard_from_env, shard_range

    if args.topk <= 0:
        raise ValueError(f"--topk must be > 0, got {args.topk}")
    if args.passes < 0:
        raise ValueError(f"--passes must be >= 0, got {args.passes}")
    shard = shard_from_env(getattr(args, "num_shards", None), getattr(args, "shard_id", None))
    if shard.num_shards < 1 or not 0 <= shard.shard_id < shard.num_shards:
        raise ValueError(f"--shard-id must be in [0, {shard.num_shards}), got {shard.shard_id}")
    use_cuda = torch.cuda.is_available() and not args.cpu
    if use_cuda:
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())  # one GPU per process of a node
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32
    model, task = load_teacher(args.path, args.data, args.source_lang, args.target_lang)
    model.to(device=device, dtype=dtype)
    dictionary = task.target_dictionary
    if args.topk > len(dictionary):
        raise ValueError(f"--topk {args.topk} exceeds the dictionary size {len(dictionary)}")
    dataset = task.load_pair_dataset(args.subset)
    sizes = soft_labels.target_sizes(dataset)
    src_sizes = np.asarray(dataset.src_sizes, dtype=np.int64)
    # Shards are balanced by source + target tokens: every masked copy reads both.
    if args.sort_window < 1:
        raise ValueError(f"--sort-window must be >= 1, got {args.sort_window}")
    start, end = shard_range(src_sizes + sizes, shard.num_shards, shard.shard_id, granularity=args.sort_window)
    too_long = start + np.nonzero(1 + src_sizes[start:end] + sizes[start:end] > model.max_total_positions)[0]
    if len(too_long):
        raise ValueError(
            f"{len(too_long)} sentences of {args.subset} (e.g. index {too_long[0]}) are longer than the "
            f"teacher's {model.max_total_positions} positions as [CLS] source target"
        )
    header = soft_labels.make_header(
        args.subset, args.topk, args.passes, dictionary, sizes,
        teacher_checksum=array_store.file_checksum(args.path),
        teacher={"path": os.path.basename(args.path)},
        num_shards=shard.num_shards, shard_id=shard.shard_id, sentence_range=(start, end),
    )
    sharded = shard.num_shards > 1
    path = soft_labels.part_work_path(args.out, *shard[:2]) if sharded else args.out
    what = f"dump {args.subset}" + (f" shard {shard.shard_id}/{shard.num_shards}" if sharded else "")
    if sharded:
        logger.info(f"{what}: sentences [{start}, {end}) of {len(sizes)} -> {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
    store = soft_labels.create_or_resume(path, header, sizes)
    resumed = store.n_done
    if resumed:
        logger.info(f"resuming {path}: {resumed} of {end - start} sentences already written")
    offsets = np.asarray(store["offsets"])  # from 0 at sentence ``start``
    # Batches of local indices j (sentence start + j); ``start`` is a multiple of the
    # window, so these are the batches one process forms for the same sentences.
    batches = make_batches(src_sizes[start:end], sizes[start:end], args.passes, args.max_tokens, args.sort_window)
    kill_after = int(os.environ.get("FAIRSEQ_KD_DUMP_KILL_AFTER", "-1"))
    done_now, tokens_now, t0 = 0, 0, time.time()
    for batch in progress(batches, total=len(batches), desc=what, unit="batch"):
        if store.done[batch].all():
            continue
        sentence, slot, ids, logits, gold_logprob = teacher_topk(
            model, [dataset[start + int(j)] for j in batch], args.passes, args.topk, device, dtype
        )
        rows = offsets[batch[sentence]] + slot  # store rows of these target tokens
        store["ids"][rows] = ids
        store["logits"][rows] = logits.astype(np.float16)
        store["gold_logprob"][rows] = gold_logprob
        if done_now == kill_after:
            for array in store.arrays.values():
                array.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        store.mark_done(batch)
        _drop_pages(store)
        done_now += 1
        tokens_now += len(rows)
    elapsed = time.time() - t0
    store.header["teacher_quality"] = soft_labels.measure_quality(
        store.arrays, lambda j: dataset[start + j]["target"])
    header = array_store.finish(store)
    record_run(path, args)
    nbytes = sum(os.path.getsize(os.path.join(path, f"{n}.npy")) for n in header["arrays"])
    if sharded:
        final = soft_labels.part_path(args.out, *shard[:2])
        soft_labels.publish_part(path, final)
        path = final
    first, last = header["token_range"]
    return {
        "sentences": header["sentences"],
        "tokens": header["tokens"],
        "num_shards": shard.num_shards,
        "shard_id": shard.shard_id,
        "sentence_range": [start, end],
        "part_tokens": last - first,
        "resumed_sentences": resumed,
        "tokens_per_second": tokens_now / elapsed if elapsed > 0 else float("inf"),
        "bytes": nbytes,
        "seconds": elapsed,
        "path": path,
        "teacher_quality": header["teacher_quality"],
        "topk": args.topk,
    }


def cli_main(argv=None) -> None:
    # OSError: a missing or unwritable file; StoreError is a ValueError
    from ..data.soft_labels import describe_quality

    args, summary = run_command(get_parser(), dump, argv, errors=(OSError, ValueError))
    quality = describe_quality(summary["teacher_quality"], summary["topk"])
    if summary["num_shards"] > 1:
        start, end = summary["sentence_range"]
        tokens = summary["part_tokens"]
        print(
            f"dumped {args.subset} shard {summary['shard_id']} of {summary['num_shards']}: sentences "
            f"[{start}, {end}) of {summary['sentences']}, {tokens} tokens "
            f"({summary['resumed_sentences']} sentences resumed), {summary['tokens_per_second']:.0f} tokens/s, "
            f"{summary['bytes']} bytes ({summary['bytes'] / max(tokens, 1):.1f} B/token) -> {summary['path']} "
            f"(when all shards are done: fairseq-kd-merge-shards {args.out}); {quality}"
        )
        return
    print(
        f"dumped {args.subset}: {summary['sentences']} sentences, {summary['tokens']} tokens "
        f"({summary['resumed_sentences']} sentences resumed), {summary['tokens_per_second']:.0f} tokens/s, "
        f"{summary['bytes']} bytes ({summary['bytes'] / max(summary['tokens'], 1):.1f} B/token) -> {args.out}; "
        f"{quality}"
    )


if __name__ == "__main__":
    cli_main()
