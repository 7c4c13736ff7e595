"""Decoding a split with fairseq models, and choosing among their hypotheses.

What ``fairseq-kd-distill-corpus`` (sequence-level KD) and ``fairseq-kd-evaluate``
share:

- :func:`add_generation_args` / :func:`generation_config`: fairseq's own
  generation options (``--beam``, ``--nbest``, ``--max-len-a/-b``,
  ``--lenpen``, ``--iter-decode-*``), declared by fairseq's
  ``GenerationConfig`` (help, type, default) and handed to
  ``task.build_generator`` as that dataclass: beam search for autoregressive
  models, iterative refinement for ``translation_lev`` ones;
- :func:`decode`: every sentence of a dataset, hypotheses by sentence id (the
  original order, not the length-sorted order batches come in);
  :func:`range_dataset` restricts it to a shard's sentences;
- :func:`select_seq_inter` / :func:`select_targets`: which hypothesis a
  distilled corpus keeps (the top one, or Kim & Rush's Sequence-level
  Interpolation), with the reference kept where the teacher gives none.

fairseq is imported inside the functions, so that a command's ``--help`` is fast.
"""
import argparse
import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

GENERATION_OPTIONS = ("beam", "nbest", "max_len_a", "max_len_b", "lenpen",
                      "iter_decode_max_iter", "iter_decode_force_max_iter", "iter_decode_with_beam")
"""The fields of fairseq's ``GenerationConfig`` the commands expose (the others keep
fairseq's defaults): beam search, and iterative refinement for NAT models."""

SELECT = ("top", "seq-inter")


# ------------------------------------------------------------------ options
def add_generation_args(parser: argparse.ArgumentParser, options: Sequence[str] = GENERATION_OPTIONS,
                        defaults: Optional[Mapping[str, object]] = None) -> None:
    """Add fairseq's generation options named in ``options`` (``GenerationConfig`` field
    names) to ``parser``, with fairseq's help text, type and default; ``defaults``
    overrides a default (a command that has always had another one)."""
    from fairseq.dataclass.configs import GenerationConfig

    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    group = parser.add_argument_group("generation (fairseq's options, as fairseq-generate has them)")
    for name in options:
        field = fields[name]
        default = (defaults or {}).get(name, field.default)
        flag, help_text = "--" + name.replace("_", "-"), field.metadata.get("help", "")
        if field.type is bool:
            group.add_argument(flag, action="store_true", default=default, help=help_text)
        else:
            group.add_argument(flag, type=field.type, default=default, help=f"{help_text} (default: {default})")


def generation_config(args: argparse.Namespace):
    """fairseq's ``GenerationConfig`` for ``task.build_generator``: the options of
    :func:`add_generation_args` from ``args``, fairseq's defaults for the rest."""
    from fairseq.dataclass.configs import GenerationConfig

    return GenerationConfig(**{name: getattr(args, name) for name in GENERATION_OPTIONS if hasattr(args, name)})


# ----------------------------------------------------------------- decoding
def decode(task, models, dataset, generator, max_tokens: Optional[int], batch_size: Optional[int],
           use_cuda: bool, nbest: int, desc: str = "decode",
           progress: Optional[Callable] = None) -> Dict[int, List[Tuple[torch.Tensor, float]]]:
    """Decode every sentence ``dataset`` lets through; {sentence id: [(tokens, score)] * <= nbest}.

    tokens are CPU int tensors ending with EOS. Sentences longer than the
    models' max positions are skipped here (fairseq's ``ignore_invalid_inputs``);
    the caller finds them as missing ids. ``progress(iterable, total=, desc=, unit=)``
    wraps the batches (a command's progress bar; default none).
    """
    from fairseq import utils

    max_positions = utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=max_positions, ignore_invalid_inputs=True,
        # a multiple > 1 would drop the last batch's remainder (fairseq issue #5036)
        required_batch_size_multiple=1, seed=1, num_shards=1, shard_id=0, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    batches = progress(itr, total=len(itr), desc=desc, unit="batch") if progress else itr
    results: Dict[int, List[Tuple[torch.Tensor, float]]] = {}
    for sample in batches:
        if not sample or "net_input" not in sample:
            continue
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        hypos = task.inference_step(generator, models, sample)
        for i, sid in enumerate(sample["id"].tolist()):
            results[sid] = [(h["tokens"].int().cpu(), float(h["score"])) for h in hypos[i][:nbest]]
    return results


def range_dataset(dataset, start: int, end: int):
    """``dataset`` restricted to sentence ids [start, end) for batching: ids stay global
    (sample["id"] is the id in the whole split) and batches are formed as the
    whole split's order has them (the inner dataset's sort, range kept)."""
    from fairseq.data import BaseWrapperDataset

    class RangeDataset(BaseWrapperDataset):
        def ordered_indices(self):
            order = self.dataset.ordered_indices()
            return order[(order >= start) & (order < end)]

    return RangeDataset(dataset)


# ---------------------------------------------------------------- selection
def sentence_bleu_scorer():
    """A function (hyp, ref) -> sacreBLEU sentence BLEU (0-100), metric object built once."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)  # sentence_bleu's defaults: 13a, exp smoothing
    return lambda hyp, ref: metric.sentence_score(hyp, [ref]).score


def select_seq_inter(hypotheses: Sequence[str], reference: str, bleu=None) -> Tuple[int, List[float]]:
    """Kim & Rush (2016) Sequence-level Interpolation: the K-best entry closest to the reference.

    Args:
        hypotheses: the teacher's K best, best model score first (post-processed strings).
        reference: the gold target, post-processed the same way.
        bleu: (hyp, ref) -> score; default sacreBLEU sentence BLEU.

    Returns:
        (index of the hypothesis with the highest sentence BLEU, all K scores).
        Ties go to the earlier (higher model score) hypothesis.
    """
    if not hypotheses:
        raise ValueError("select_seq_inter needs at least one hypothesis")
    bleu = bleu or sentence_bleu_scorer()
    scores = [bleu(h, reference) for h in hypotheses]
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    return best, scores


def select_targets(src_tgt, results, ids, tgt_dict, select: str, post: Optional[str], bleu) -> dict:
    """Per sentence of ``ids`` (in order): the distilled target and why.

    ``src_tgt`` has ``.tgt`` (reference token tensors by global id), ``results``
    is :func:`decode`'s. ``select`` is one of :data:`SELECT`; ``post`` the BPE
    removed before sentence BLEU. Returns {"targets": [tensor], "rank": [n-best
    rank chosen, -1 = reference kept], "bleu": [sentence BLEU vs reference],
    "too_long": [ids], "empty": [ids]}.
    """
    out = {"targets": [], "rank": [], "bleu": [], "too_long": [], "empty": []}
    for sid in ids:
        ref = src_tgt.tgt[sid]
        ref_text = tgt_dict.string(ref, post)
        candidates = [(t, s) for t, s in results.get(sid, []) if t.numel() > 1]  # > 1: not only EOS
        if sid not in results:
            out["too_long"].append(sid)
        elif not candidates:
            out["empty"].append(sid)
        if not candidates:
            tokens, rank = ref.int(), -1
        elif select == "seq-inter" and len(candidates) > 1:
            rank, _ = select_seq_inter([tgt_dict.string(t, post) for t, _ in candidates], ref_text, bleu)
            tokens = candidates[rank][0]
        else:
            tokens, rank = candidates[0][0], 0
        out["targets"].append(tokens)
        out["rank"].append(rank)
        out["bleu"].append(bleu(tgt_dict.string(tokens, post), ref_text))
    return out
