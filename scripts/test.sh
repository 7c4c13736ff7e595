#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite on CPU.
#   FAIRSEQ_KD_DATA=DIR   real data (../shared/data layout); tests needing it skip without it
#   extra arguments go to pytest (e.g. -k word_kd)
set -eo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest -q -p no:cacheprovider tests "$@"
