#!/usr/bin/env bash
# Prepare WMT'14 English-German as fairseq's examples/translation/prepare-wmt14en2de.sh
# does (Europarl v7 + Common Crawl + News Commentary v12; punctuation normalization,
# Moses tokenization with aggressive dash splits; valid = every 100th training pair;
# test = newstest2014, the 3,003-sentence "full" set; 40,000 joint BPE merges with
# subword-nmt; length/ratio cleaning of train and valid), with sacremoses in place of
# the Moses perl scripts, then binarized with one joined dictionary (the NAT presets
# share all embeddings).
#
# usage: bash examples/wmt14_en_de/prepare.sh [OUT_DIR]     (default data-bin/wmt14_en_de)
#   ORIG=DIR             the five archives already extracted in DIR (training/,
#                        commoncrawl.de-en.*, dev/, test-full/); else downloaded
#   BPE_OPS=N            joint BPE merges (default 40000)
#   WORK=DIR             where text and BPE codes go (default work_dirs/wmt14_en_de)
#   JOBS=N               tokenizer and binarizer processes (default 8)
#   WORDPIECE_VOCAB=DIR  also write OUT_DIR_wordpiece: the tokenized text (XML escapes
#                        undone) in a BERT vocabulary's WordPiece pieces, cleaned as
#                        the BPE text is, for the BERT (C-MLM) teacher and its students
#
# Writes OUT_DIR/{train,valid,test}.en-de.{en,de}.{bin,idx}, dict.{en,de}.txt and
# WORK/{code, raw/test.de (detokenized newstest2014 reference), bpe/}. The papers
# report tokenized BLEU (compound-split in some); this README scores both that and
# sacreBLEU on detokenized output against WORK/raw/test.de.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

OUT=${1:-data-bin/wmt14_en_de}
WORK=${WORK:-work_dirs/wmt14_en_de}
BPE_OPS=${BPE_OPS:-40000}
JOBS=${JOBS:-8}
SRC=en
TGT=de
URLS=(
  http://statmt.org/wmt13/training-parallel-europarl-v7.tgz
  http://statmt.org/wmt13/training-parallel-commoncrawl.tgz
  http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz
  http://data.statmt.org/wmt17/translation-task/dev.tgz
  http://statmt.org/wmt14/test-full.tgz
)
CORPORA=(training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v12.de-en)
MAX_LEN=250  # clean-corpus-n.perl's maximum length on train and valid (not test)

skip_if_binarized "$OUT"
mkdir -p "$WORK/tmp" "$WORK/raw" "$WORK/bpe"
tmp=$WORK/tmp

if [ -z "${ORIG:-}" ]; then
  ORIG=$WORK/orig
  for url in "${URLS[@]}"; do
    fetch "$url" "$ORIG/$(basename "$url")"
    tar -xzf "$ORIG/$(basename "$url")" -C "$ORIG"
  done
fi
for f in "${CORPORA[@]}"; do
  for l in $SRC $TGT; do
    need_file "$ORIG/$f.$l"
  done
done

# normalize-punctuation.perl | remove-non-printing-char.perl | tokenizer.perl -a
preprocess_text() { sacremoses -q -l "$1" -j "$JOBS" normalize -c tokenize -a -x; }

echo "prepare: train"
for l in $SRC $TGT; do
  for f in "${CORPORA[@]}"; do cat "$ORIG/$f.$l"; done | preprocess_text "$l" > "$tmp/train.tags.tok.$l"
done
same_length "$tmp/train.tags.tok" train

echo "prepare: test (newstest2014)"
for l in $SRC $TGT; do
  if [ "$l" = "$SRC" ]; then t=src; else t=ref; fi
  grep '<seg id' "$ORIG/test-full/newstest2014-deen-$t.$l.sgm" \
    | sed -e 's/<seg id="[0-9]*">\s*//g; s/\s*<\/seg>\s*//g' -e "s/\’/\'/g" > "$WORK/raw/test.$l"
  sacremoses -q -l "$l" -j "$JOBS" tokenize -a -x < "$WORK/raw/test.$l" > "$tmp/test.$l"
done
hold_out_valid 100 "$tmp/train.tags.tok" "$tmp"

# clean_subwords IN_DIR OUT_DIR: train and valid cleaned, test copied.
clean_subwords() {
  local split
  mkdir -p "$2"
  for split in train valid; do
    clean_corpus "$1/$split" "$2/$split" "$MAX_LEN"
  done
  cp "$1/test.$SRC" "$1/test.$TGT" "$2/"
}

learn_joint_bpe "$tmp"
apply_bpe "$tmp" "$tmp/bpe"
clean_subwords "$tmp/bpe" "$WORK/bpe"
check_pairs "$WORK/bpe"
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"

if [ -n "${WORDPIECE_VOCAB:-}" ]; then
  wordpiece "$tmp" "$tmp/wp" --unescape
  clean_subwords "$tmp/wp" "$WORK/wordpiece"
  binarize "$WORK/wordpiece" "${OUT}_wordpiece"
  echo "prepare: done: ${OUT}_wordpiece (WordPiece of $WORDPIECE_VOCAB)"
fi
