#!/usr/bin/env bash
# Prepare Gigaword headline generation (Rush et al. 2015 preprocessing: lowercased,
# digits as #, -lrb-/-rrb-) for fairseq: joint BPE (subword-nmt), binarization with
# one joined dictionary (article and headline share a language; the NAT presets
# share all embeddings).
#
# usage: bash examples/gigaword/prepare.sh [OUT_DIR]        (default data-bin/gigaword)
#   FAIRSEQ_KD_DATA=DIR  use DIR/gigaword-sample/{article,title}.txt (1,000 pairs,
#                        split 800/100/100 into train/valid/test: a smoke test only)
#   GIGAWORD_ZIP=FILE    a downloaded ggw_data.zip (else it is downloaded)
#   BPE_OPS=N            joint BPE merges (default 30000; 1000 for the sample)
#   WORDPIECE_VOCAB=DIR  also write OUT_DIR_wordpiece: the same text in a BERT
#                        vocabulary's WordPiece pieces (fairseq-kd-bert-tokenize),
#                        for the BERT (C-MLM) teacher and its students
#   WORK=DIR             where text and BPE codes go (default work_dirs/gigaword)
#
# Full data: ggw_data.zip, the Rush et al. (2015) split as distributed for the
# Hugging Face "gigaword" data set (org_data/{train,dev,test}.{src,tgt}.txt:
# 3.8M training pairs, 189k dev, the 1,951-pair test set). Writes
# OUT_DIR/{train,valid,test}.src-tgt.{src,tgt}.{bin,idx}, dict.{src,tgt}.txt
# (src = article, tgt = headline) and WORK/{code,raw/,bpe/}.
set -euo pipefail

OUT=${1:-data-bin/gigaword}
WORK=${WORK:-work_dirs/gigaword}
URL="https://drive.usercontent.google.com/download?id=1USoQ8lJgN8kAWnUnRrupMGrPMLlDVqlV&export=download&confirm=t"
SRC=src
TGT=tgt

if [ -f "$OUT/dict.$TGT.txt" ] && [ -f "$OUT/test.$SRC-$TGT.$TGT.bin" ]; then
  echo "prepare: $OUT already binarized; remove it to rebuild"
  exit 0
fi
mkdir -p "$WORK/raw" "$WORK/bpe"

if [ -n "${FAIRSEQ_KD_DATA:-}" ]; then
  BPE_OPS=${BPE_OPS:-1000}
  dir="$FAIRSEQ_KD_DATA/gigaword-sample"
  for f in article.txt title.txt; do
    [ -f "$dir/$f" ] || { echo "prepare: $dir/$f not found (FAIRSEQ_KD_DATA=$FAIRSEQ_KD_DATA)" >&2; exit 1; }
  done
  n=$(wc -l < "$dir/article.txt")
  [ "$n" = "$(wc -l < "$dir/title.txt")" ] || { echo "prepare: $dir: article/title line counts differ" >&2; exit 1; }
  n_test=$((n / 10)); n_train=$((n - 2 * n_test))
  for pair in "article.txt $SRC" "title.txt $TGT"; do
    set -- $pair
    head -n "$n_train" "$dir/$1" > "$WORK/raw/train.$2"
    tail -n +"$((n_train + 1))" "$dir/$1" | head -n "$n_test" > "$WORK/raw/valid.$2"
    tail -n "$n_test" "$dir/$1" > "$WORK/raw/test.$2"
  done
else
  BPE_OPS=${BPE_OPS:-30000}
  zip=${GIGAWORD_ZIP:-$WORK/ggw_data.zip}
  if [ ! -f "$zip" ]; then
    echo "prepare: downloading ggw_data.zip (about 300 MB)"
    curl -fL "$URL" -o "$zip.part" || { echo "prepare: download failed; fetch ggw_data.zip by hand and set GIGAWORD_ZIP" >&2; exit 1; }
    mv "$zip.part" "$zip"
  fi
  unzip -oq "$zip" -d "$WORK/orig"
  org=$(dirname "$(find "$WORK/orig" -name test.src.txt | head -n 1)")
  [ -f "$org/train.src.txt" ] || { echo "prepare: no org_data/train.src.txt in $zip" >&2; exit 1; }
  declare -A STEM=([train]=train [valid]=dev [test]=test)
  for split in train valid test; do
    cp "$org/${STEM[$split]}.src.txt" "$WORK/raw/$split.$SRC"
    cp "$org/${STEM[$split]}.tgt.txt" "$WORK/raw/$split.$TGT"
  done
fi
for split in train valid test; do
  n_src=$(wc -l < "$WORK/raw/$split.$SRC"); n_tgt=$(wc -l < "$WORK/raw/$split.$TGT")
  [ "$n_src" = "$n_tgt" ] || { echo "prepare: $split has $n_src articles and $n_tgt headlines" >&2; exit 1; }
  echo "prepare: $split $n_src pairs"
done

# The text is already tokenized and lowercased: only BPE is learned here.
echo "prepare: learning $BPE_OPS joint BPE merges"
cat "$WORK/raw/train.$SRC" "$WORK/raw/train.$TGT" | subword-nmt learn-bpe -s "$BPE_OPS" > "$WORK/code"
for split in train valid test; do
  for l in $SRC $TGT; do
    subword-nmt apply-bpe -c "$WORK/code" < "$WORK/raw/$split.$l" > "$WORK/bpe/$split.$l"
  done
done

binarize() {  # text prefix dir, out dir
  fairseq-preprocess --source-lang $SRC --target-lang $TGT --joined-dictionary \
    --trainpref "$1/train" --validpref "$1/valid" --testpref "$1/test" \
    --destdir "$2.tmp" --workers "${WORKERS:-4}" > "$WORK/preprocess.log" 2>&1 \
    || { tail -20 "$WORK/preprocess.log" >&2; exit 1; }
  rm -rf "$2" && mv "$2.tmp" "$2"
}
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"

if [ -n "${WORDPIECE_VOCAB:-}" ]; then
  mkdir -p "$WORK/wordpiece"
  for split in train valid test; do
    for l in $SRC $TGT; do
      fairseq-kd-bert-tokenize --vocab "$WORDPIECE_VOCAB" "$WORK/raw/$split.$l" -o "$WORK/wordpiece/$split.$l"
    done
  done
  binarize "$WORK/wordpiece" "${OUT}_wordpiece"
  echo "prepare: done: ${OUT}_wordpiece (WordPiece of $WORDPIECE_VOCAB)"
fi
