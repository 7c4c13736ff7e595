#!/usr/bin/env bash
# The Multi30k De-En study: every distillation method of the plugin against its
# baseline, with one student size, one budget and the teacher's own quality beside them.
#
#   teacher        3+3 x 256 Transformer, label smoothing 0.1
#   baseline       2+2 x 128 Transformer student, label smoothing 0.1 (SEEDS)
#   word_kd        + word-level KD from the online teacher (Kim & Rush 2016); alpha:T from KD_GRID
#   seq_kd         on the teacher's beam-5 translations of the training set (SEEDS)
#   seq_inter      on the n-best hypothesis closest to the reference (Seq-Inter)
#   seq_word_kd    seq-KD data + word-level KD (Kim & Rush's best row)
#   seq_interp     --criterion seq_kd: (1-a) NLL(gold) + a NLL(teacher's output); a from INTERP_GRID
#   cmlm_raw       Mask-Predict student (2+2 x 128) on the gold data (SEEDS)
#   cmlm_distill   the same on the beam-5 distilled data (SEEDS)
#   cmlm_distill_kd  + nat_word_kd from the teacher
#   levt_distill   Levenshtein Transformer (2+2 x 128) on the distilled data
#   word_kd_reverse_kl word_kd_jsd word_kd_skew_forward_kl word_kd_skew_reverse_kl word_kd_tvd
#                  word_kd_select_batch word_kd_select_global word_kd_on_policy
#                  word-KD with one objective changed (--kd-divergence, --kd-selection,
#                  --kd-on-policy-ratio; the papers' settings), not in the default MODELS
#   word_kd_topk8 store_topk8 store_sampled12
#                  word-KD from the online teacher's top 8, from its top-8 soft-label store and from
#                  its 12-sample store (fairseq-kd-dump-soft-labels), not in the default MODELS
#   bert_kd        the BERT (C-MLM MiniLM) teacher's top-K store -> student, with its own
#                  WordPiece baseline (scripts/quickstart_bert.sh at this study's budgets, SEEDS
#                  for both; its teacher trains until it beats that baseline on valid), not in
#                  the default MODELS (hours on 2 CPU cores)
#
# Every student trains STUDENT_UPDATES (NAT: NAT_UPDATES) updates of <= MAX_TOKENS tokens,
# validates each epoch, and keeps its best checkpoint on the valid split's gold NLL. Every
# setting that is chosen (alpha, T, interpolation weight) is chosen on valid BLEU (beam 1)
# among the candidates of its grid; test2016 is decoded only for the table.
#
# The table ($WORK/results.md, and RESULTS.md): sacreBLEU and chrF on test2016 at beam 1 and
# beam 5 (AT) or 4 and 10 iterations (NAT), mean and spread over seeds; latency at batch 1 and
# sentences/s at a large batch as ratios to the AT student at beam 5; C(d) and F(d) of the
# raw, distilled and Seq-Inter training sets (Zhou et al. 2020); the teacher's valid token
# accuracy against the baseline student's; the time each training and distillation took (from the
# timestamps of its log, summed over the runs that resumed it); a figure of BLEU against speed-up
# ($WORK/bleu_vs_speed.png).
#
# usage: bash examples/multi30k/study.sh              (venv active; FAIRSEQ_KD_DATA=DIR for a local copy)
#   TEACHER_UPDATES=1200 STUDENT_UPDATES=1000 NAT_UPDATES=1500 MAX_TOKENS=4096   budgets (CPU defaults;
#                                                a GPU run wants e.g. 20000 / 10000 / 30000, CPU=)
#   MODELS="baseline word_kd ..."   rows to train and score (default: all above but bert_kd; the
#                                   teacher is trained when a row needs it, or when MODELS names it)
#   SEEDS="1 2"                     seeds of the rows of SEEDED_ROWS (others: the first)
#   SEEDED_ROWS="baseline seq_kd cmlm_raw cmlm_distill"   the rows trained with every seed of SEEDS
#   TEACHER_SEED=1                  the teacher's seed (default: the first of SEEDS), so that other
#                                   seeds of the students can be trained in a new working directory
#                                   against a teacher of the same seed (SEEDS=2 TEACHER_SEED=1; the
#                                   same model on the same machine, not always on another)
#   KD_GRID="0.5:1"                 word_kd candidates alpha:T, chosen on valid (T softens the teacher
#                                   only; alpha:Th is Hinton et al.'s form: teacher and student at T, KD x T^2)
#   BERT_TEACHER_UPDATES=3200 BERT_TEACHER_MAX_UPDATES=3200 BERT_TEACHER_WARMUP=161   the C-MLM
#                                   teacher's steps, most updates and warm-up (it stops once its valid
#                                   masked-token accuracy is above the WordPiece baseline's valid token
#                                   accuracy; RESULTS.md 0: just above it at 800 updates, BERT-KD lost;
#                                   at 1,600 it tied; at 3,200, warm-up 161, it gained)
#   BERT_KD_GRID="0.2:1 0.5:1 0.5:10 0.8:1"   bert_kd candidates alpha:T (top-8 store), chosen on valid
#   INTERP_GRID="0.5"               seq_interp candidates alpha, chosen on valid
#   BETA_GRID="0.5" SKEW_GRID="0.1" SELECTION_GRID="0.5" ON_POLICY_GRID="0.5"
#                                   the objective rows' own setting (--kd-beta of word_kd_jsd,
#                                   --kd-skew of the skew rows, --kd-selection-ratio of the selection
#                                   rows, --kd-on-policy-ratio of word_kd_on_policy): the papers'
#                                   values; several values are trained as ROW.pVALUE and chosen on valid
#   TEST_SETS="name=SRC_FILE,REF_FILE ..."   more raw (detokenized) test sets to score every
#                                   trained model on, without retraining
#   JOBS=2                          trainings run at once (threads: nproc / JOBS each)
#   WORK=work_dirs/multi30k_study   CPU=--cpu (set CPU= for a GPU)
#   STAGES="train eval report"      what to run (eval measures speed: run it on an idle machine)
#   LATENCY_SENTENCES=100           test sentences decoded one at a time for latency (0: none, on a
#                                   busy machine where the figure would mean nothing)
# Every stage is skipped when its output exists (scores: when they are the current model's), so a
# killed run resumes where it stopped and each row can be run alone (MODELS=seq_kd trains the
# teacher and distills first if needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
TEACHER_UPDATES=${TEACHER_UPDATES:-1200}
STUDENT_UPDATES=${STUDENT_UPDATES:-1000}
NAT_UPDATES=${NAT_UPDATES:-1500}
MAX_TOKENS=${MAX_TOKENS:-4096}
WORK=${WORK:-work_dirs/multi30k_study}
CPU=${CPU---cpu}
SEEDS=${SEEDS:-1 2}
SEEDED_ROWS=${SEEDED_ROWS:-baseline seq_kd cmlm_raw cmlm_distill}
MODELS=${MODELS:-baseline word_kd seq_kd seq_inter seq_word_kd seq_interp cmlm_raw cmlm_distill cmlm_distill_kd levt_distill}
KD_GRID=${KD_GRID:-0.5:1}
KD_ALPHA=${KD_ALPHA:-${KD_GRID%%:*}}
INTERP_GRID=${INTERP_GRID:-0.5}
BERT_TEACHER_UPDATES=${BERT_TEACHER_UPDATES:-3200}
BERT_TEACHER_MAX_UPDATES=${BERT_TEACHER_MAX_UPDATES:-3200}
BERT_TEACHER_WARMUP=${BERT_TEACHER_WARMUP:-161}
BERT_KD_GRID=${BERT_KD_GRID:-0.2:1 0.5:1 0.5:10 0.8:1}
BETA_GRID=${BETA_GRID:-0.5}
SKEW_GRID=${SKEW_GRID:-0.1}
SELECTION_GRID=${SELECTION_GRID:-0.5}
ON_POLICY_GRID=${ON_POLICY_GRID:-0.5}
TEST_SETS=${TEST_SETS:-}
JOBS=${JOBS:-2}
STAGES=${STAGES:-train eval report}
LATENCY_SENTENCES=${LATENCY_SENTENCES:-100}
DATA=data-bin/multi30k_de_en
TEXT=work_dirs/multi30k
THREADS=$(( $(nproc) / JOBS )); [ "$THREADS" -ge 1 ] || THREADS=1
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
START=$(date +%s)
stamp() { echo "study [$(( $(date +%s) - START ))s]: $*"; }
first_seed=${SEEDS%% *}
TEACHER_SEED=${TEACHER_SEED:-$first_seed}


COMMON=(--user-dir fairseq_kd --share-all-embeddings --dropout 0.1
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 200
  --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1 --no-epoch-checkpoints --save-interval-updates 0
  --best-checkpoint-metric nll_loss --log-format simple --log-interval 50 $CPU)
TEACHER=(--arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256
  --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
  --encoder-attention-heads 4 --decoder-attention-heads 4)
SIZE=(--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
  --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4)
STUDENT=(--arch transformer "${SIZE[@]}")
# Mask-Predict / LevT at the AT student's size: speed ratios compare decoders, not model sizes.
NAT=(--task translation_lev --criterion nat_loss --label-smoothing 0.1 "${SIZE[@]}" --dropout 0.1
  --best-checkpoint-metric loss --fixed-validation-seed 7)
T=$WORK/teacher/final.pt

# train NAME DATA UPDATES SEED ARGS...: fairseq-train into $WORK/NAME; final.pt = the best
# checkpoint on valid. Skipped when final.pt exists; a killed run restarts from checkpoint_last.
train() {
  local name=$1 data=$2 updates=$3 seed=$4; shift 4
  if [ -f "$WORK/$name/final.pt" ]; then return; fi
  stamp "training $name ($updates updates, seed $seed)"
  OMP_NUM_THREADS=${OMP_THREADS:-$THREADS} fairseq-train "$data" "${COMMON[@]}" --seed "$seed" \
    --save-dir "$WORK/$name" --max-update "$updates" "$@" >> "$WORK/$name.log" 2>&1 \
    || { tail -30 "$WORK/$name.log"; return 1; }
  cp "$WORK/$name/checkpoint_best.pt" "$WORK/$name/final.pt.tmp" && mv "$WORK/$name/final.pt.tmp" "$WORK/$name/final.pt"
  stamp "$name trained: $(grep -o 'wps [0-9.]*' "$WORK/$name.log" | tail -1) target words/s"
}

teacher() {
  OMP_THREADS=$(nproc) train teacher "$DATA" "$TEACHER_UPDATES" "$TEACHER_SEED" "${TEACHER[@]}" \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --report-accuracy
}

# corpus NAME ARGS...: the teacher's translations of the training set (original order, none
# dropped) as a fairseq data directory $WORK/NAME, then its C(d) and F(d).
corpus() {
  local name=$1; shift
  if [ ! -f "$WORK/$name/dict.en.txt" ]; then
    stamp "distilling the training set: $name"
    OMP_NUM_THREADS=$THREADS fairseq-kd-distill-corpus "$DATA" --path "$T" --subset train --beam 5 \
      --max-len-a 1.2 --max-len-b 10 --max-tokens 8000 --out "$WORK/$name" $CPU "$@" > "$WORK/$name.log" 2>&1 \
      || { tail -20 "$WORK/$name.log"; return 1; }
  fi
  if [ ! -f "$WORK/$name.stats.json" ]; then
    OMP_NUM_THREADS=$THREADS fairseq-kd-data-stats "$WORK/$name" --subset train --out "$WORK/$name.stats.json" \
      >> "$WORK/$name.log" 2>&1 || { tail -20 "$WORK/$name.log"; return 1; }
  fi
}

# store NAME ARGS...: the teacher's soft labels of the training set (fairseq-kd-dump-soft-labels)
# in $WORK/stores/NAME; a killed dump resumes.
store() {
  local name=$1 dir=$WORK/stores; shift
  [ -f "$dir/$name/header.json" ] && return
  mkdir -p "$dir"
  stamp "dumping the teacher's soft labels of the training set: $name"
  OMP_NUM_THREADS=$THREADS fairseq-kd-dump-soft-labels "$DATA" --path "$T" --subset train --out "$dir/$name" \
    $CPU "$@" >> "$dir/$name.log" 2>&1 || { tail -20 "$dir/$name.log"; return 1; }
  stamp "$name: $(tail -1 "$dir/$name.log")"
}

# variant_grid ROW: the candidates of a word_kd_* row's own setting (none for a row without one).
variant_grid() {
  case $1 in
    word_kd_jsd) echo "$BETA_GRID" ;;
    word_kd_skew_forward_kl|word_kd_skew_reverse_kl) echo "$SKEW_GRID" ;;
    word_kd_select_batch|word_kd_select_global) echo "$SELECTION_GRID" ;;
    word_kd_on_policy) echo "$ON_POLICY_GRID" ;;
  esac
}

# kd_variant ROW [VALUE]: the word_kd options of a word_kd_* / store_* row (alpha KD_ALPHA, T 1 for
# all; each one changes one thing against the word_kd row); VALUE its own setting (default: the
# first of its grid, the papers' value).
kd_variant() {
  local v=${2:-$(set -- $(variant_grid "$1"); echo "${1:-}")}
  case $1 in
    word_kd_reverse_kl) echo "--teacher-path $T --kd-divergence reverse_kl" ;;
    word_kd_jsd) echo "--teacher-path $T --kd-divergence jsd --kd-beta $v" ;;          # Agarwal et al. 2024: 0.5
    word_kd_skew_forward_kl) echo "--teacher-path $T --kd-divergence skew_forward_kl --kd-skew $v" ;;  # DistiLLM: 0.1
    word_kd_skew_reverse_kl) echo "--teacher-path $T --kd-divergence skew_reverse_kl --kd-skew $v" ;;
    word_kd_tvd) echo "--teacher-path $T --kd-divergence tvd" ;;
    word_kd_select_batch) echo "--teacher-path $T --kd-selection batch --kd-selection-ratio $v" ;;   # Wang et al. 2021: 0.5
    word_kd_select_global) echo "--teacher-path $T --kd-selection global --kd-selection-ratio $v --kd-selection-queue 30000" ;;
    word_kd_on_policy) echo "--teacher-path $T --kd-on-policy-ratio $v" ;;            # GKD, greedy: 0.5
    word_kd_topk8) echo "--teacher-path $T --kd-topk 8" ;;
    store_topk8) echo "--soft-labels $WORK/stores/topk8" ;;
    store_sampled12) echo "--soft-labels $WORK/stores/sampled12" ;;
    *) echo "study: unknown model $1" >&2; return 2 ;;
  esac
}

# Jobs: at most $JOBS at once; a failed job fails the stage.
pids=()
spawn() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || exit 1; done
  "$@" &
  pids+=($!)
}
join() { local p; for p in "${pids[@]}"; do wait "$p" || exit 1; done; pids=(); }

has() { case " $MODELS " in *" $1 "*) return 0 ;; esac; return 1; }
seeds_of() { case " $SEEDED_ROWS " in *" $1 "*) echo "$SEEDS" ;; *) echo "$first_seed" ;; esac; }
# The models of a row: NAME for the first seed, NAME.sS for the others.
model_name() { if [ "$2" = "$first_seed" ]; then echo "$1"; else echo "$1.s$2"; fi; }

# student ROW SEED: train one model of a row (a grid row trains every candidate).
student() {
  local row=$1 seed=$2 m; m=$(model_name "$row" "$seed")
  case $row in
    baseline) train "$m" "$DATA" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" \
      --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --report-accuracy ;;
    word_kd) for g in $KD_GRID; do
        local t=${g##*:} both=()
        # T: the teacher alone softened; Th: Hinton et al.'s form, both at T and the KD term times T^2
        if [[ $t == *h ]]; then t=${t%h} both=(--kd-student-temperature "$t" --kd-t2-scaling); fi
        train "$m.a${g%%:*}_T${g##*:}" "$DATA" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" --task translation_kd \
          --teacher-path "$T" --criterion word_kd --label-smoothing 0.1 --report-accuracy \
          --kd-alpha "${g%%:*}" --kd-temperature "$t" "${both[@]}"
      done ;;
    seq_kd) train "$m" "$WORK/distill" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" \
      --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --report-accuracy ;;
    seq_inter) train "$m" "$WORK/seqinter" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" \
      --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --report-accuracy ;;
    seq_word_kd) train "$m" "$WORK/distill" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" --task translation_kd \
      --teacher-path "$T" --criterion word_kd --label-smoothing 0.1 --report-accuracy \
      --kd-alpha "${KD_GRID%%:*}" --kd-temperature 1 ;;
    seq_interp) for a in $INTERP_GRID; do
        train "$m.a$a" "$DATA" "$STUDENT_UPDATES" "$seed" "${STUDENT[@]}" --task translation_kd \
          --distilled-data "$WORK/distill" --criterion seq_kd --kd-alpha "$a" --label-smoothing 0.1
      done ;;
    word_kd_*|store_*)
      local grid; grid=$(variant_grid "$row")
      if [ "$(wc -w <<< "$grid")" -le 1 ]; then grid=-; fi  # one setting: the row is trained as ROW
      for v in $grid; do
        train "$(if [ "$v" = - ]; then echo "$m"; else echo "$m.p$v"; fi)" "$DATA" "$STUDENT_UPDATES" "$seed" \
          "${STUDENT[@]}" --task translation_kd --criterion word_kd --label-smoothing 0.1 --report-accuracy \
          --kd-alpha "$KD_ALPHA" --kd-temperature 1 $(kd_variant "$row" "${v#-}")
      done ;;
    cmlm_raw) train "$m" "$DATA" "$NAT_UPDATES" "$seed" "${NAT[@]}" --arch cmlm_kd_iwslt_de_en --noise random_mask ;;
    cmlm_distill) train "$m" "$WORK/distill" "$NAT_UPDATES" "$seed" "${NAT[@]}" --arch cmlm_kd_iwslt_de_en \
      --noise random_mask ;;
    cmlm_distill_kd) train "$m" "$WORK/distill" "$NAT_UPDATES" "$seed" "${NAT[@]}" --arch cmlm_kd_iwslt_de_en \
      --noise random_mask --task translation_lev_kd --teacher-path "$T" --criterion nat_word_kd --kd-alpha 0.5 ;;
    levt_distill) train "$m" "$WORK/distill" "$NAT_UPDATES" "$seed" "${NAT[@]}" --arch levt_kd_iwslt_de_en \
      --noise random_delete ;;
    teacher) teacher ;;
    bert_kd) FAIRSEQ_KD_DATA=${FAIRSEQ_KD_DATA:-} TRAIN_SENTENCES=0 STUDENT_UPDATES=$STUDENT_UPDATES \
      MAX_TOKENS=$MAX_TOKENS TEACHER_UPDATES=$BERT_TEACHER_UPDATES TEACHER_MAX_UPDATES=$BERT_TEACHER_MAX_UPDATES \
      TEACHER_WARMUP=$BERT_TEACHER_WARMUP KD_GRID=$BERT_KD_GRID SEEDS=$SEEDS BEAMS="1 5" JOBS=$JOBS CPU=$CPU \
      WORK=$WORK/bert_kd \
      bash scripts/quickstart_bert.sh >> "$WORK/bert_kd.log" 2>&1 || { tail -20 "$WORK/bert_kd.log"; return 1; } ;;
    *) echo "study: unknown model $row" >&2; return 2 ;;
  esac
}

# Every row of MODELS is known before anything runs.
for row in $MODELS; do
  case $row in
    baseline|word_kd|seq_kd|seq_inter|seq_word_kd|seq_interp|cmlm_raw|cmlm_distill|cmlm_distill_kd|levt_distill|teacher|bert_kd) ;;
    *) kd_variant "$row" > /dev/null || exit 2 ;;
  esac
done

needs_teacher() { case $1 in baseline|cmlm_raw|bert_kd) return 1 ;; esac; return 0; }

WORK=$TEXT bash examples/multi30k/prepare.sh "$DATA"  # its text and BPE codes go to $TEXT, not the study's $WORK

# ------------------------------------------------------------------ training
if [[ " $STAGES " == *" train "* ]]; then
  # Teacher-free rows first: they run while nothing else needs the machine.
  for row in $MODELS; do needs_teacher "$row" && continue
    for s in $(seeds_of "$row"); do spawn student "$row" "$s"; done
  done
  join
  for row in $MODELS; do
    if needs_teacher "$row"; then teacher; break; fi
  done
  has seq_kd || has seq_word_kd || has seq_interp || has cmlm_distill || has cmlm_distill_kd \
    || has levt_distill && spawn corpus distill
  has seq_inter && spawn corpus seqinter --nbest 5 --select seq-inter
  has store_topk8 && spawn store topk8 --topk 8
  has store_sampled12 && spawn store sampled12 --store sampled --samples 12 --temperature 1
  join
  for row in $MODELS; do needs_teacher "$row" || continue
    for s in $(seeds_of "$row"); do spawn student "$row" "$s"; done
  done
  join
fi

# ------------------------------------------------------------------ evaluation
# evaluate MODEL TAG SETTING [DATA REF]: MODEL decoded at SETTING (b1, b5: beam; i4, i10:
# NAT iterations, 3 length candidates) into $WORK/eval/MODEL.TAG.SETTING/scores.json. TAG is
# valid, test (test2016) or the name of a TEST_SETS entry (its DATA and REF given); latency
# at batch 1 is measured on every test set, not on valid.
evaluate() {
  local m=$1 tag=$2 setting=$3 data=${4:-$DATA} ref=${5:-$TEXT/raw/$2.en}
  local out=$WORK/eval/$m.$tag.$setting subset=test lat=$LATENCY_SENTENCES dec model
  # Scores are kept for the model they were computed from ($out/model: the trained model's name;
  # a grid row's ROW/final.pt links to its chosen candidate): a row whose choice changed, or a
  # model trained again since, is decoded again.
  model=$(readlink -f "$WORK/$m/final.pt")
  if [ -f "$out/scores.json" ] && [ "$(cat "$out/model" 2>/dev/null)" = "$(basename "$(dirname "$model")")" ] \
    && [ "$out/scores.json" -nt "$model" ]; then return; fi
  rm -f "$out/model"
  [ "$tag" = valid ] && subset=valid lat=0
  case $setting in
    b*) dec=(--beam "${setting#b}" --max-len-a 1.2 --max-len-b 10) ;;
    # Mask-Predict: 3 length candidates; fairseq's Levenshtein model decodes one (it has no length beam)
    i*) dec=(--iter-decode-max-iter $(( ${setting#i} - 1 )) --iter-decode-force-max-iter
             --iter-decode-with-beam "$(case $m in levt*) echo 1 ;; *) echo 3 ;; esac)") ;;
  esac
  OMP_NUM_THREADS=$(nproc) fairseq-kd-evaluate "$data" --path "$WORK/$m/final.pt" --gen-subset "$subset" \
    --reference "$ref" --latency-sentences "$lat" --results-path "$out" $CPU "${dec[@]}" >> "$WORK/eval.log" 2>&1 \
    || { tail -20 "$WORK/eval.log"; return 1; }
  basename "$(dirname "$model")" > "$out/model"
  stamp "$m $tag $setting: $(tail -1 "$WORK/eval.log")"
}

is_nat() { case $1 in cmlm*|levt*) return 0 ;; esac; return 1; }
settings_of() { if is_nat "$1"; then echo "i4 i10"; else echo "b1 b5"; fi; }

# pick ROW: the grid candidate of ROW with the best valid BLEU (beam 1) becomes $WORK/ROW.
pick() {
  local row=$1 best="" best_bleu=-1 c b
  for c in "$WORK/$row".*/; do
    c=$(basename "$c")
    [[ $c == "$row".s* ]] && continue
    [ -f "$WORK/$c/final.pt" ] || continue
    evaluate "$c" valid b1
    b=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['bleu'])" "$WORK/eval/$c.valid.b1/scores.json")
    if python -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$b" "$best_bleu"; then
      best=$c best_bleu=$b
    fi
  done
  [ -n "$best" ] || { echo "study: no trained candidate of $row" >&2; return 1; }
  mkdir -p "$WORK/$row"
  if [ -f "$WORK/$row/final.pt" ] && [ ! -L "$WORK/$row/final.pt" ]; then
    echo "study: $WORK/$row/final.pt was trained with one setting, not chosen from a grid: move $WORK/$row to $WORK/$row.pVALUE (its setting) to make it a candidate" >&2
    return 2
  fi
  ln -sf "../$best/final.pt" "$WORK/$row/final.pt"
  echo "$best" > "$WORK/$row.choice"
  stamp "$row: $best chosen on valid (BLEU $best_bleu)"
}

# extra_test NAME SRC REF: a raw test set tokenized and BPE-segmented like the training data
# and binarized with its dictionaries into $WORK/extra/NAME (split "test").
extra_test() {
  local name=$1 src=$2 ref=$3 dir=$WORK/extra/$1
  [ -f "$dir/bin/test.de-en.en.idx" ] && return
  mkdir -p "$dir"
  sacremoses -q -l de tokenize -x < "$src" | subword-nmt apply-bpe -c "$TEXT/code" > "$dir/test.de"
  sacremoses -q -l en tokenize -x < "$ref" | subword-nmt apply-bpe -c "$TEXT/code" > "$dir/test.en"
  fairseq-preprocess -s de -t en --srcdict "$DATA/dict.de.txt" --tgtdict "$DATA/dict.en.txt" \
    --testpref "$dir/test" --destdir "$dir/bin" --workers 2 > "$dir/preprocess.log" 2>&1
}

if [[ " $STAGES " == *" eval "* ]]; then
  stamp "decoding (one model at a time, every thread: latency is measured here)"
  has word_kd && pick word_kd
  has seq_interp && pick seq_interp
  for row in $MODELS; do
    if [ "$(variant_grid "$row" | wc -w)" -gt 1 ]; then pick "$row"; fi
  done
  models=()
  if [ -f "$T" ]; then models+=(teacher); fi
  for row in $MODELS; do
    case $row in bert_kd|teacher) continue ;; esac
    for s in $(seeds_of "$row"); do m=$(model_name "$row" "$s"); [ -f "$WORK/$m/final.pt" ] && models+=("$m"); done
  done
  for m in "${models[@]}"; do
    for setting in $(settings_of "$m"); do evaluate "$m" test "$setting"; done
  done
  for spec in $TEST_SETS; do
    name=${spec%%=*} files=${spec#*=}
    extra_test "$name" "${files%%,*}" "${files##*,}"
    for m in "${models[@]}"; do
      for setting in $(settings_of "$m"); do
        evaluate "$m" "$name" "$setting" "$WORK/extra/$name/bin" "${files##*,}"
      done
    done
  done
fi

# ------------------------------------------------------------------ report
if [[ " $STAGES " == *" report "* ]]; then
  python examples/multi30k/report.py "$WORK" --seeds $SEEDS --multi-seed $SEEDED_ROWS --models $MODELS \
    --budget "teacher $TEACHER_UPDATES, students $STUDENT_UPDATES (NAT $NAT_UPDATES) updates of <= $MAX_TOKENS tokens"
fi
stamp "done"
