#!/usr/bin/env bash
# The main job, end to end on the shipped defaults, on a fresh machine.
#
# usage: bash scripts/quickstart.sh [bert|word_kd]
#   bert     (default) BERT as a teacher (Chen et al. 2020): C-MLM fine-tuning of
#            all-MiniLM-L6-v2 on Multi30k De-En, top-K soft-label dump, baseline vs
#            BERT-distilled student (scripts/quickstart_bert.sh)
#   word_kd  a Transformer teacher, baseline and word-KD student (scripts/quickstart_word_kd.sh)
# FAIRSEQ_KD_DATA=DIR reads the data from DIR (this project's shared/data layout);
# without it the data is downloaded from its public home.
set -eo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
if [ -z "${FAIRSEQ_KD_DATA:-}" ] && [ -d ../shared/data ]; then
  export FAIRSEQ_KD_DATA=$(cd ../shared/data && pwd)
fi
case "${1:-bert}" in
  bert) exec bash scripts/quickstart_bert.sh ;;
  word_kd) exec bash scripts/quickstart_word_kd.sh ;;
  *) echo "usage: bash scripts/quickstart.sh [bert|word_kd]" >&2; exit 2 ;;
esac
