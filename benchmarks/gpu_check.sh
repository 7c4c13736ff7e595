#!/usr/bin/env bash
# One prepared GPU check: the figures only a GPU can give, in one run of under 10 minutes on
# one GPU, written to one results file (JSON). Builds its own data and models in a work directory.
#
#   1. C-MLM teacher training with --fp16 (--task conditional_mlm, --arch bert_teacher_base on a
#      random BERT of MiniLM's shape, 6 x 384): the masked-token loss of every log interval,
#      finite and falling
#   2. fairseq-kd-dump-soft-labels, top-8 of the training split in fp16 on one GPU: target
#      tokens/s of the C-MLM teacher (7 passes) and of an autoregressive teacher (3+3 x 256)
#   3. student words/s (2+2 x 128 Transformer, fairseq-train --fp16, the criterions' runs
#      alternating in one invocation): label smoothing vs word_kd with the online AT teacher
#      (--teacher-path) vs word_kd from that teacher's top-8 store (--task translation_kd
#      --soft-labels); the two ratios to label smoothing
#   4. latency at batch 1 (fairseq-kd-evaluate, fp16): Mask-Predict (cmlm_kd_iwslt_de_en, 10
#      iterations, 3 length candidates) and Levenshtein (levt_kd_iwslt_de_en, 10 iterations)
#      students vs the AT student at beam 5, all 2+2 x 128 (the Multi30k study's sizes)
#
# usage: bash benchmarks/gpu_check.sh [--out FILE] [--dry-run] [--data auto|synthetic|multi30k]
#            [--work DIR] [-h|--help]
#   --out FILE    the results file (default: benchmarks/gpu_check.results.json)
#   --dry-run     tiny sizes, a couple of updates each, on the CPU in float32 (--cpu, no --fp16):
#                 checks that every stage runs and writes the same keys; the numbers mean nothing
#   --data KIND   synthetic: a copy task (tests/utils.py) with an 8,000-word joined vocabulary and
#                 30,000 training pairs (Multi30k's shape); multi30k: examples/multi30k/prepare.sh
#                 from FAIRSEQ_KD_DATA=DIR (DIR/multi30k/*.gz), about 2 more minutes; auto
#                 (default): multi30k when FAIRSEQ_KD_DATA holds it and not --dry-run, else synthetic
#   --work DIR    work directory, kept (default: a temporary one, removed at the end when every
#                 stage succeeded)
# Environment: PYTHON (default: .venv/bin/python, else python3), CUDA_VISIBLE_DEVICES (default 0:
# the figures are per GPU). Every stage's log is WORK/logs/STAGE.log; a failed stage is reported,
# the others still run, the results file records it, and the exit status is 1.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

OUT= DRY=0 DATA_KIND=auto WORK=
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --data) DATA_KIND=${2:?--data needs auto, synthetic or multi30k}; shift 2 ;;
    --work) WORK=${2:?--work needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $DATA_KIND in auto|synthetic|multi30k) ;; *) echo "gpu_check: --data $DATA_KIND: use auto, synthetic or multi30k" >&2; exit 2 ;; esac

# Paths given on the command line are relative to where the script was started; the rest to the repository.
abspath() { mkdir -p "$(dirname "$1")" && echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
[ -n "$OUT" ] && OUT=$(abspath "$OUT")
[ -n "$WORK" ] && { mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd); }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/benchmarks/gpu_check.results.json}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BIN=$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH="$BIN:$PATH"  # fairseq-*, fairseq-kd-*, and the recipe's sacremoses / subword-nmt
START=$SECONDS
say() { printf 'gpu_check [%4ds] %s\n' $((SECONDS - START)) "$*"; }

have_multi30k() { [ -n "${FAIRSEQ_KD_DATA:-}" ] && [ -f "$FAIRSEQ_KD_DATA/multi30k/train.de.gz" ]; }
if [ "$DATA_KIND" = auto ]; then
  DATA_KIND=synthetic
  if [ "$DRY" = 0 ] && have_multi30k; then DATA_KIND=multi30k; fi
fi
if [ "$DATA_KIND" = multi30k ] && ! have_multi30k; then
  echo "gpu_check: --data multi30k needs FAIRSEQ_KD_DATA=DIR with DIR/multi30k/train.de.gz (examples/multi30k/prepare.sh)" >&2
  exit 2
fi

if [ "$DRY" = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEVICE=cpu
  DEV=(--cpu) HALF=()
else
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  DEVICE=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)
  if [ -z "$DEVICE" ]; then
    echo "gpu_check: no CUDA GPU visible to torch ($PYTHON): run it on a GPU machine, or with --dry-run on a CPU" >&2
    exit 2
  fi
  DEV=() HALF=(--fp16)
fi

# ------------------------------------------------------------------ sizes
TEACHER_SIZE=(--encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256
  --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 --decoder-attention-heads 4)
STUDENT_SIZE=(--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
  --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4)
if [ "$DRY" = 1 ]; then
  TINY=(--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32
    --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2)
  TEACHER_SIZE=("${TINY[@]}") STUDENT_SIZE=("${TINY[@]}")
  SYNTH="n_train=120 n_valid=20 n_test=20 vocab=12 min_len=2 max_len=9"
  BERT="hidden=16 layers=2 heads=2 ffn=32 max_positions=64"
  UPDATES=3 CMLM_UPDATES=4 LOG_INTERVAL=1 WARMUP=1 MAX_TOKENS=600 DUMP_MAX_TOKENS=2000
  WPS=(--updates 2 --log-interval 1 --repeats 1 --max-tokens 200 --teacher-batches 2
    --student-args "--arch transformer --share-all-embeddings ${TINY[*]}")
  LATENCY_SENTENCES=2 WORKERS=1 DATA_WORKERS=0
else
  SYNTH="n_train=30000 n_valid=500 n_test=1000 vocab=4000 min_len=3 max_len=25"
  BERT="hidden=384 layers=6 heads=12 ffn=1536 max_positions=128"  # all-MiniLM-L6-v2's shape (more positions if the data needs)
  UPDATES=600 CMLM_UPDATES=300 LOG_INTERVAL=25 WARMUP=100 MAX_TOKENS=4096 DUMP_MAX_TOKENS=16384
  WPS=(--updates 120 --log-interval 20 --repeats 2 --max-tokens 4096)  # student: benchmarks/_common.py's 2+2 x 128
  LATENCY_SENTENCES=100 WORKERS=$(nproc) DATA_WORKERS=1
fi

# ------------------------------------------------------------- work area
KEEP=0
if [ -n "$WORK" ]; then KEEP=1; else WORK=$(mktemp -d -t gpu_check.XXXXXX); fi
mkdir -p "$WORK/logs" "$WORK/parts" "$WORK/stages" "$WORK/eval"
DATA=$WORK/data-bin
if [ "$DATA_KIND" = multi30k ]; then SRC=de TGT=en DECODE=(--remove-bpe subword_nmt --tokenizer moses)
else SRC=src TGT=tgt DECODE=(--remove-bpe none --tokenizer none); fi

# The helper: data and BERT set-up, fairseq-train log parsing, the results file.
read -r -d '' HELPER <<'PYTHON' || true
import json, math, os, subprocess, sys

def opts(argv):
    return dict(a.split("=", 1) for a in argv)

def write_json(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)

def data(o):
    """Synthetic text (the tests' copy task) binarized with one joined dictionary, or a
    prepared data directory; then a random BERT whose vocabulary is that dictionary."""
    from fairseq.data import Dictionary, data_utils
    import fairseq_kd  # noqa: F401
    from fairseq_kd.data import bert_io
    src, tgt, dest = o["src"], o["tgt"], o["bin"]
    if o["kind"] == "synthetic":
        sys.path.insert(0, "tests")
        import utils
        from fairseq import options
        from fairseq_cli import preprocess
        text = utils.make_copy_task(o["text"], src, tgt, n_train=int(o["n_train"]), n_valid=int(o["n_valid"]),
                                    n_test=int(o["n_test"]), vocab=int(o["vocab"]), min_len=int(o["min_len"]),
                                    max_len=int(o["max_len"]))
        preprocess.main(options.get_preprocessing_parser().parse_args([
            "--source-lang", src, "--target-lang", tgt, "--joined-dictionary", "--workers", o["workers"],
            "--destdir", dest, *[x for s in ("train", "valid", "test")
                                 for x in (f"--{s}pref", os.path.join(text, s))]]))
    d = Dictionary.load(os.path.join(dest, f"dict.{tgt}.txt"))
    split, longest = {}, 0
    for s in ("train", "valid", "test"):
        ds = {lang: data_utils.load_indexed_dataset(os.path.join(dest, f"{s}.{src}-{tgt}.{lang}"), d)
              for lang in (src, tgt)}
        split[s] = (len(ds[tgt]), int(ds[tgt].sizes.sum()))
        longest = max(longest, int((ds[src].sizes + ds[tgt].sizes).max()))
    # [CLS] source target must fit the BERT's positions
    positions = max(int(o["max_positions"]), 64 * -(-(1 + longest) // 64))
    bert_io.write_checkpoint(o["bert"], d.symbols[d.nspecial:], hidden_size=int(o["hidden"]),
                             num_hidden_layers=int(o["layers"]), num_attention_heads=int(o["heads"]),
                             intermediate_size=int(o["ffn"]), max_position_embeddings=positions)
    write_json({"source": o["kind"], "dictionary_size": len(d), "train_sentences": split["train"][0],
                "train_target_tokens": split["train"][1], "test_sentences": split["test"][0],
                "bert": f"{o['layers']} x {o['hidden']}, {o['heads']} heads, FFN {o['ffn']}, {positions} positions "
                        "(random weights)"},
               o["part"])

def trainlog(o):
    """The train_inner records of a fairseq-train --log-format json log: loss per interval."""
    records = []
    for line in open(o["log"], errors="replace"):
        i = line.find("{")
        if "train_inner" in line and i >= 0:
            try:
                records.append(json.loads(line[i:]))
            except ValueError:
                pass
    losses = [float(r["loss"]) for r in records if "loss" in r]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    write_json({"updates": int(records[-1]["num_updates"]) if records else 0, "losses": losses,
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "loss_finite": finite, "loss_falls": finite and len(losses) >= 2 and losses[-1] < losses[0],
                "loss_drop": losses[0] - losses[-1] if finite else None,
                "accuracy_last": float(records[-1]["accuracy"]) if records and "accuracy" in records[-1] else None,
                "loss_scale_last": float(records[-1]["loss_scale"]) if records and "loss_scale" in records[-1] else None},
               o["part"])

def clean(x):
    """JSON without NaN / Infinity: a non-finite float becomes the string "nan" / "inf" / "-inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x

def collect(o):
    work = o["work"]
    def part(name):
        try:
            with open(os.path.join(work, "parts", name + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    stages = {}
    for name in sorted(os.listdir(os.path.join(work, "stages"))):
        rc, seconds = open(os.path.join(work, "stages", name)).read().split()
        stages[name] = {"ok": rc == "0", "exit_status": int(rc), "seconds": int(seconds)}
    failed = [n for n, s in stages.items() if not s["ok"]]
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    fp16 = o["fp16"] == "1"
    cmlm = part("cmlm_train") or {}
    cmlm.update(fp16=fp16, max_tokens=int(o["max_tokens"]))
    dumps = {k: part("dump_" + k) for k in ("cmlm", "at")}
    for d in dumps.values():
        if d:
            d.pop("store", None)  # in the work directory, gone at the end
    wps = part("student_wps") or {}
    latency = {}
    for name, settings in (("at_beam5", "beam 5, max length 1.2 x source + 10"),
                           ("cmlm_iter10", "10 iterations (--iter-decode-max-iter 9, forced), 3 length candidates"),
                           ("levt_iter10", "10 iterations (--iter-decode-max-iter 9, forced), 1 candidate")):
        try:
            with open(os.path.join(work, "eval", name, "scores.json")) as f:
                s = json.load(f)
        except (OSError, ValueError):
            latency[name] = None
            continue
        t = s["throughput"]
        latency[name] = {"mean_ms": s["latency"]["mean_ms"], "median_ms": s["latency"]["median_ms"],
                         "sentences": s["latency"]["sentences"], "fp16": s.get("fp16"), "settings": settings,
                         "output_tokens_per_sentence": t["target_tokens_per_second"] / max(t["sentences_per_second"], 1e-9),
                         "throughput_sentences_per_s": t["sentences_per_second"], "bleu": s.get("bleu")}
    ms = {k: (v or {}).get("mean_ms") for k, v in latency.items()}
    at = ms.get("at_beam5")
    result = {
        "what": "benchmarks/gpu_check.sh", "git_revision": rev, "dry_run": o["dry"] == "1", "device": o["device"],
        "fp16": fp16, "seconds": int(o["seconds"]), "ok": not failed, "failed_stages": failed,
        "data": part("data"),
        "cmlm_fp16_training": cmlm,
        "dump_target_tokens_per_s": {k: (v or {}).get("tokens_per_s") for k, v in dumps.items()},
        "dump": dumps,
        "student_wps": {
            "label_smoothed_cross_entropy": wps.get("label_smoothed_cross_entropy_wps"),
            "word_kd_online": wps.get("word_kd_online_wps"), "word_kd_store": wps.get("word_kd_store_wps"),
            "ratio_online": wps.get("ratio_online"), "ratio_store": wps.get("ratio_store"),
            "teacher_forward_ms": wps.get("teacher_forward_ms"),
            "overhead_over_teacher_forward": wps.get("overhead_over_teacher_forward"),
            "words_per_batch": wps.get("words_per_batch"), "updates": wps.get("updates"),
            "repeats": wps.get("repeats"), "max_tokens": wps.get("max_tokens")},
        "latency_batch1_ms": ms,
        "latency_speedup_vs_at_beam5": {k: (at / v if at and v else None) for k, v in ms.items() if k != "at_beam5"},
        "latency": latency,
        "stages": stages,
    }
    write_json(clean(result), o["out"])

    def f(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "n/a"
    sp = result["latency_speedup_vs_at_beam5"]
    tps = result["dump_target_tokens_per_s"]
    print(f"gpu_check: {'done' if not failed else 'FAILED stages: ' + ', '.join(failed) + ';'} in {o['seconds']} s on "
          f"{o['device']}{' (dry run)' if o['dry'] == '1' else ''}: C-MLM {'fp16 ' if fp16 else ''}loss "
          f"{f(cmlm.get('loss_first'), '.3f')} -> {f(cmlm.get('loss_last'), '.3f')} "
          f"({'finite' if cmlm.get('loss_finite') else 'NOT finite'}, {'falls' if cmlm.get('loss_falls') else 'does not fall'}); "
          f"dump {f(tps['cmlm'], ',.0f')} (C-MLM) / {f(tps['at'], ',.0f')} (AT) target tokens/s; student words/s vs "
          f"label smoothing: online word_kd {f(wps.get('ratio_online'), '.3f')}x, store {f(wps.get('ratio_store'), '.3f')}x; "
          f"batch-1 latency AT beam 5 {f(at, '.1f')} ms, CMLM {f(ms.get('cmlm_iter10'), '.1f')} ms "
          f"({f(sp.get('cmlm_iter10'), '.2f')}x), LevT {f(ms.get('levt_iter10'), '.1f')} ms "
          f"({f(sp.get('levt_iter10'), '.2f')}x) -> {o['out']}")

{"data": data, "trainlog": trainlog, "collect": collect}[sys.argv[1]](opts(sys.argv[2:]))
PYTHON
helper() { "$PYTHON" -c "$HELPER" "$@"; }

# ------------------------------------------------------------- stages
# run_stage NAME FUNCTION ARGS...: FUNCTION in a subshell with errexit, its output in
# logs/NAME.log; "EXIT_STATUS SECONDS" in stages/NAME. A failure is reported, never fatal here.
run_stage() {
  local name=$1 t0=$SECONDS rc
  shift
  set +e
  ( set -e; "$@" ) > "$WORK/logs/$name.log" 2>&1
  rc=$?
  set -e
  echo "$rc $((SECONDS - t0))" > "$WORK/stages/$name"
  if [ "$rc" != 0 ]; then
    say "FAILED: $name (exit status $rc); the end of $WORK/logs/$name.log:"
    tail -n 20 "$WORK/logs/$name.log" | sed 's/^/    | /'
  fi
  return 0
}
# stage K NAME DESCRIPTION FUNCTION ARGS...: the progress line "K/12 DESCRIPTION", then the stage.
stage() { local k=$1 name=$2 what=$3; shift 3; say "$k/12 $what"; run_stage "$name" "$@"; }

need() { [ -e "$1" ] || { echo "needs $1, which an earlier stage did not make (see its log)"; exit 1; }; }

make_data() {
  if [ "$DATA_KIND" = multi30k ]; then
    WORK=$WORK/multi30k JOBS=$WORKERS bash examples/multi30k/prepare.sh "$DATA"
  fi
  helper data kind="$DATA_KIND" text="$WORK/text" bin="$DATA" bert="$WORK/bert" src=$SRC tgt=$TGT \
    workers="$WORKERS" $SYNTH $BERT part="$WORK/parts/data.json"
}

# train NAME ARGS...: fairseq-train on DATA into WORK/NAME; checkpoint_last.pt at the end.
train() {
  local name=$1
  shift
  fairseq-train "$DATA" --user-dir fairseq_kd --save-dir "$WORK/$name" --seed 1 \
    --optimizer adam --adam-betas "(0.9,0.98)" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" \
    --max-tokens "$MAX_TOKENS" --num-workers "$DATA_WORKERS" --log-format json --log-interval "$LOG_INTERVAL" \
    --no-progress-bar --disable-validation --no-epoch-checkpoints --save-interval 1000000 \
    "${DEV[@]}" "${HALF[@]}" "$@"
  need "$WORK/$name/checkpoint_last.pt"
}

train_cmlm_teacher() {
  need "$WORK/bert/config.json"
  train cmlm_teacher --task conditional_mlm --arch bert_teacher_base --bert-path "$WORK/bert" \
    --criterion label_smoothed_cross_entropy --label-smoothing 0 --report-accuracy \
    --lr 0.0005 --clip-norm 1.0 --max-update "$CMLM_UPDATES"
  helper trainlog log="$WORK/logs/cmlm_teacher.log" part="$WORK/parts/cmlm_train.json"
}
AT=(--arch transformer --share-all-embeddings --dropout 0.1 --criterion label_smoothed_cross_entropy
  --label-smoothing 0.1 --lr 0.001 --max-update "$UPDATES")
NAT=(--task translation_lev --criterion nat_loss --label-smoothing 0.1 "${STUDENT_SIZE[@]}" --dropout 0.1
  --lr 0.001 --max-update "$UPDATES")
train_at_teacher() { train at_teacher "${AT[@]}" "${TEACHER_SIZE[@]}"; }
train_at_student() { train at_student "${AT[@]}" "${STUDENT_SIZE[@]}"; }
train_cmlm_student() { train cmlm_student "${NAT[@]}" --arch cmlm_kd_iwslt_de_en --noise random_mask; }
train_levt_student() { train levt_student "${NAT[@]}" --arch levt_kd_iwslt_de_en --noise random_delete; }

# dump KIND CHECKPOINT: top-8 of the training split, timed (benchmarks/dump_soft_labels.py --dump-only).
dump() {
  need "$2"
  "$PYTHON" benchmarks/dump_soft_labels.py "$DATA" "$2" --dump-only --speed-subset train --speed-sentences 0 \
    --out "$WORK/dump_$1" --max-tokens "$DUMP_MAX_TOKENS" "${DEV[@]}" "${HALF[@]}" --json "$WORK/parts/dump_$1.json"
}

student_wps() {
  need "$WORK/at_teacher/checkpoint_last.pt"
  need "$WORK/dump_at/store/header.json"
  "$PYTHON" benchmarks/word_kd_overhead.py "$DATA" --teacher "$WORK/at_teacher/checkpoint_last.pt" \
    --soft-labels "$WORK/dump_at/store" "${WPS[@]}" "${DEV[@]}" "${HALF[@]}" --json "$WORK/parts/student_wps.json"
}

# latency NAME MODEL ARGS...: fairseq-kd-evaluate on the test split, batch-1 latency first. A
# decoder that fails in fp16 is measured again in float32 (scores.json says which).
latency() {
  local name=$1 model=$WORK/$2/checkpoint_last.pt
  shift 2
  need "$model"
  local cmd=(fairseq-kd-evaluate "$DATA" --path "$model" --gen-subset test --latency-sentences "$LATENCY_SENTENCES"
    --max-tokens 8000 --results-path "$WORK/eval/$name" "${DECODE[@]}" "${DEV[@]}" "$@")
  if [ ${#HALF[@]} -gt 0 ]; then
    "${cmd[@]}" "${HALF[@]}" || { echo "gpu_check: $name failed in fp16; again in float32"; "${cmd[@]}"; }
  else
    "${cmd[@]}"
  fi
}
NAT_DECODE=(--iter-decode-max-iter 9 --iter-decode-force-max-iter)

s_data() { stage 1 data "building the $DATA_KIND data and a random BERT" make_data; }
s_cmlm_teacher() { stage 2 cmlm_teacher "training the C-MLM teacher${HALF[*]:+ (${HALF[*]})}" train_cmlm_teacher; }
s_at_teacher() { stage 3 at_teacher "training the AT teacher" train_at_teacher; }
s_at_student() { stage 4 at_student "training the AT student" train_at_student; }
s_cmlm_student() { stage 5 cmlm_student "training the CMLM student" train_cmlm_student; }
s_levt_student() { stage 6 levt_student "training the LevT student" train_levt_student; }
s_dump_cmlm() { stage 7 dump_cmlm "dump tokens/s: the C-MLM teacher" dump cmlm "$WORK/cmlm_teacher/checkpoint_last.pt"; }
s_dump_at() { stage 8 dump_at "dump tokens/s: the AT teacher (and its store)" dump at "$WORK/at_teacher/checkpoint_last.pt"; }
s_student_wps() { stage 9 student_wps "student words/s: label smoothing, online word_kd, word_kd from the store" student_wps; }
s_latency_at() { stage 10 latency_at "latency at batch 1: the AT student, beam 5" \
  latency at_beam5 at_student --beam 5 --max-len-a 1.2 --max-len-b 10; }
s_latency_cmlm() { stage 11 latency_cmlm "latency at batch 1: the CMLM student, 10 iterations" \
  latency cmlm_iter10 cmlm_student "${NAT_DECODE[@]}" --iter-decode-with-beam 3; }
s_latency_levt() { stage 12 latency_levt "latency at batch 1: the LevT student, 10 iterations" \
  latency levt_iter10 levt_student "${NAT_DECODE[@]}" --iter-decode-with-beam 1; }

say "start: $([ "$DRY" = 1 ] && echo "dry run on the CPU" || echo "$DEVICE, fp16"), $DATA_KIND data, work directory $WORK"
s_data
if [ "$DRY" = 1 ]; then
  # No number counts: each model's chain of stages starts as soon as the data is there.
  { s_at_teacher; s_dump_at; s_student_wps; } &
  { s_cmlm_teacher; s_dump_cmlm; } &
  { s_at_student; s_latency_at; } &
  { s_cmlm_student; s_latency_cmlm; } &
  { s_levt_student; s_latency_levt; } &
  wait
else
  # The trainings share the GPU (nothing is timed there); every timed stage runs alone.
  s_cmlm_teacher & s_at_teacher & s_at_student & s_cmlm_student & s_levt_student &
  wait
  s_dump_cmlm; s_dump_at; s_student_wps; s_latency_at; s_latency_cmlm; s_latency_levt
fi

helper collect work="$WORK" out="$OUT" dry=$DRY device="$DEVICE" fp16=$([ "$DRY" = 0 ] && echo 1 || echo 0) \
  seconds=$((SECONDS - START)) max_tokens="$MAX_TOKENS"
if grep -qv '^0 ' "$WORK"/stages/*; then
  say "logs kept in $WORK/logs"
  exit 1
fi
[ "$KEEP" = 1 ] || rm -rf "$WORK"
