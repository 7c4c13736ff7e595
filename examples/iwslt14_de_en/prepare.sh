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

OUT=${1:-data-bin/iwslt14_de_en}
WORK=${WORK:-work_dirs/iwslt14_de_en}
BPE_OPS=${BPE_OPS:-10000}
JOBS=${JOBS:-4}
URL=http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz
SRC=de
TGT=en
LANG_PAIR=de-en

if [ -f "$OUT/dict.$TGT.txt" ] && [ -f "$OUT/test.$SRC-$TGT.$TGT.bin" ]; then
  echo "prepare: $OUT already binarized; remove it to rebuild"
  exit 0
fi
mkdir -p "$WORK/tmp" "$WORK/tok" "$WORK/bpe"
tmp=$WORK/tmp

if [ -z "${ORIG:-}" ]; then
  ORIG=$WORK/orig
  if [ ! -f "$ORIG/$LANG_PAIR/train.tags.$LANG_PAIR.$SRC" ]; then
    mkdir -p "$ORIG"
    echo "prepare: downloading $URL"
    curl -fL "$URL" -o "$ORIG/de-en.tgz.part" && mv "$ORIG/de-en.tgz.part" "$ORIG/de-en.tgz"
    tar -xzf "$ORIG/de-en.tgz" -C "$ORIG"
  fi
fi
orig=$ORIG/$LANG_PAIR
[ -f "$orig/train.tags.$LANG_PAIR.$SRC" ] || { echo "prepare: $orig/train.tags.$LANG_PAIR.$SRC not found" >&2; exit 1; }

tokenize() { sacremoses -q -l "$1" -j "$JOBS" tokenize -x; }
lowercase() { python -c 'import sys
for line in sys.stdin: sys.stdout.write(line.lower())'; }

echo "prepare: train"
for l in $SRC $TGT; do
  grep -v '<url>' "$orig/train.tags.$LANG_PAIR.$l" | grep -v '<talkid>' | grep -v '<keywords>' \
    | sed -e 's/<title>//g; s/<\/title>//g; s/<description>//g; s/<\/description>//g' \
    | tokenize "$l" > "$tmp/train.tags.tok.$l"
done
n_src=$(wc -l < "$tmp/train.tags.tok.$SRC"); n_tgt=$(wc -l < "$tmp/train.tags.tok.$TGT")
[ "$n_src" = "$n_tgt" ] || { echo "prepare: train has $n_src $SRC and $n_tgt $TGT lines" >&2; exit 1; }
# Moses clean-corpus-n.perl -ratio 1.5 ... 1 175: drop empty or over-long pairs and
# pairs whose lengths differ by more than 1.5x.
paste -d '\t' "$tmp/train.tags.tok.$SRC" "$tmp/train.tags.tok.$TGT" \
  | awk -F '\t' '{ s = split($1, a, " "); t = split($2, b, " ");
      if (s >= 1 && t >= 1 && s <= 175 && t <= 175 && s <= 1.5 * t && t <= 1.5 * s) print }' > "$tmp/train.clean"
cut -f 1 "$tmp/train.clean" | lowercase > "$tmp/train.tags.$SRC"
cut -f 2 "$tmp/train.clean" | lowercase > "$tmp/train.tags.$TGT"

echo "prepare: valid and test"
for l in $SRC $TGT; do
  for o in "$orig"/IWSLT14.TED*."$l".xml; do
    f=$(basename "$o" .xml)
    grep '<seg id' "$o" | sed -e 's/<seg id="[0-9]*">\s*//g; s/\s*<\/seg>\s*//g' -e "s/\’/\'/g" \
      | tokenize "$l" | lowercase > "$tmp/$f"
  done
done
for l in $SRC $TGT; do
  awk '{ if (NR % 23 == 0) print $0 }' "$tmp/train.tags.$l" > "$WORK/tok/valid.$l"
  awk '{ if (NR % 23 != 0) print $0 }' "$tmp/train.tags.$l" > "$WORK/tok/train.$l"
  cat "$tmp/IWSLT14.TED.dev2010.$LANG_PAIR.$l" "$tmp/IWSLT14.TEDX.dev2012.$LANG_PAIR.$l" \
    "$tmp/IWSLT14.TED.tst2010.$LANG_PAIR.$l" "$tmp/IWSLT14.TED.tst2011.$LANG_PAIR.$l" \
    "$tmp/IWSLT14.TED.tst2012.$LANG_PAIR.$l" > "$WORK/tok/test.$l"
done
for split in train valid test; do
  echo "prepare: $split $(wc -l < "$WORK/tok/$split.$SRC") sentence pairs"
done

echo "prepare: learning $BPE_OPS joint BPE merges"
cat "$WORK/tok/train.$SRC" "$WORK/tok/train.$TGT" | subword-nmt learn-bpe -s "$BPE_OPS" > "$WORK/code"
for split in train valid test; do
  for l in $SRC $TGT; do
    subword-nmt apply-bpe -c "$WORK/code" < "$WORK/tok/$split.$l" > "$WORK/bpe/$split.$l"
  done
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
for line in sys.stdin: sys.stdout.write(html.unescape(line))' < "$WORK/tok/$split.$l" > "$WORK/wordpiece/$split.$l.txt"
      fairseq-kd-bert-tokenize --vocab "$WORDPIECE_VOCAB" "$WORK/wordpiece/$split.$l.txt" -o "$WORK/wordpiece/$split.$l"
    done
  done
  binarize "$WORK/wordpiece" "${OUT}_wordpiece"
  echo "prepare: done: ${OUT}_wordpiece (WordPiece of $WORDPIECE_VOCAB)"
fi
