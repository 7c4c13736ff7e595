#!/usr/bin/env bash
# Word-level KD on Multi30k De-En, end to end on CPU with the shipped defaults:
# train a teacher, a baseline student and a word-KD student (same size and
# budget as the baseline), decode test2016, print sacreBLEU side by side.
#
# usage: bash scripts/quickstart_word_kd.sh           (expects the venv active;
#        scripts/quickstart.sh sets it up and calls this)
#   FAIRSEQ_KD_DATA=DIR     local copy of the data (else Multi30k is downloaded)
#   TEACHER_UPDATES=300 STUDENT_UPDATES=300   budgets (updates of <= 4096 tokens)
#   KD_ALPHA=0.5 KD_TEMPERATURE=1 KD_TOPK=0   the word_kd options
#   WORK=work_dirs/quickstart_word_kd         where checkpoints and outputs go
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER_UPDATES=${TEACHER_UPDATES:-300}
STUDENT_UPDATES=${STUDENT_UPDATES:-300}
KD_ALPHA=${KD_ALPHA:-0.5}
KD_TEMPERATURE=${KD_TEMPERATURE:-1}
KD_TOPK=${KD_TOPK:-0}
WORK=${WORK:-work_dirs/quickstart_word_kd}
DATA=data-bin/multi30k_de_en
mkdir -p "$WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

bash examples/multi30k/prepare.sh "$DATA"

COMMON=(--user-dir fairseq_kd --share-all-embeddings --dropout 0.1
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 200
  --max-tokens 4096 --no-epoch-checkpoints --save-interval-updates 0 --required-batch-size-multiple 1 --disable-validation
  --log-format simple --log-interval 50 --seed 1 --cpu)
TEACHER=(--arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256
  --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
  --encoder-attention-heads 4 --decoder-attention-heads 4)
STUDENT=(--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128
  --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4)

train() {  # name, max updates, args...
  local name=$1 updates=$2; shift 2
  echo "quickstart: training $name ($updates updates)"
  fairseq-train "$DATA" "${COMMON[@]}" --save-dir "$WORK/$name" --max-update "$updates" "$@" > "$WORK/$name.log" 2>&1 \
    || { tail -30 "$WORK/$name.log"; exit 1; }
  mv "$WORK/$name/checkpoint_last.pt" "$WORK/$name/final.pt"
}

bleu() {  # name -> prints detokenized sacreBLEU of test2016
  fairseq-generate "$DATA" --user-dir fairseq_kd --path "$WORK/$1/final.pt" --gen-subset test \
    --beam 5 --max-len-a 1.2 --max-len-b 10 --max-tokens 8000 --required-batch-size-multiple 1 --cpu \
    --tokenizer moses --source-lang de --target-lang en \
    --bpe subword_nmt --bpe-codes work_dirs/multi30k/code > "$WORK/$1.test.out" 2>/dev/null
  python scripts/sacrebleu_generate.py "$WORK/$1.test.out" work_dirs/multi30k/raw/test.en --score-only
}

train teacher "$TEACHER_UPDATES" "${TEACHER[@]}" --criterion label_smoothed_cross_entropy --label-smoothing 0.1
train baseline "$STUDENT_UPDATES" "${STUDENT[@]}" --criterion label_smoothed_cross_entropy --label-smoothing 0.1
train word_kd "$STUDENT_UPDATES" "${STUDENT[@]}" --task translation_kd --teacher-path "$WORK/teacher/final.pt" \
  --criterion word_kd --label-smoothing 0.1 --kd-alpha "$KD_ALPHA" --kd-temperature "$KD_TEMPERATURE" --kd-topk "$KD_TOPK"

T=$(bleu teacher); B=$(bleu baseline); S=$(bleu word_kd)
printf '\nMulti30k De-En test2016 sacreBLEU (teacher %s updates, students %s updates)\n' "$TEACHER_UPDATES" "$STUDENT_UPDATES"
printf '  %-34s %6s\n' "teacher   (3x256 Transformer)" "$T" "baseline  (2x128, label smoothing)" "$B" \
  "word-KD   (2x128, alpha=$KD_ALPHA T=$KD_TEMPERATURE)" "$S"
