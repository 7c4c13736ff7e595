#!/usr/bin/env bash
# Prepare IWSLT'15 English-Vietnamese from the Stanford NMT release (Luong & Manning
# 2015: already Moses-tokenized, 133k training pairs; valid = tst2012, test = tst2013),
# segmented with one joint sentencepiece BPE model, binarized with one joined
# dictionary (the NAT presets share all embeddings).
#
# usage: bash examples/iwslt15_en_vi/prepare.sh [OUT_DIR]   (default data-bin/iwslt15_en_vi)
#   ORIG=DIR             the Stanford files already downloaded in DIR
#                        (train.{en,vi}, tst2012.{en,vi}, tst2013.{en,vi}); else downloaded
#   VOCAB_SIZE=N         joint sentencepiece BPE vocabulary (default 8000)
#   WORDPIECE_VOCAB=DIR  also write OUT_DIR_wordpiece: the text (XML escapes undone)
#                        in a BERT vocabulary's WordPiece pieces, for the BERT
#                        (C-MLM) teacher and its students
#   WORK=DIR             where text and the sentencepiece model go (default work_dirs/iwslt15_en_vi)
#   JOBS=N               binarizer processes (default 4)
#
# Writes OUT_DIR/{train,valid,test}.en-vi.{en,vi}.{bin,idx}, dict.{en,vi}.txt and
# WORK/{spm.model, tok/ (the release's tokenized text), spm/}. BLEU on this set is
# conventionally tokenized BLEU on tst2013: fairseq-generate --post-process
# sentencepiece, scored against WORK/tok/test.vi.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

OUT=${1:-data-bin/iwslt15_en_vi}
WORK=${WORK:-work_dirs/iwslt15_en_vi}
VOCAB_SIZE=${VOCAB_SIZE:-8000}
JOBS=${JOBS:-4}
URL=https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi
SRC=en
TGT=vi

skip_if_binarized "$OUT"
mkdir -p "$WORK/tok" "$WORK/spm"

declare -A STEM=([train]=train [valid]=tst2012 [test]=tst2013)
for split in "${SPLITS[@]}"; do
  for l in $SRC $TGT; do
    file=${STEM[$split]}.$l
    if [ -n "${ORIG:-}" ]; then
      need_file "$ORIG/$file" "ORIG=$ORIG"
      cp "$ORIG/$file" "$WORK/tok/$split.$l"
    else
      fetch "$URL/$file" "$WORK/tok/$split.$l"
    fi
  done
done
check_pairs "$WORK/tok"

echo "prepare: learning a joint sentencepiece BPE model of $VOCAB_SIZE pieces"
python - "$WORK" "$VOCAB_SIZE" "$SRC" "$TGT" <<'PY'
import sys
import sentencepiece as spm

work, vocab_size, src, tgt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
spm.SentencePieceTrainer.train(
    input=f"{work}/tok/train.{src},{work}/tok/train.{tgt}", model_prefix=f"{work}/spm",
    vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
    input_sentence_size=2000000, shuffle_input_sentence=True, minloglevel=2,
)
sp = spm.SentencePieceProcessor(model_file=f"{work}/spm.model")
for split in ("train", "valid", "test"):
    for lang in (src, tgt):
        with open(f"{work}/tok/{split}.{lang}", encoding="utf-8") as fin, \
                open(f"{work}/spm/{split}.{lang}", "w", encoding="utf-8") as fout:
            for line in fin:
                fout.write(" ".join(sp.encode(line.strip(), out_type=str)) + "\n")
PY

binarize "$WORK/spm" "$OUT"
echo "prepare: done: $OUT ($(wc -l < "$OUT/dict.$TGT.txt") joined-dictionary entries), sentencepiece model $WORK/spm.model"

binarize_wordpiece "$WORK/tok" "$OUT" --unescape
