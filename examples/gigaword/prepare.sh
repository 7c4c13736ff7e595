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
#   JOBS=N               binarizer processes (default 4; WORKERS=N also works)
#
# Full data: ggw_data.zip, the Rush et al. (2015) split as distributed for the
# Hugging Face "gigaword" data set (org_data/{train,dev,test}.{src,tgt}.txt:
# 3.8M training pairs, 189k dev, the 1,951-pair test set). Writes
# OUT_DIR/{train,valid,test}.src-tgt.{src,tgt}.{bin,idx}, dict.{src,tgt}.txt
# (src = article, tgt = headline) and WORK/{code,raw/,bpe/}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

OUT=${1:-data-bin/gigaword}
WORK=${WORK:-work_dirs/gigaword}
JOBS=${JOBS:-${WORKERS:-4}}
URL="https://drive.usercontent.google.com/download?id=1USoQ8lJgN8kAWnUnRrupMGrPMLlDVqlV&export=download&confirm=t"
SRC=src
TGT=tgt

skip_if_binarized "$OUT"
mkdir -p "$WORK/raw" "$WORK/bpe"

if [ -n "${FAIRSEQ_KD_DATA:-}" ]; then
  BPE_OPS=${BPE_OPS:-1000}
  dir="$FAIRSEQ_KD_DATA/gigaword-sample"
  for f in article.txt title.txt; do
    need_file "$dir/$f" "FAIRSEQ_KD_DATA=$FAIRSEQ_KD_DATA"
  done
  n=$(wc -l < "$dir/article.txt")
  [ "$n" = "$(wc -l < "$dir/title.txt")" ] || die "$dir: article/title line counts differ"
  n_test=$((n / 10)); n_train=$((n - 2 * n_test))
  for pair in "article.txt $SRC" "title.txt $TGT"; do
    set -- $pair
    head -n "$n_train" "$dir/$1" > "$WORK/raw/train.$2"
    tail -n +"$((n_train + 1))" "$dir/$1" | head -n "$n_test" > "$WORK/raw/valid.$2"
    tail -n "$n_test" "$dir/$1" > "$WORK/raw/test.$2"
  done
else
  BPE_OPS=${BPE_OPS:-30000}
  zip=${GIGAWORD_ZIP:-$WORK/ggw_data.zip}  # about 300 MB
  fetch "$URL" "$zip" "fetch ggw_data.zip by hand and set GIGAWORD_ZIP"
  unzip -oq "$zip" -d "$WORK/orig"
  org=$(dirname "$(find "$WORK/orig" -name test.src.txt | head -n 1)")
  [ -f "$org/train.src.txt" ] || die "no org_data/train.src.txt in $zip"
  declare -A STEM=([train]=train [valid]=dev [test]=test)
  for split in "${SPLITS[@]}"; do
    cp "$org/${STEM[$split]}.src.txt" "$WORK/raw/$split.$SRC"
    cp "$org/${STEM[$split]}.tgt.txt" "$WORK/raw/$split.$TGT"
  done
fi
check_pairs "$WORK/raw"

# The text is already tokenized and lowercased: only BPE is learned here.
learn_joint_bpe "$WORK/raw"
apply_bpe "$WORK/raw" "$WORK/bpe"
binarize "$WORK/bpe" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), BPE codes in $WORK/code"

binarize_wordpiece "$WORK/raw" "$OUT"
