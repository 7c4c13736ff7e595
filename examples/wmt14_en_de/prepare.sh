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

if [ -f "$OUT/dict.$TGT.txt" ] && [ -f "$OUT/test.$SRC-$TGT.$TGT.bin" ]; then
  echo "prepare: $OUT already binarized; remove it to rebuild"
  exit 0
fi
mkdir -p "$WORK/tmp" "$WORK/raw" "$WORK/bpe"
tmp=$WORK/tmp

if [ -z "${ORIG:-}" ]; then
  ORIG=$WORK/orig
  mkdir -p "$ORIG"
  for url in "${URLS[@]}"; do
    file=$ORIG/$(basename "$url")
    if [ ! -f "$file" ]; then
      echo "prepare: downloading $url"
      curl -fL "$url" -o "$file.part" && mv "$file.part" "$file"
    fi
    tar -xzf "$file" -C "$ORIG"
  done
fi
for f in "${CORPORA[@]}"; do
  for l in $SRC $TGT; do
    [ -f "$ORIG/$f.$l" ] || { echo "prepare: $ORIG/$f.$l not found" >&2; exit 1; }
  done
done

# normalize-punctuation.perl | remove-non-printing-char.perl | tokenizer.perl -a
preprocess_text() { sacremoses -q -l "$1" -j "$JOBS" normalize -c tokenize -a -x; }

echo "prepare: train"
for l in $SRC $TGT; do
  for f in "${CORPORA[@]}"; do cat "$ORIG/$f.$l"; done | preprocess_text "$l" > "$tmp/train.tags.tok.$l"
done
n_src=$(wc -l < "$tmp/train.tags.tok.$SRC"); n_tgt=$(wc -l < "$tmp/train.tags.tok.$TGT")
[ "$n_src" = "$n_tgt" ] || { echo "prepare: train has $n_src $SRC and $n_tgt $TGT lines" >&2; exit 1; }

echo "prepare: test (newstest2014)"
for l in $SRC $TGT; do
  if [ "$l" = "$SRC" ]; then t=src; else t=ref; fi
  grep '<seg id' "$ORIG/test-full/newstest2014-deen-$t.$l.sgm" \
    | sed -e 's/<seg id="[0-9]*">\s*//g; s/\s*<\/seg>\s*//g' -e "s/\’/\'/g" > "$WORK/raw/test.$l"
  sacremoses -q -l "$l" -j "$JOBS" tokenize -a -x < "$WORK/raw/test.$l" > "$tmp/test.$l"
done

for l in $SRC $TGT; do
  awk '{ if (NR % 100 == 0) print $0 }' "$tmp/train.tags.tok.$l" > "$tmp/valid.$l"
  awk '{ if (NR % 100 != 0) print $0 }' "$tmp/train.tags.tok.$l" > "$tmp/train.$l"
done

echo "prepare: learning $BPE_OPS joint BPE merges"
cat "$tmp/train.$SRC" "$tmp/train.$TGT" | subword-nmt learn-bpe -s "$BPE_OPS" > "$WORK/code"
for split in train valid test; do
  for l in $SRC $TGT; do
    subword-nmt apply-bpe -c "$WORK/code" < "$tmp/$split.$l" > "$tmp/bpe.$split.$l"
  done
done
# Moses clean-corpus-n.perl -ratio 1.5 ... 1 250 on train and valid (not test)
for split in train valid; do
  paste -d '\t' "$tmp/bpe.$split.$SRC" "$tmp/bpe.$split.$TGT" \
    | awk -F '\t' '{ s = split($1, a, " "); t = split($2, b, " ");
        if (s >= 1 && t >= 1 && s <= 250 && t <= 250 && s <= 1.5 * t && t <= 1.5 * s) print }' > "$tmp/$split.clean"
  cut -f 1 "$tmp/$split.clean" > "$WORK/bpe/$split.$SRC"
  cut -f 2 "$tmp/$split.clean" > "$WORK/bpe/$split.$TGT"
done
cp "$tmp/bpe.test.$SRC" "$WORK/bpe/test.$SRC"
cp "$tmp/bpe.test.$TGT" "$WORK/bpe/test.$TGT"
for split in train valid test; do
  echo "prepare: $split $(wc -l < "$WORK/bpe/$split.$SRC") sentence pairs"
done

binarize() {  # text prefix dir, out dir
  fairseq-preprocess --source-lang $SRC --target-lang $TGT --joined-dictionary \
    --trainpref "$1/train" --validpref "$1/valid" --testpref "$1/test" \
    --destdir "$2.tmp" --workers "$JOBS" > "$WORK/preprocess.log" 2>&1 \
    || { tail -20 "$WORK/preprocess.log" >&2; exit 1; }
  rm -rf "$2" && mv "$2.tmp" "$2"
}
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"

if [ -n "${WORDPIECE_VOCAB:-}" ]; then
  mkdir -p "$WORK/wordpiece"
  for split in train valid test; do
    for l in $SRC $TGT; do
      python -c 'import html, sys
for line in sys.stdin: sys.stdout.write(html.unescape(line))' < "$tmp/$split.$l" > "$tmp/wp.$split.$l.txt"
      fairseq-kd-bert-tokenize --vocab "$WORDPIECE_VOCAB" "$tmp/wp.$split.$l.txt" -o "$tmp/wp.$split.$l"
    done
  done
  for split in train valid; do
    paste -d '\t' "$tmp/wp.$split.$SRC" "$tmp/wp.$split.$TGT" \
      | awk -F '\t' '{ s = split($1, a, " "); t = split($2, b, " ");
          if (s >= 1 && t >= 1 && s <= 250 && t <= 250 && s <= 1.5 * t && t <= 1.5 * s) print }' > "$tmp/wp.$split.clean"
    cut -f 1 "$tmp/wp.$split.clean" > "$WORK/wordpiece/$split.$SRC"
    cut -f 2 "$tmp/wp.$split.clean" > "$WORK/wordpiece/$split.$TGT"
  done
  cp "$tmp/wp.test.$SRC" "$WORK/wordpiece/test.$SRC"
  cp "$tmp/wp.test.$TGT" "$WORK/wordpiece/test.$TGT"
  binarize "$WORK/wordpiece" "${OUT}_wordpiece"
  echo "prepare: done: ${OUT}_wordpiece (WordPiece of $WORDPIECE_VOCAB)"
fi
