#!/usr/bin/env python
"""sacreBLEU and chrF of fairseq-generate's detokenized (D-) lines against raw references.

usage: python scripts/sacrebleu_generate.py GENERATE_OUTPUT REFERENCE [--score-only | --plain]

Hypotheses are put back in sentence-id order; a missing sentence is an error
(fairseq drops the last batch unless --required-batch-size-multiple 1).
"""
import argparse
import sys

import sacrebleu


def read_hypotheses(path):
    hyps = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("D-"):
                parts = line.rstrip("\n").split("\t")
                hyps[int(parts[0][2:])] = parts[2] if len(parts) > 2 else ""
    return [hyps[i] for i in sorted(hyps)], sorted(hyps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("generate_output", help="fairseq-generate stdout with D- lines (--tokenizer/--bpe set)")
    parser.add_argument("reference", help="raw (detokenized) reference text, one sentence a line")
    parser.add_argument("--score-only", action="store_true", help="print the BLEU score alone")
    parser.add_argument("--plain", action="store_true", help="print 'BLEU chrF' (two numbers) on one line")
    args = parser.parse_args()
    hyps, ids = read_hypotheses(args.generate_output)
    with open(args.reference, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    if ids != list(range(len(refs))):
        sys.exit(f"{args.generate_output}: {len(ids)} hypotheses for {len(refs)} references")
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    if args.score_only:
        print(f"{bleu.score:.2f}")
    elif args.plain:
        print(f"{bleu.score:.2f} {sacrebleu.corpus_chrf(hyps, [refs]).score:.2f}")
    else:
        print(bleu)
        print(sacrebleu.corpus_chrf(hyps, [refs]))


if __name__ == "__main__":
    main()
