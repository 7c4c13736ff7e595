#!/usr/bin/env bash
# Prepare Multi30k (task 1) German-English for fairseq: Moses tokenization,
# joint BPE (subword-nmt), binarization with one joined dictionary.
#
# usage: bash examples/multi30k/prepare.sh [OUT_DIR]      (default data-bin/multi30k_de_en)
#   FAIRSEQ_KD_DATA=DIR  read DIR/multi30k/*.gz instead of downloading
#   BPE_OPS=8000         joint BPE merges
#   WORK=DIR             where text and BPE codes go (default work_dirs/multi30k)
#   JOBS=N               tokenizer and binarizer processes (default 2)
#
# Writes OUT_DIR/{train,valid,test}.de-en.{de,en}.{bin,idx}, dict.{de,en}.txt,
# and WORK/{code, raw/, tok/, bpe/, orig/ (downloads)}. Evaluation detokenizes with
#   fairseq-generate ... --tokenizer moses --bpe subword_nmt --bpe-codes WORK/code
# and scores the D- lines against WORK/raw/test.en with sacreBLEU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

OUT=${1:-data-bin/multi30k_de_en}
WORK=${WORK:-work_dirs/multi30k}
BPE_OPS=${BPE_OPS:-8000}
JOBS=${JOBS:-2}
URL=https://github.com/multi30k/dataset/raw/a3d2e0d/data/task1/raw
SRC=de
TGT=en

skip_if_binarized "$OUT"
mkdir -p "$WORK/raw" "$WORK/tok" "$WORK/bpe"

# split name here -> file stem of the Multi30k release
declare -A STEM=([train]=train [valid]=val [test]=test_2016_flickr)
for split in "${SPLITS[@]}"; do
  for l in $SRC $TGT; do
    name=${STEM[$split]}.$l.gz
    if [ -n "${FAIRSEQ_KD_DATA:-}" ]; then
      gz=$FAIRSEQ_KD_DATA/multi30k/$name
      need_file "$gz" "FAIRSEQ_KD_DATA=$FAIRSEQ_KD_DATA"
    else
      gz=$WORK/orig/$name
      fetch "$URL/$name" "$gz"
    fi
    gunzip -c "$gz" > "$WORK/raw/$split.$l"
    sacremoses -q -l $l -j "$JOBS" tokenize -x < "$WORK/raw/$split.$l" > "$WORK/tok/$split.$l"
  done
done
check_pairs "$WORK/raw"

learn_joint_bpe "$WORK/tok"
apply_bpe "$WORK/tok" "$WORK/bpe"
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"
