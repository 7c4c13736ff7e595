"""``fairseq-kd-dump-logits``: store a teacher classifier's logits for a split.

Runs a fairseq classifier checkpoint (a ``bert_classifier`` or ``roberta`` model
fine-tuned with ``--task sentence_prediction``, or any model with RoBERTa's
``classification_heads`` interface) over a binarized split, original or
augmented, and writes its logits (float32, sentences x C) as a store that
``--task sentence_prediction_kd --teacher-logits DIR`` reads (Tang et al. 2019).

The teacher reads its own binarization (``--data``, e.g. BERT WordPiece); the
store is aligned, line by line, with the student's binarization of the same
sentences (``--align-with``, default ``--data``), whose fingerprints go into
the header and are checked when the student loads the store. Gold labels of
the two must agree where both exist. Sentences are run in batches of similar
length (shortest first), which wastes little on padding.

Example::

    fairseq-kd-dump-logits --path teacher/checkpoint_best.pt --data bin-teacher \\
        --align-with bin-student --split train_aug --out logits/train_aug
"""
import argparse
import logging

import numpy as np
import torch

from . import _common

logger = logging.getLogger("fairseq_kd.cli.dump_logits")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-kd-dump-logits",
        description="Store a teacher classifier's logits for every sentence of a binarized split.",
    )
    parser.add_argument("--path", required=True, help="teacher checkpoint (fairseq classifier)")
    parser.add_argument("--data", required=True, help="the teacher's binarized data directory (input0/, label/)")
    parser.add_argument("--split", required=True, help="split to run the teacher over (e.g. train, train_aug)")
    parser.add_argument(
        "--align-with", default=None,
        help="the student's binarized data directory holding the same sentences in the same order "
        "(default: --data); the store is checked against it when the student loads it",
    )
    parser.add_argument("--out", required=True, help="output directory of the logit store")
    parser.add_argument(
        "--classification-head-name", default="sentence_classification_head",
        help="name of the teacher's classification head",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    _common.add_device_arguments(parser)
    return parser


def check_classification_head(model, path: str, head: str) -> None:
    """Refuse a model without the classification head ``head``."""
    heads = getattr(model, "classification_heads", None)
    if heads is None or head not in heads:
        raise ValueError(
            f"{path}: the model has no classification head {head!r} "
            f"(heads: {sorted(heads) if heads is not None else 'none'}); is it a sentence_prediction checkpoint?"
        )


def length_sorted_batches(dataset, batch_size: int, max_positions) -> list:
    """Sentence ids in batches of ``batch_size``, shortest first: the logits do not
    depend on the order, and batches of similar lengths waste little on padding.
    Raises on a sentence longer than ``max_positions``."""
    sizes = np.array([dataset.num_tokens(i) for i in range(len(dataset))], dtype=np.int64)
    if max_positions is not None and len(sizes) and sizes.max() > max_positions:
        i = int(np.argmax(sizes > max_positions))
        raise ValueError(f"sentence {i} has {sizes[i]} tokens; the teacher takes at most {max_positions}")
    order = np.argsort(sizes, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def class_symbols(label_dict, num_classes: int):
    return list(label_dict.symbols[label_dict.nspecial: label_dict.nspecial + num_classes])


def run(args) -> dict:
    from fairseq import utils as fairseq_utils

    from ..data import array_store, logits_store

    from ..teacher import load_teacher, split_paths

    _common.check_minimums(args, {"batch_size": 1})
    if len(split_paths(args.path)) > 1:
        raise ValueError(f"--path {args.path}: dump-logits runs one classifier; give one checkpoint")
    align = args.align_with or args.data
    device, dtype = _common.device_and_dtype(args)
    teacher = load_teacher(args.path, data=args.data, device=device, dtype=dtype)
    model, task = teacher.models[0], teacher.task
    check_classification_head(model, args.path, args.classification_head_name)
    num_classes = int(task.cfg.num_classes)
    if getattr(task.cfg, "regression_target", False):
        raise ValueError(f"{args.path} is a regression model; logits are for classification")

    # Alignment of the teacher's split with the student's.
    student = logits_store.fingerprint(align, args.split)
    teacher_print = logits_store.split_fingerprint(args.data, args.split, task.source_dictionary)
    if teacher_print["sentences"] != student["sentences"]:
        raise ValueError(
            f"split {args.split!r} has {teacher_print['sentences']} sentences in {args.data} (teacher) "
            f"and {student['sentences']} in {align} (--align-with): not the same sentences"
        )
    student_labels = logits_store.label_dictionary(align)
    if student_labels is not None:
        ours, theirs = class_symbols(task.label_dictionary, num_classes), class_symbols(student_labels, num_classes)
        if ours != theirs:
            raise ValueError(
                f"label order differs: teacher classes {ours} ({args.data}/label/dict.txt), student "
                f"classes {theirs} ({align}/label/dict.txt); binarize both with the same label dictionary"
            )
        gold_T = logits_store.labels_of(args.data, args.split, task.label_dictionary)
        gold_S = logits_store.labels_of(align, args.split, student_labels)
        if gold_T is not None and gold_S is not None:
            bad = next((i for i, (a, b) in enumerate(zip(gold_T, gold_S)) if a != b), None)
            if bad is not None:
                raise ValueError(
                    f"gold labels differ at sentence {bad} of split {args.split!r}: {gold_T[bad]!r} in "
                    f"{args.data}, {gold_S[bad]!r} in {align}: the splits are not aligned"
                )

    header = dict(
        student,
        kind=logits_store.KIND,
        num_classes=num_classes,
        classification_head=args.classification_head_name,
        teacher_sha256=array_store.file_checksum(args.path),
        teacher_sizes_checksum=teacher_print["sizes_checksum"],
    )
    n = student["sentences"]
    store = array_store.resume(args.out, header)
    if store is None:
        store = array_store.create(args.out, header, {"logits": ((n, num_classes), "float32")}, units=n)
    else:
        logger.info(f"resuming {args.out}: {store.n_done} of {n} sentences already written")
    _common.record_run(args.out, args)

    task.load_dataset(args.split)
    dataset = task.dataset(args.split)
    batches = length_sorted_batches(
        dataset, args.batch_size, fairseq_utils.resolve_max_positions(task.max_positions(), model.max_positions())
    )
    done = np.asarray(store.done)
    n_correct = n_labelled = 0
    with torch.no_grad():
        for batch in _common.progress(batches, total=len(batches), desc="teacher logits", unit="batch"):
            if done[batch].all():
                continue
            sample = dataset.collater([dataset[i] for i in batch])
            ids = sample["id"].numpy()
            sample = fairseq_utils.move_to_cuda(sample) if device.type == "cuda" else sample
            logits, _ = model(
                **sample["net_input"], features_only=True, classification_head_name=args.classification_head_name
            )  # B x C
            logits = logits.float().cpu()
            store["logits"][ids] = logits.numpy()
            store.mark_done(ids)
            if "target" in sample:
                target = sample["target"].view(-1).cpu()
                labelled = target >= 0
                n_labelled += int(labelled.sum())
                n_correct += int((logits.argmax(-1).eq(target) & labelled).sum())
    header = array_store.finish(store)
    return {**header, "labelled": n_labelled, "correct": n_correct, "num_classes": num_classes}


def cli_main(argv=None) -> None:
    # StoreError and CheckpointError are ValueErrors
    args, summary = _common.run_command(build_parser(), run, argv)
    n, labelled = summary["sentences"], summary["labelled"]
    accuracy = f"{100.0 * summary['correct'] / labelled:.2f}% on {labelled} labelled" if labelled else "n/a"
    print(
        f"dumped teacher logits: {n} sentences x {summary['num_classes']} classes of split {args.split!r} -> "
        f"{args.out} (teacher accuracy {accuracy} sentences written in this run)"
    )


if __name__ == "__main__":
    cli_main()
