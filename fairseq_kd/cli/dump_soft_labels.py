"""``fairseq-kd-dump-soft-labels``: dump a teacher's top-K soft labels for a split.

Two kinds of teacher, told apart by the task their checkpoint was trained with
(the header's ``teacher_kind``):

- ``conditional_mlm`` (a BERT C-MLM teacher, Chen et al. 2020): each target
  position of a sentence is masked once and the teacher's distribution there
  recorded. Pass p (of P = ``--passes``, default 7) masks slots p, p + P,
  p + 2P, ... so every slot, the final </s> slot included, is masked in exactly
  one pass; ``--passes 0`` masks one slot per pass (exact: each prediction sees
  all other target words). All passes of a batch run as the rows of one
  forward, and only masked slots go through the output layer. The store holds
  the raw top-K logits.
- any autoregressive fairseq translation model (``--task translation`` or
  ``translation_kd``; ``--path a.pt:b.pt`` is an ensemble): teacher-forced on
  the gold target (``prev_output_tokens`` as fairseq's collater builds it),
  one forward per batch, every non-pad target position, EOS included: the
  distribution online ``--criterion word_kd --teacher-path`` distills from.
  One model: its raw top-K logits, so ``softmax(values / T)`` over the K is
  online ``word_kd --kd-temperature T --kd-topk K`` at any T. An ensemble
  averages probabilities at ``--temperature T`` (default 1), q = 1/M sum_m
  softmax(z_m / T), and stores ``T log q`` of its top K (log-probabilities of
  the average at T = 1): the student reproduces online ``word_kd`` exactly
  with ``--kd-temperature T`` only, so the header records ``temperature`` and
  ``--task translation_kd`` refuses another ``--kd-temperature`` for such a
  store (a single model's store has ``temperature: null``: any T is exact).
  ``--passes`` does not apply (``passes: null`` in the header).

``--store sampled --samples S`` (either kind of teacher) stores, instead of
the top K, S words drawn with replacement from the teacher's distribution at
``--temperature T`` (default 1; recorded in the header) with their weights
count / S as T log(count / S): an unbiased sparse teacher (Anshumann et al.
2025, "Sparse Logit Sampling"; :func:`fairseq_kd.losses.sampled_soft_targets`)
where top-K is biased. The student must train with ``--kd-temperature T``.
The draws are seeded per batch from ``--seed`` and the batch's first sentence,
so a resumed or sharded dump draws what one process draws.

    fairseq-kd-dump-soft-labels DATA --path teacher/checkpoint_best.pt \\
        --subset train --topk 8 --passes 7 --out soft_labels         # C-MLM
    fairseq-kd-dump-soft-labels DATA --path at1.pt:at2.pt --subset train --topk 8 --out soft_labels
    fairseq-kd-dump-soft-labels DATA --path at.pt --subset train --store sampled --samples 12 --out sampled

The output is a soft-label store (:mod:`fairseq_kd.data.soft_labels`) aligned
with DATA's binarized target split, the one ``fairseq-train DATA --task
translation_kd --soft-labels DIR`` reads. A killed run, rerun with the same
arguments, resumes at the first batch not yet flagged done and produces the
same store; ``header.json`` appears only when every sentence is written.

Sharding: with ``--num-shards N --shard-id I`` (or under ``torchrun`` /
``srun``, from RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS, the GPU from
LOCAL_RANK / SLURM_LOCALID) a process dumps only shard I: a contiguous range of
sentences balanced by source + target tokens (:mod:`fairseq_kd.data.shards`).
It writes a finished store of that range as the part
``OUT.parts/part-0000I-of-0000N/`` (its range and shard in ``header.json``; the
layout of every part: :mod:`fairseq_kd.data.parts`), first in
``OUT.parts/.part-0000I-of-0000N.tmp/``, where a killed shard resumes when
rerun, then renamed into place (replacing an older part of that shard; the
others are kept). ``fairseq-kd-merge-shards OUT`` checks that the parts cover
the split exactly once with the same K, passes, dictionary, split, teacher(s)
and temperature, and writes the store OUT with the same header and arrays as
one process.

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

from ._common import add_device_arguments, add_shard_arguments, device_and_dtype, progress, record_run, run_command

logger = logging.getLogger("fairseq_kd.cli.dump_soft_labels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-dump-soft-labels",
        description="Dump a teacher's top-K soft labels for every target token (EOS included) of a "
        "binarized split into a memory-mapped soft-label store: a conditional_mlm (BERT) teacher's logits "
        "over masked passes, or an autoregressive translation teacher's (or ensemble's) teacher-forced on "
        "the gold target, what --criterion word_kd --teacher-path distills from.",
    )
    parser.add_argument("data", help="fairseq data directory, as the student uses it (binarized with --joined-dictionary for a "
                        "conditional_mlm teacher)")
    parser.add_argument("--path", required=True,
                        help="teacher checkpoint: one trained with --task conditional_mlm, or autoregressive "
                        "translation checkpoint(s) (--task translation / translation_kd), colon-separated for "
                        "an ensemble a.pt:b.pt (probabilities averaged)")
    parser.add_argument("--subset", default="train", help="split to dump (default: train)")
    parser.add_argument("--topk", type=int, default=None, help="--store topk: logits kept per target token (default: 8)")
    parser.add_argument("--store", choices=("topk", "sampled"), default="topk",
                        help="topk: the K most probable words (biased: the student learns the teacher renormalized "
                        "over K); sampled: --samples words drawn from the teacher at --temperature, weighted by "
                        "count (an unbiased estimate of full-vocabulary KD; Anshumann et al. 2025) (default: topk)")
    parser.add_argument("--samples", type=int, default=None,
                        help="--store sampled: draws per target token, with replacement (default: 12)")
    parser.add_argument("--seed", type=int, default=1, help="--store sampled: seed of the draws (default: 1)")
    parser.add_argument("--passes", type=int, default=None,
                        help="conditional_mlm teacher: masked copies per sentence: pass p masks slots p, p+P, "
                             "...; 0 = one slot per pass (exact, slowest) (default: 7). Not for a translation "
                             "teacher (one teacher-forced row per sentence)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="ensemble of translation teachers, or --store sampled: the teacher's distribution "
                        "(an ensemble's average) at this temperature, stored as T log q; the student must then "
                        "use --kd-temperature T (default: 1). A single model's top K is stored as raw logits, "
                        "exact at any --kd-temperature, and takes no --temperature")
    parser.add_argument("--out", required=True, help="output directory of the store")
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="tokens per forward, padding included: all masked copies of [CLS] src tgt "
                        "(conditional_mlm), sentences x their longest side (translation) (default: 8192)")
    parser.add_argument("--sort-window", type=int, default=1000,
                        help="sort sentences by length and batch them within blocks of this many consecutive "
                        "sentences; shards start at block boundaries, which makes a merged sharded dump "
                        "bit-identical to one process's (default: 1000)")
    parser.add_argument("--source-lang", default=None, help="source language (default: inferred from DATA)")
    parser.add_argument("--target-lang", default=None, help="target language (default: inferred from DATA)")
    add_device_arguments(parser)
    add_shard_arguments(parser, "source + target tokens", "OUT.parts/")
    return parser


CMLM, TRANSLATION = "conditional_mlm", "translation"  # the header's teacher_kind


def teacher_kind(teacher) -> str:
    """The header's ``teacher_kind`` of a teacher :func:`fairseq_kd.teacher.load_teacher`
    loaded: its task's. ``conditional_mlm`` (CMLM) takes one checkpoint; an
    autoregressive translation task gives TRANSLATION; anything else, and
    non-autoregressive (``translation_lev``) models, are refused."""
    from fairseq.models.nat import FairseqNATModel
    from fairseq.tasks.translation import TranslationTask
    from fairseq.tasks.translation_lev import TranslationLevenshteinTask

    from ..tasks.conditional_mlm import ConditionalMLMTask

    task, files = teacher.task, teacher.paths
    if isinstance(task, ConditionalMLMTask):
        if len(files) > 1:
            raise ValueError(f"--path {':'.join(files)}: ensembles of conditional_mlm teachers are not supported; "
                             f"dump one checkpoint")
        return CMLM
    if not isinstance(task, TranslationTask) or isinstance(task, TranslationLevenshteinTask):
        name = getattr(task.cfg, "_name", type(task).__name__)
        raise ValueError(f"{files[0]} was trained with --task {name}: the dump takes a conditional_mlm teacher "
                         f"or an autoregressive translation teacher (--task translation / translation_kd)")
    for path, model in zip(files, teacher.models):
        if isinstance(model, FairseqNATModel):
            raise ValueError(f"{path} is a non-autoregressive model ({type(model).__name__}): the dump takes "
                             f"autoregressive translation teachers")
    return TRANSLATION


def make_batches(src_sizes, tgt_sizes, passes, max_tokens, window):
    """Deterministic batches of sentence indices: within each block of ``window``
    consecutive sentences, sorted by length, cut where a batch's cost (its rows,
    all masked copies, times its longest [CLS] src tgt) would pass ``max_tokens``.
    ``passes=None`` (a translation teacher): one row per sentence, its length
    the longer of source and target (fairseq's ``--max-tokens``).

    No batch crosses a block boundary, and shards start at block boundaries
    (``shard_range(..., granularity=window)``), so a sentence meets the same
    batch partners in a shard as in one process: the teacher's numbers, and the
    merged store, are bit-identical to a single-process dump.
    """
    from ..tasks.conditional_mlm import num_passes

    src_sizes, tgt_sizes = np.asarray(src_sizes), np.asarray(tgt_sizes)
    length = 1 + src_sizes + tgt_sizes if passes is not None else np.maximum(src_sizes, tgt_sizes)
    index = np.arange(len(length))
    block = index // window
    order = np.lexsort((index, length, block))  # by block, then length, then index
    batches, current, rows, longest = [], [], 0, 0
    for i in order:
        n = num_passes(int(tgt_sizes[i]), passes) if passes is not None else 1
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
def teacher_topk(model, items, passes, topk, device, dtype, sampler=None):
    """Top-K of the teacher at every target slot of ``items`` (dataset items),
    each slot scored in the pass that masks it.

    Returns (sentence, slot, ids N x K, logits N x K, gold_logprob N): N = all
    target tokens; gold_logprob is the teacher's log-probability (full softmax,
    T = 1) of the gold word, its quality measure. With a ``sampler`` (see
    :func:`sampled_values`) the K columns are its draws instead of the top K.
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
    gold = data_utils.collate_tokens(gold_rows, pad).to(device)[positions]  # N
    gold_logprob = logits.gather(1, gold.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1)
    if sampler is not None:
        ids, values = sampler([logits])
    else:
        values, ids = logits.topk(topk, dim=-1)  # N x K, descending
    rows, slots = positions.nonzero(as_tuple=True)
    sentence = torch.tensor(row_sentence, device=device)[rows]
    return (sentence.cpu().numpy(), slots.cpu().numpy(), ids.int().cpu().numpy(), values.cpu().numpy(),
            gold_logprob.cpu().numpy())


def sampled_values(logits, samples, temperature, generator):
    """(ids N x S, values N x S) of a sampled store from one model's or an ensemble's
    N x V logits: S draws from q = 1/M sum_m softmax(z_m / T), values T log(count / S)."""
    from .. import losses

    probs, _ = losses.soft_targets(logits, temperature, overwrite=True)  # N x V, the logits overwritten
    ids, weights = losses.sampled_soft_targets(probs, samples, generator=generator)
    return ids, weights.log_().mul_(temperature)  # weight 0 -> -inf: a slot no draw filled


@torch.no_grad()
def translation_topk(teacher, sample, topk, temperature, pad, sampler=None):
    """Top-K of an autoregressive teacher (ensemble) teacher-forced on the gold target
    of ``sample`` (a LanguagePairDataset batch), at every non-pad target position.

    Returns (sentence ids, slot, ids N x K, values N x K, gold_logprob N): N = all
    target tokens in row-major order, ``sentence`` their dataset indices and
    ``slot`` their positions in those sentences. One model: values are its raw
    logits. An ensemble: q = 1/M sum_m softmax(z_m / T) (``losses.soft_targets``,
    as online ``word_kd``) and values = T log q, so softmax(values / T) over the
    K is q renormalized. gold_logprob: log of the (averaged) probability of the
    gold word at T = 1, full vocabulary.
    """
    import math

    from .. import losses

    target = sample["target"]
    mask = target.ne(pad)  # B x T, EOS included, either padding side
    logits = [z[mask].float() for z in teacher.logits(sample["net_input"])]  # M x [N x V], our own copies
    gold = target[mask]  # N
    gold_lp = torch.stack([z.gather(1, gold.unsqueeze(1)).squeeze(1) - z.logsumexp(-1) for z in logits])  # M x N
    gold_logprob = gold_lp.logsumexp(0) - math.log(len(logits))
    if sampler is not None:
        ids, values = sampler(logits)
    elif len(logits) == 1:
        values, ids = logits[0].topk(topk, dim=-1)  # N x K, descending
    else:
        probs, _ = losses.soft_targets(logits, temperature, overwrite=True)  # N x V, the logits overwritten
        values, ids = probs.topk(topk, dim=-1)
        values = values.clamp_min_(torch.finfo(values.dtype).tiny).log_().mul_(temperature)
    rows = mask.nonzero(as_tuple=True)[0]
    slot = (mask.long().cumsum(1) - 1)[mask]
    sentence = sample["id"].to(rows.device)[rows]
    return (sentence.cpu().numpy(), slot.cpu().numpy(), ids.int().cpu().numpy(), values.cpu().numpy(),
            gold_logprob.cpu().numpy())


def _drop_pages(store) -> None:
    """Let the kernel reclaim the written (already flushed) pages of the output
    maps, so the process's resident memory does not grow with the split."""
    for array in store.arrays.values():
        m = getattr(array, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED)


def run(args) -> dict:
    """Run the command; returns its summary (for one shard of several, the part's)."""
    from fairseq import utils as fairseq_utils

    from ..data import array_store, parts, soft_labels
    from ..data.shards import check_shard, shard_from_env, shard_range
    from ..teacher import load_teacher

    if args.store == "sampled":
        if args.topk is not None:
            raise ValueError("--topk is for --store topk; a sampled store holds --samples draws per token")
        args.samples = 12 if args.samples is None else args.samples
        if args.samples <= 0:
            raise ValueError(f"--samples must be > 0, got {args.samples}")
        columns = args.samples
    else:
        if args.samples is not None:
            raise ValueError("--samples is for --store sampled: add --store sampled, or use --topk")
        args.topk = 8 if args.topk is None else args.topk
        if args.topk <= 0:
            raise ValueError(f"--topk must be > 0, got {args.topk}")
        columns = args.topk
    if args.passes is not None and args.passes < 0:
        raise ValueError(f"--passes must be >= 0, got {args.passes}")
    if args.temperature is not None and args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    shard = shard_from_env(args.num_shards, args.shard_id)
    check_shard(shard.num_shards, shard.shard_id)
    device, dtype = device_and_dtype(args, shard.local_rank)
    use_cuda = device.type == "cuda"
    langs = {"source_lang": args.source_lang, "target_lang": args.target_lang}
    teacher = load_teacher(args.path, data=args.data, overrides={k: v for k, v in langs.items() if v},
                           device=device, dtype=dtype)
    kind, task, files = teacher_kind(teacher), teacher.task, teacher.paths
    temperature = None  # the header's: set only where the store is exact at one --kd-temperature
    if args.store == "sampled":
        temperature = float(args.temperature if args.temperature is not None else 1.0)
    if kind == CMLM:
        if args.temperature is not None and args.store == "topk":
            raise ValueError("--temperature is for ensembles of translation teachers: a conditional_mlm teacher's "
                             "raw logits are stored (the student applies --kd-temperature); remove it")
        if args.passes is None:
            args.passes = 7
        passes = args.passes
        teacher = teacher.models[0]
        dataset = task.load_pair_dataset(args.subset)
    else:
        if args.passes is not None:
            raise ValueError(f"--passes is for conditional_mlm teachers; {files[0]} is a translation teacher, "
                             f"teacher-forced once per sentence: remove --passes")
        if len(teacher) == 1 and args.temperature is not None and args.store == "topk":
            raise ValueError("--temperature is for ensembles: a single teacher's raw logits are stored, exact at "
                             "any --kd-temperature; remove it")
        if len(teacher) > 1 and args.store == "topk":
            temperature = float(args.temperature if args.temperature is not None else 1.0)
        passes = None
        task.load_dataset(args.subset)
        dataset = task.dataset(args.subset)
    dictionary = task.target_dictionary
    if args.store == "topk" and args.topk > len(dictionary):
        raise ValueError(f"--topk {args.topk} exceeds the dictionary size {len(dictionary)}")
    sizes = soft_labels.target_sizes(dataset)
    src_sizes = np.asarray(dataset.src_sizes, dtype=np.int64)
    # Shards are balanced by source + target tokens: every row reads both.
    if args.sort_window < 1:
        raise ValueError(f"--sort-window must be >= 1, got {args.sort_window}")
    start, end = shard_range(src_sizes + sizes, shard.num_shards, shard.shard_id, granularity=args.sort_window)
    if kind == CMLM:
        too_long = start + np.nonzero(1 + src_sizes[start:end] + sizes[start:end] > teacher.max_total_positions)[0]
        limit = f"the teacher's {teacher.max_total_positions} positions as [CLS] source target"
    else:
        max_src, max_tgt = fairseq_utils.resolve_max_positions(task.max_positions(),
                                                                *[m.max_positions() for m in teacher.models])
        too_long = start + np.nonzero((src_sizes[start:end] > max_src) | (sizes[start:end] > max_tgt))[0]
        limit = f"the teacher's {max_src} source / {max_tgt} target positions"
    if len(too_long):
        raise ValueError(f"{len(too_long)} sentences of {args.subset} (e.g. index {too_long[0]}) are longer than "
                         f"{limit}")
    checksums = [array_store.file_checksum(p) for p in files]
    header = soft_labels.make_header(
        args.subset, columns, passes, dictionary, sizes,
        teacher_checksum=soft_labels.joined_checksum(checksums),
        teacher={"path": ":".join(os.path.basename(p) for p in files)},
        num_shards=shard.num_shards, shard_id=shard.shard_id, sentence_range=(start, end),
        teacher_kind=kind, teacher_checksums=checksums, temperature=temperature, values=args.store,
    )
    if args.store == "sampled":
        header["seed"] = int(args.seed)
    sharded = shard.num_shards > 1
    path = parts.work_path(args.out, shard.num_shards, shard.shard_id) if sharded else args.out
    what = f"dump {args.subset}" + (f" shard {shard.shard_id}/{shard.num_shards}" if sharded else "")
    if sharded:
        logger.info(f"{what}: sentences [{start}, {end}) of {len(sizes)} -> {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
    store = soft_labels.create_or_resume(path, header, sizes)
    resumed = store.n_done
    if resumed:
        logger.info(f"resuming {path}: {resumed} of {end - start} sentences already written")
    offsets = np.asarray(store["offsets"])  # from 0 at sentence ``start``

    def score(batch):
        """(local sentence j per token, slot, ids, values, gold_logprob) of a batch of local indices."""
        items = [dataset[start + int(j)] for j in batch]
        sampler = None
        if args.store == "sampled":  # the draws of a batch depend on the seed and its first sentence only
            generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + start + int(batch[0]))
            sampler = lambda logits: sampled_values(logits, args.samples, temperature, generator)  # noqa: E731
        if kind == CMLM:
            sentence, *rest = teacher_topk(teacher, items, passes, columns, device, dtype, sampler)
            return (batch[sentence], *rest)
        sample = dataset.collater(items)  # fairseq's teacher forcing: prev_output_tokens = </s> + target[:-1]
        if use_cuda:
            sample = fairseq_utils.move_to_cuda(sample, device=device)
        sentence, *rest = translation_topk(teacher, sample, columns, temperature, dictionary.pad(), sampler)
        return (sentence - start, *rest)

    # Batches of local indices j (sentence start + j); ``start`` is a multiple of the
    # window, so these are the batches one process forms for the same sentences.
    batches = make_batches(src_sizes[start:end], sizes[start:end], passes, args.max_tokens, args.sort_window)
    kill_after = int(os.environ.get("FAIRSEQ_KD_DUMP_KILL_AFTER", "-1"))
    done_now, tokens_now, t0 = 0, 0, time.time()
    for batch in progress(batches, total=len(batches), desc=what, unit="batch"):
        if store.done[batch].all():
            continue
        sentence, slot, ids, values, gold_logprob = score(batch)
        rows = offsets[sentence] + slot  # store rows of these target tokens
        store["ids"][rows] = ids
        store["logits"][rows] = values.astype(np.float16)
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
        final = parts.part_path(args.out, shard.num_shards, shard.shard_id)
        parts.publish(path, final)
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
        "topk": columns,
        "store": args.store,
        "teacher_kind": kind,
        "teacher_models": len(files),
        "temperature": temperature,
    }


def cli_main(argv=None) -> None:
    # OSError: a missing or unwritable file; StoreError is a ValueError
    from ..data.soft_labels import describe_quality

    args, summary = run_command(build_parser(), run, argv, errors=(OSError, ValueError))
    quality = describe_quality(summary["teacher_quality"], summary["topk"], summary["store"] == "sampled")
    if summary["store"] == "sampled":
        quality += (f"; {summary['teacher_models']} {summary['teacher_kind']} teacher(s), {summary['topk']} draws at "
                    f"T={summary['temperature']:g} (train with --kd-temperature {summary['temperature']:g})")
    elif summary["teacher_models"] > 1:
        quality += (f"; {summary['teacher_models']} {summary['teacher_kind']} teachers, probabilities averaged at "
                    f"T={summary['temperature']:g} (train with --kd-temperature {summary['temperature']:g})")
    else:
        quality += f"; {summary['teacher_kind']} teacher, raw logits"
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
