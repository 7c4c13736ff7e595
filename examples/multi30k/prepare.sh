#!/usr/bin/env bash
# Prepare Multi30k (task 1) German-English for fairseq: Moses tokenization,
# joint BPE (subword-nmt), binarization with one joined dictionary.
#
# usage: bash examples/multi30k/prepare.sh [OUT_DIR]      (default data-bin/multi30k_de_en)
#   FAIRSEQ_KD_DATA=DIR  read DIR/multi30k/*.gz instead of downloading
#   BPE_OPS=8000         joint BPE merges
#   WORK=DIR             where text and BPE codes go (default work_dirs/multi30k)
#
# Writes OUT_DIR/{train,valid,test}.de-en.{de,en}.{bin,idx}, dict.{de,en}.txt,
# and WORK/{code, raw/, tok/, bpe/}. Evaluation detokenizes with
#   fairseq-generate ... --tokenizer moses --bpe subword_nmt --bpe-codes WORK/code
# and scores the D- lines against WORK/raw/test.en with sacreBLEU.
set -euo pipefail

OUT=${1:-data-bin/multi30k_de_en}
WORK=${WORK:-work_dirs/multi30k}
BPE_OPS=${BPE_OPS:-8000}
URL=https://github.com/multi30k/dataset/raw/a3d2e0d/data/task1/raw
SRC=de
TGT=en

if [ -f "$OUT/dict.$TGT.txt" ] && [ -f "$OUT/test.$SRC-$TGT.$TGT.bin" ]; then
  echo "prepare: $OUT already binarized; remove it to rebuild"
  exit 0
fi
mkdir -p "$WORK/raw" "$WORK/tok" "$WORK/bpe"

# split name here -> file stem of the Multi30k release
declare -A STEM=([train]=train [valid]=val [test]=test_2016_flickr)
for split in train valid test; do
  for l in $SRC $TGT; do
    gz=${STEM[$split]}.$l.gz
    if [ -n "${FAIRSEQ_KD_DATA:-}" ]; then
      src_file="$FAIRSEQ_KD_DATA/multi30k/$gz"
      [ -f "$src_file" ] || { echo "prepare: $src_file not found (FAIRSEQ_KD_DATA=$FAIRSEQ_KD_DATA)" >&2; exit 1; }
      gunzip -c "$src_file" > "$WORK/raw/$split.$l"
    else
      curl -fsSL "$URL/$gz" | gunzip -c > "$WORK/raw/$split.$l"
    fi
    sacremoses -q -l $l -j 2 tokenize -x < "$WORK/raw/$split.$l" > "$WORK/tok/$split.$l"
  done
  n_src=$(wc -l < "$WORK/raw/$split.$SRC"); n_tgt=$(wc -l < "$WORK/raw/$split.$TGT")
  [ "$n_src" = "$n_tgt" ] || { echo "prepare: $split has $n_src $SRC and $n_tgt $TGT lines" >&2; exit 1; }
  echo "prepare: $split $n_src sentence pairs"
done

echo "prepare: learning $BPE_OPS joint BPE merges"
subword-nmt learn-joint-bpe-and-vocab -s "$BPE_OPS" --input "$WORK/tok/train.$SRC" "$WORK/tok/train.$TGT" \
  -o "$WORK/code" --write-vocabulary "$WORK/vocab.$SRC" "$WORK/vocab.$TGT"
for split in train valid test; do
  for l in $SRC $TGT; do
    subword-nmt apply-bpe -c "$WORK/code" < "$WORK/tok/$split.$l" > "$WORK/bpe/$split.$l"
  done
done

fairseq-preprocess --source-lang $SRC --target-lang $TGT --joined-dictionary \
  --trainpref "$WORK/bpe/train" --validpref "$WORK/bpe/valid" --testpref "$WORK/bpe/test" \
  --destdir "$OUT.tmp" --workers 2
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"
