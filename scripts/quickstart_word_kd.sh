#!/usr/bin/env bash
# Word-level KD on Multi30k De-En, end to end on CPU with the shipped defaults:
# train a teacher, a baseline student and a word-KD student (same size and
# budget as the baseline), decode test2016, print sacreBLEU and chrF side by side.
# It is examples/multi30k/study.sh with MODELS="teacher baseline word_kd" and
# quickstart budgets.
#
# usage: bash scripts/quickstart_word_kd.sh           (expects the venv active;
#        scripts/quickstart.sh sets it up and calls this)
#   FAIRSEQ_KD_DATA=DIR     local copy of the data (else Multi30k is downloaded)
#   TEACHER_UPDATES=300 STUDENT_UPDATES=300   budgets (updates of <= 4096 tokens)
#   KD_ALPHA=0.5 KD_TEMPERATURE=1 KD_TOPK=0   the word_kd options
#   WORK=work_dirs/quickstart_word_kd         where checkpoints and outputs go
set -euo pipefail
cd "$(dirname "$0")/.."
export TEACHER_UPDATES=${TEACHER_UPDATES:-300} STUDENT_UPDATES=${STUDENT_UPDATES:-300}
export WORK=${WORK:-work_dirs/quickstart_word_kd} MODELS="teacher baseline word_kd" SEEDS=${SEEDS:-1}
exec bash examples/multi30k/study.sh
