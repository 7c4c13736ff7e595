"""Tiny data and command helpers for fairseq_kd's tests.

fairseq's own tests/utils.py is not installed with fairseq, so the project
keeps its own. Everything runs through the real ``fairseq-*`` console
scripts of the active environment, with ``--user-dir`` pointing at this
checkout's ``fairseq_kd``.
"""
import os
import random
import signal
import subprocess
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_kd")
BIN = os.path.dirname(sys.executable)

# A 1-layer, 32-wide Transformer: trains a few hundred updates in seconds on CPU.
TINY_TRANSFORMER = [
    "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def command(name: str) -> str:
    """Path of a console script (``fairseq-train``, ``fairseq-kd-...``) in this environment."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} is not installed in {BIN}")
    return path


AT_EXIT_ABORT = "terminate called without an active exception"


def run(args: Sequence[str], check: bool = True, cwd: Optional[str] = None, env=None) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and fail with that output shown."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True
    )
    if proc.returncode == -signal.SIGABRT and proc.stderr.rstrip().endswith(AT_EXIT_ABORT):
        # A native abort at interpreter exit, after the command's work (seen a few times in
        # thousands of runs, more often on a loaded machine: a fairseq-train that had saved its
        # checkpoint and logged "done training"): not the plugin's behaviour under test. A
        # fairseq-train that got that far has done all its work, so its output is kept (running
        # it again would resume from the checkpoint it saved and train nothing); any other
        # command runs once more, and a second abort fails the test.
        if "done training in" in proc.stdout + proc.stderr:
            sys.stderr.write(f"tests.utils.run: {args[0]} aborted at exit ({AT_EXIT_ABORT!r}) "
                             "after 'done training': its output is kept\n")
            proc = subprocess.CompletedProcess(proc.args, 0, proc.stdout, proc.stderr)
        else:
            sys.stderr.write(f"tests.utils.run: {args[0]} aborted at exit ({AT_EXIT_ABORT!r}); running it again\n")
            proc = subprocess.run(
                [str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True
            )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def usage_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The refusal of a command, as the plugin ends every one (fairseq-train included):
    exit status 2, no traceback, and ONE stderr line ``<prog>: error: ...`` holding every
    one of ``parts``; returns that line."""
    where = f"\n--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, f"exit status {proc.returncode}, not 2{where}"
    assert "Traceback" not in proc.stderr, f"a traceback, not a one-line error{where}"
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, f"{len(lines)} error lines, not one{where}"
    missing = [p for p in parts if p not in lines[0]]
    assert not missing, f"the error line lacks {missing}: {lines[0]}"
    return lines[0]


def make_copy_task(
    path: str,
    src: str = "src",
    tgt: str = "tgt",
    n_train: int = 300,
    n_valid: int = 30,
    n_test: int = 20,
    vocab: int = 12,
    min_len: int = 2,
    max_len: int = 9,
    seed: int = 0,
) -> str:
    """Write a synthetic translation task as text: the target is the reversed
    source with each word ``aN`` rewritten ``bN``. Learnable by a tiny model in
    a few hundred updates; lengths vary so batches are bucketed and sorted."""
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        with open(os.path.join(path, f"{split}.{src}"), "w") as fs, open(
            os.path.join(path, f"{split}.{tgt}"), "w"
        ) as ft:
            for _ in range(n):
                words = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
                fs.write(" ".join(f"a{w}" for w in words) + "\n")
                ft.write(" ".join(f"b{w}" for w in reversed(words)) + "\n")
    return path


def preprocess(
    text_dir: str, dest_dir: str, src: str = "src", tgt: str = "tgt", extra: Sequence[str] = ()
) -> str:
    """Binarize ``text_dir/{train,valid,test}.{src,tgt}`` with fairseq-preprocess."""
    splits = [s for s in ("train", "valid", "test") if os.path.exists(os.path.join(text_dir, f"{s}.{src}"))]
    args = [command("fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
            "--destdir", dest_dir, "--workers", "1"]
    for s in splits:
        args += [f"--{'valid' if s == 'valid' else s}pref", os.path.join(text_dir, s)]
    run(args + list(extra))
    return dest_dir


def train(
    data_bin: str,
    save_dir: str,
    extra: Sequence[str] = (),
    arch: Sequence[str] = TINY_TRANSFORMER,
    max_update: int = 50,
    criterion: Sequence[str] = ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"),
    check: bool = True,
) -> subprocess.CompletedProcess:
    """fairseq-train with --user-dir fairseq_kd, tiny and deterministic."""
    args = [
        command("fairseq-train"), data_bin, "--user-dir", USER_DIR,
        "--save-dir", save_dir, *arch, *criterion,
        "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", "10", "--max-tokens", "500", "--max-update", str(max_update),
        "--seed", "1", "--num-workers", "0", "--log-format", "json", "--log-interval", "10",
        "--no-epoch-checkpoints", "--no-progress-bar", "--cpu", "--disable-validation",
    ]
    args += list(extra)
    return run(args, check=check)


def generate(data_bin: str, path: str, extra: Sequence[str] = (), subset: str = "test") -> List[str]:
    """fairseq-generate; returns the hypothesis lines (``H-`` rows), in id order.

    ``--required-batch-size-multiple 1``: fairseq otherwise drops the last batch
    when its size is not a multiple of 8 (fairseq issue #5036), and sentences
    silently vanish from the output."""
    proc = run([
        command("fairseq-generate"), data_bin, "--user-dir", USER_DIR, "--path", path,
        "--gen-subset", subset, "--beam", "2", "--max-tokens", "2000", "--cpu",
        "--num-workers", "0", "--required-batch-size-multiple", "1", *extra,
    ])
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("H-")]
    rows.sort(key=lambda r: int(r[0][2:]))
    return [r[2] for r in rows]


def json_logs(stdout_or_stderr: str) -> List[dict]:
    """The JSON log records fairseq-train prints with --log-format json."""
    import json

    records = []
    for line in stdout_or_stderr.splitlines():
        brace = line.find("{")
        if brace < 0:
            continue
        try:
            records.append(json.loads(line[brace:]))
        except ValueError:
            pass
    return records


def build_in_process(argv: Sequence[str]):
    """Parse fairseq-train arguments and build (cfg, task, model, criterion)
    in this process, for tests that compare losses on the same batch."""
    import fairseq_kd  # noqa: F401  (registers the plugin)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["--user-dir", USER_DIR, *argv])
    cfg = convert_namespace_to_omegaconf(args)
    # Seeded as fairseq-train seeds: the model's initial weights must not depend
    # on what earlier tests drew from the global generators.
    np.random.seed(cfg.common.seed)
    torch.manual_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, model, criterion


def assert_close_by_norm(got, want, rtol: float = 1e-4, atol: float = 1e-12, what: str = "") -> None:
    """Assert ||got - want|| <= rtol * ||want|| + atol.

    Element-wise relative tolerances fail on entries that cancel to almost zero,
    whose rounding depends on the CPU's kernels and thread count; the error
    relative to the whole tensor's norm does not. A tensor that is zero in exact
    arithmetic (a key-projection bias's gradient) is all rounding noise: give
    ``atol`` relative to the scale of what it is part of."""
    got, want = got.double(), want.double()
    err, scale = (got - want).norm().item(), want.norm().item()
    assert err <= rtol * scale + atol, f"{what}: |got - want| = {err:.3g}, |want| = {scale:.3g}"


def first_batch(task, split: str = "train", max_tokens: int = 400, seed: int = 1):
    """One collated batch of a split, as fairseq-train would build it."""
    task.load_dataset(split)
    itr = task.get_batch_iterator(
        dataset=task.dataset(split), max_tokens=max_tokens, seed=seed, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return next(iter(itr))


def make_classification_task(
    path: str,
    n_train: int = 200,
    n_valid: int = 40,
    pairs: bool = False,
    vocab: int = 10,
    min_len: int = 2,
    max_len: int = 8,
    seed: int = 0,
) -> str:
    """Write a synthetic sentence(-pair) classification task as text:
    ``{train,valid}.input0`` (and ``.input1``) and ``.label`` ("0"/"1").

    Words are ``pN`` / ``nN``; the label is 1 when the sentence (pair) has more
    ``p`` words than ``n`` words. Learnable by a tiny BiLSTM in a few updates."""
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid)):
        files = {k: open(os.path.join(path, f"{split}.{k}"), "w") for k in
                 (["input0", "input1"] if pairs else ["input0"]) + ["label"]}
        for _ in range(n):
            score = 0
            for key in files:
                if key == "label":
                    continue
                words = [rng.choice("pn") + str(rng.randrange(vocab)) for _ in range(rng.randint(min_len, max_len))]
                score += sum(1 if w[0] == "p" else -1 for w in words)
                files[key].write(" ".join(words) + "\n")
            files["label"].write(("1" if score > 0 else "0") + "\n")
        for f in files.values():
            f.close()
    return path


def preprocess_classification(text_dir: str, dest_dir: str, splits: Sequence[str] = ("train", "valid")) -> str:
    """Binarize a classification task as fairseq's sentence_prediction reads it:
    ``dest/input0``, ``dest/input1`` (pairs) and ``dest/label``, with a fixed
    label dictionary so that label "0" is class 0 and "1" class 1.

    A split's label file may hold ``<unk>`` (no gold label: target -1)."""
    os.makedirs(dest_dir, exist_ok=True)
    label_dict = os.path.join(dest_dir, "label.dict.txt")
    with open(label_dict, "w") as f:
        f.write("0 1\n1 1\n")
    input_dict = os.path.join(dest_dir, "input0", "dict.txt")
    for key in ("input0", "input1", "label"):
        present = [s for s in splits if os.path.exists(os.path.join(text_dir, f"{s}.{key}"))]
        if not present:
            continue
        args = [command("fairseq-preprocess"), "--only-source", "--workers", "1",
                "--destdir", os.path.join(dest_dir, key)]
        if key == "label":
            args += ["--srcdict", label_dict]
        elif key == "input1":
            args += ["--srcdict", input_dict]
        elif "train" not in present:
            raise ValueError("preprocess_classification needs train.input0 to build the dictionary")
        others = [s for s in present if s not in ("train", "valid")]
        for split, option in (("train", "--trainpref"), ("valid", "--validpref")):
            if split in present:
                args += [option, os.path.join(text_dir, f"{split}.{key}")]
        if others:  # binarized as test, test1, ... then renamed
            args += ["--testpref", ",".join(os.path.join(text_dir, f"{s}.{key}") for s in others)]
        _preprocess_in_process(args[1:])
        for i, split in enumerate(others):
            for ext in ("bin", "idx"):
                os.replace(os.path.join(dest_dir, key, f"test{i or ''}.{ext}"),
                           os.path.join(dest_dir, key, f"{split}.{ext}"))
    return dest_dir


def _preprocess_in_process(argv: Sequence[str]) -> None:
    """fairseq-preprocess's own main, in this process: data setup for tests that
    test something else, without paying fairseq's import once per call."""
    from fairseq import options
    from fairseq_cli import preprocess as fairseq_preprocess

    args = options.get_preprocessing_parser().parse_args([str(a) for a in argv])
    fairseq_preprocess.main(args)


# A 1-layer, 16-unit BiLSTM classifier with 16-d embeddings.
TINY_BILSTM = ["--arch", "bilstm_classifier", "--embed-dim", "16", "--lstm-hidden-size", "16",
               "--classifier-hidden-size", "16"]


def train_classifier(
    data_bin: str,
    save_dir: str,
    extra: Sequence[str] = (),
    arch: Sequence[str] = TINY_BILSTM,
    task: str = "sentence_prediction",
    criterion: Sequence[str] = ("--criterion", "sentence_prediction"),
    max_update: int = 30,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """fairseq-train on a classification task (2 classes), tiny and deterministic."""
    args = [
        command("fairseq-train"), data_bin, "--user-dir", USER_DIR, "--task", task, "--num-classes", "2",
        "--save-dir", save_dir, *arch, *criterion,
        "--optimizer", "adam", "--lr", "0.01", "--batch-size", "16", "--max-update", str(max_update),
        "--seed", "1", "--num-workers", "0", "--log-format", "json", "--log-interval", "5",
        "--no-epoch-checkpoints", "--no-progress-bar", "--cpu", "--required-batch-size-multiple", "1",
    ]
    return run(args + list(extra), check=check)


def distill_corpus(data_bin: str, teacher: str, out: str, extra: Sequence[str] = (), check: bool = True):
    """fairseq-kd-distill-corpus on the CPU (a sequence-level KD corpus in ``out``)."""
    return run([command("fairseq-kd-distill-corpus"), data_bin, "--path", teacher, "--out", out,
                "--cpu", "--max-tokens", "2000", *extra], check=check)


def make_bert_task(root: str, n_train: int = 300, with_head: bool = True) -> tuple:
    """A copy task (:func:`make_copy_task`) in the vocabulary of a tiny random
    BERT (:func:`fairseq_kd.data.bert_io.write_checkpoint`), binarized with
    ``--joined-dictionary`` as the C-MLM teacher needs: ``(bert_dir, data_bin)``."""
    from fairseq_kd.data import bert_io

    text = make_copy_task(os.path.join(root, "text"), n_train=n_train)
    words = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)]
    bert = bert_io.write_checkpoint(os.path.join(root, "bert"), words, with_head=with_head)
    data_bin = preprocess(text, os.path.join(root, "bin"), extra=["--joined-dictionary"])
    return bert, data_bin


def train_bert_teacher(
    data_bin: str, bert_dir: str, save_dir: str, max_update: int = 30, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """fairseq-train --task conditional_mlm on a tiny BERT checkpoint."""
    return run([
        command("fairseq-train"), data_bin, "--user-dir", USER_DIR, "--task", "conditional_mlm",
        "--arch", "bert_teacher_base", "--bert-path", bert_dir, "--save-dir", save_dir,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0", "--report-accuracy",
        "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "600", "--max-update", str(max_update),
        "--seed", "1", "--num-workers", "0", "--log-format", "json", "--log-interval", "5",
        "--no-epoch-checkpoints", "--no-progress-bar", "--cpu", *extra,
    ])


# Shrinks the NAT presets (--arch cmlm_kd_* / levt_kd_*) to 1 layer, 32 wide.
TINY_NAT_SIZES = [
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--dropout", "0.1",
]


def make_nat_data(root: str, teacher_updates: int = 120) -> dict:
    """Tiny data for NAT students: the copy task binarized with one joined
    dictionary (the NAT presets share all embeddings), an autoregressive
    teacher trained on it, and the teacher's distilled corpus.

    Returns {"bin", "teacher", "distilled"} paths."""
    text, data_bin = os.path.join(root, "text"), os.path.join(root, "bin")
    make_copy_task(text)
    preprocess(text, data_bin, extra=["--joined-dictionary"])
    save = os.path.join(root, "teacher")
    train(data_bin, save, max_update=teacher_updates, extra=["--share-all-embeddings"])
    teacher = os.path.join(save, "checkpoint_last.pt")
    distilled = os.path.join(root, "distilled")
    distill_corpus(data_bin, teacher, distilled)
    return {"bin": data_bin, "teacher": teacher, "distilled": distilled}


def check_nat_preset(arch: str, model_name: str, ffn: int, heads: int, module: str):
    """A NAT preset of the plugin: registered on fairseq's ``model_name`` by ``module``,
    with the papers' 6+6 x 512 sizes, ``ffn`` / ``heads``, shared embeddings, BERT
    init, learned positions and dropout 0.3. Returns the filled-in arguments."""
    import argparse

    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    assert ARCH_MODEL_REGISTRY[arch] is MODEL_REGISTRY[model_name]
    assert ARCH_CONFIG_REGISTRY[arch].__module__ == module
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    assert (args.encoder_layers, args.decoder_layers) == (6, 6)
    assert (args.encoder_embed_dim, args.decoder_embed_dim) == (512, 512)
    assert (args.encoder_ffn_embed_dim, args.decoder_ffn_embed_dim) == (ffn, ffn)
    assert (args.encoder_attention_heads, args.decoder_attention_heads) == (heads, heads)
    assert args.share_all_embeddings and args.apply_bert_init
    assert args.encoder_learned_pos and args.decoder_learned_pos
    assert args.dropout == 0.3
    return args


def train_and_decode_nat(data: str, save: str, arch: str, noise: str, length_beam: int) -> None:
    """A tiny NAT student of ``arch`` trained 30 updates on ``data`` with the stock
    ``--task translation_lev`` (its word_ins loss falls) and decoded by fairseq-generate
    with 4 refinement iterations: one hypothesis per test sentence."""
    import math

    proc = train(
        data, save, max_update=30, arch=["--arch", arch, *TINY_NAT_SIZES],
        criterion=["--criterion", "nat_loss", "--label-smoothing", "0.1"],
        extra=["--task", "translation_lev", "--noise", noise],
    )
    logs = [r for r in json_logs(proc.stdout + proc.stderr) if "word_ins" in r]
    assert logs, "no word_ins term logged"
    first, last = float(logs[0]["word_ins"]), float(logs[-1]["word_ins"])
    assert math.isfinite(last) and last < first
    hyps = generate(
        data, f"{save}/checkpoint_last.pt",
        extra=["--task", "translation_lev", "--iter-decode-max-iter", "4", "--iter-decode-with-beam", str(length_beam)],
    )
    assert len(hyps) == 20  # one hypothesis per test sentence (make_copy_task's n_test)
