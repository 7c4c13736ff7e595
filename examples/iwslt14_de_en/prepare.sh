#!/usr/bin/env bash
# Prepare IWSLT'14 German-English as fairseq's examples/translation/prepare-iwslt14.sh
# does (Moses tokenization with XML escaping, length/ratio cleaning, lowercasing,
# valid = every 23rd training pair, test = dev2010 + dev2012 + tst2010-2012,
# 10,000 joint BPE merges with subword-nmt), with sacremoses in place of the Moses
# perl scripts, then binarized with one joined dictionary (the NAT presets share
# all embeddings).
#
# usage: bash examples/iwslt14_de_en/prepare.sh [OUT_DIR]   (default data-bin/iwslt14_de_en)
#   ORIG=DIR             an extracted de-en.tgz (DIR/de-en/train.tags.de-en.de, ...);
#                        else it is downloaded from fairseq's mirror
#   BPE_OPS=N            joint BPE merges (default 10000)
#   WORDPIECE_VOCAB=DIR  also write OUT_DIR_wordpiece: the same cleaned, lowercased
#                        text (XML escapes undone) in a BERT vocabulary's WordPiece
#                        pieces, for the BERT (C-MLM) teacher and its students
#   WORK=DIR             where text and BPE codes go (default work_dirs/iwslt14_de_en)
#   JOBS=N               tokenizer processes (default 4)
#
# Writes OUT_DIR/{train,valid,test}.de-en.{de,en}.{bin,idx}, dict.{de,en}.txt and
# WORK/{code, tok/ (tokenized, lowercased), bpe/}. BLEU on this set is
# conventionally tokenized BLEU on the lowercased test set
# (fairseq-generate --remove-bpe, then fairseq-score or the BLEU line it prints).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

OUT=${1:-data-bin/iwslt14_de_en}
WORK=${WORK:-work_dirs/iwslt14_de_en}
BPE_OPS=${BPE_OPS:-10000}
JOBS=${JOBS:-4}
URL=http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz
SRC=de
TGT=en
LANG_PAIR=de-en

skip_if_binarized "$OUT"
mkdir -p "$WORK/tmp" "$WORK/tok" "$WORK/bpe"
tmp=$WORK/tmp

if [ -z "${ORIG:-}" ]; then
  ORIG=$WORK/orig
  if [ ! -f "$ORIG/$LANG_PAIR/train.tags.$LANG_PAIR.$SRC" ]; then
    fetch "$URL" "$ORIG/de-en.tgz"
    tar -xzf "$ORIG/de-en.tgz" -C "$ORIG"
  fi
fi
orig=$ORIG/$LANG_PAIR
need_file "$orig/train.tags.$LANG_PAIR.$SRC"

tokenize() { sacremoses -q -l "$1" -j "$JOBS" tokenize -x; }

echo "prepare: train"
for l in $SRC $TGT; do
  grep -v '<url>' "$orig/train.tags.$LANG_PAIR.$l" | grep -v '<talkid>' | grep -v '<keywords>' \
    | sed -e 's/<title>//g; s/<\/title>//g; s/<description>//g; s/<\/description>//g' \
    | tokenize "$l" > "$tmp/train.tags.tok.$l"
done
same_length "$tmp/train.tags.tok" train
clean_corpus "$tmp/train.tags.tok" "$tmp/train.tags.clean" 175
for l in $SRC $TGT; do
  lowercase < "$tmp/train.tags.clean.$l" > "$tmp/train.tags.$l"
done

echo "prepare: valid and test"
for l in $SRC $TGT; do
  for o in "$orig"/IWSLT14.TED*."$l".xml; do
    f=$(basename "$o" .xml)
    grep '<seg id' "$o" | sed -e 's/<seg id="[0-9]*">\s*//g; s/\s*<\/seg>\s*//g' -e "s/\’/\'/g" \
      | tokenize "$l" | lowercase > "$tmp/$f"
  done
done
hold_out_valid 23 "$tmp/train.tags" "$WORK/tok"
for l in $SRC $TGT; do
  cat "$tmp/IWSLT14.TED.dev2010.$LANG_PAIR.$l" "$tmp/IWSLT14.TEDX.dev2012.$LANG_PAIR.$l" \
    "$tmp/IWSLT14.TED.tst2010.$LANG_PAIR.$l" "$tmp/IWSLT14.TED.tst2011.$LANG_PAIR.$l" \
    "$tmp/IWSLT14.TED.tst2012.$LANG_PAIR.$l" > "$WORK/tok/test.$l"
done
check_pairs "$WORK/tok"

learn_joint_bpe "$WORK/tok"
apply_bpe "$WORK/tok" "$WORK/bpe"
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"

binarize_wordpiece "$WORK/tok" "$OUT" --unescape
