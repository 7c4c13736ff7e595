# Shell functions shared by the translation and summarization recipes
# (examples/<dataset>/prepare.sh). Not a command: each recipe sources it,
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
#
# after setting the variables the functions read:
#   SRC, TGT   language suffixes of the text files (SPLIT.$SRC, SPLIT.$TGT)
#   WORK       the recipe's work directory (BPE codes, logs)
#   JOBS       worker processes of fairseq-preprocess (default 4)
#   BPE_OPS    joint BPE merges (learn_joint_bpe only)
#   WORDPIECE_VOCAB  a BERT directory with vocab.txt (wordpiece only)
# A text directory DIR below holds DIR/{train,valid,test}.{$SRC,$TGT}, one
# sentence a line, the two languages line-aligned.

SPLITS=(train valid test)

# die MESSAGE...: "prepare: MESSAGE" on stderr, then stop the recipe.
die() {
  echo "prepare: $*" >&2
  exit 1
}

# need_file FILE [HINT]: stop unless FILE exists; HINT (e.g. "ORIG=$ORIG") says
# which setting pointed there.
need_file() {
  [ -f "$1" ] || die "$1 not found${2:+ ($2)}"
}

# skip_if_binarized OUT: stop with success when OUT already holds a binarized
# data set (its target dictionary and test split), so a rerun does not rebuild it.
skip_if_binarized() {
  if [ -f "$1/dict.$TGT.txt" ] && [ -f "$1/test.$SRC-$TGT.$TGT.bin" ]; then
    echo "prepare: $1 already binarized; remove it to rebuild"
    exit 0
  fi
}

# fetch URL FILE [HINT]: download URL to FILE unless FILE is already there (a
# rerun reuses it); an interrupted download leaves only FILE.part. HINT is
# added to the error when the download fails (e.g. how to get the file by hand).
fetch() {
  [ -f "$2" ] && return 0
  mkdir -p "$(dirname "$2")"
  echo "prepare: downloading $1"
  curl -fL "$1" -o "$2.part" || die "download of $1 failed${3:+; $3}"
  mv "$2.part" "$2"
}

# same_length PREFIX NAME: stop unless PREFIX.$SRC and PREFIX.$TGT have as many
# lines (NAME names them in the message).
same_length() {
  local n_src n_tgt
  n_src=$(wc -l < "$1.$SRC")
  n_tgt=$(wc -l < "$1.$TGT")
  [ "$n_src" = "$n_tgt" ] || die "$2 has $n_src $SRC and $n_tgt $TGT lines"
}

# check_pairs DIR: stop unless both sides of each split of DIR have as many
# lines; print the sentence pairs of each.
check_pairs() {
  local split
  for split in "${SPLITS[@]}"; do
    same_length "$1/$split" "$split"
    echo "prepare: $split $(wc -l < "$1/$split.$SRC") sentence pairs"
  done
}

# lowercase: stdin to stdout, lowercased (Unicode-aware, unlike tr).
lowercase() {
  python -c 'import sys
for line in sys.stdin: sys.stdout.write(line.lower())'
}

# unescape_xml: stdin to stdout with the XML escapes of sacremoses' tokenize -x
# output (&apos; &quot; &amp; ...) undone.
unescape_xml() {
  python -c 'import html, sys
for line in sys.stdin: sys.stdout.write(html.unescape(line))'
}

# hold_out_valid N IN_PREFIX OUT_DIR: every Nth line of IN_PREFIX.{$SRC,$TGT}
# goes to OUT_DIR/valid, the others to OUT_DIR/train.
hold_out_valid() {
  local l
  for l in $SRC $TGT; do
    awk -v n="$1" '{ if (NR % n == 0) print $0 }' "$2.$l" > "$3/valid.$l"
    awk -v n="$1" '{ if (NR % n != 0) print $0 }' "$2.$l" > "$3/train.$l"
  done
}

# clean_corpus IN_PREFIX OUT_PREFIX MAX: Moses clean-corpus-n.perl -ratio 1.5
# IN OUT 1 MAX: keep the pairs of IN_PREFIX.{$SRC,$TGT} whose sides both have
# 1..MAX tokens and lengths within 1.5x of each other.
clean_corpus() {
  : > "$2.$SRC"; : > "$2.$TGT"  # awk writes nothing when it keeps no pair
  paste -d '\t' "$1.$SRC" "$1.$TGT" \
    | awk -F '\t' -v max="$3" -v out_src="$2.$SRC" -v out_tgt="$2.$TGT" '{
        s = split($1, a, " "); t = split($2, b, " ");
        if (s >= 1 && t >= 1 && s <= max && t <= max && s <= 1.5 * t && t <= 1.5 * s) {
          print $1 > out_src; print $2 > out_tgt
        } }'
}

# learn_joint_bpe DIR: learn $BPE_OPS joint BPE merges (subword-nmt) on
# DIR/train.$SRC + DIR/train.$TGT into $WORK/code.
learn_joint_bpe() {
  echo "prepare: learning $BPE_OPS joint BPE merges"
  cat "$1/train.$SRC" "$1/train.$TGT" | subword-nmt learn-bpe -s "$BPE_OPS" > "$WORK/code"
}

# apply_bpe IN_DIR OUT_DIR: segment every split of IN_DIR with $WORK/code.
apply_bpe() {
  local split l
  mkdir -p "$2"
  for split in "${SPLITS[@]}"; do
    for l in $SRC $TGT; do
      subword-nmt apply-bpe -c "$WORK/code" < "$1/$split.$l" > "$2/$split.$l"
    done
  done
}

# binarize TEXT_DIR OUT: fairseq-preprocess of TEXT_DIR's splits into OUT with
# one joined dictionary (the NAT presets share all embeddings). It writes to
# OUT.tmp and renames, so OUT is never half written; its log is
# $WORK/preprocess.log, whose tail is shown when it fails.
binarize() {
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" --joined-dictionary \
    --trainpref "$1/train" --validpref "$1/valid" --testpref "$1/test" \
    --destdir "$2.tmp" --workers "${JOBS:-4}" > "$WORK/preprocess.log" 2>&1 \
    || { tail -20 "$WORK/preprocess.log" >&2; exit 1; }
  rm -rf "$2" && mv "$2.tmp" "$2"
}

# wordpiece IN_DIR OUT_DIR [--unescape]: every split of IN_DIR in the WordPiece
# pieces of $WORDPIECE_VOCAB (fairseq-kd-bert-tokenize), for the BERT (C-MLM)
# teacher and its students. --unescape first undoes the XML escapes of Moses-
# tokenized text (BERT's vocabulary has the characters, not the escapes); the
# unescaped text is kept as OUT_DIR/SPLIT.LANG.txt.
wordpiece() {
  local split l in
  mkdir -p "$2"
  for split in "${SPLITS[@]}"; do
    for l in $SRC $TGT; do
      in=$1/$split.$l
      if [ "${3:-}" = --unescape ]; then
        unescape_xml < "$in" > "$2/$split.$l.txt"
        in=$2/$split.$l.txt
      fi
      fairseq-kd-bert-tokenize --vocab "$WORDPIECE_VOCAB" "$in" -o "$2/$split.$l"
    done
  done
}

# binarize_wordpiece TEXT_DIR OUT [--unescape]: when WORDPIECE_VOCAB is set,
# OUT_wordpiece = TEXT_DIR in WordPiece pieces (text in $WORK/wordpiece), binarized.
binarize_wordpiece() {
  [ -n "${WORDPIECE_VOCAB:-}" ] || return 0
  wordpiece "$1" "$WORK/wordpiece" "${3:-}"
  binarize "$WORK/wordpiece" "${2}_wordpiece"
  echo "prepare: done: ${2}_wordpiece (WordPiece of $WORDPIECE_VOCAB)"
}
