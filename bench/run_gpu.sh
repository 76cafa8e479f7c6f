#!/usr/bin/env bash
# Every GPU benchmark in one go (one device session is short): results and logs under $OUT.
#   OUT=/tmp/gpu bash bench/run_gpu.sh
# The GPU machine has torch + transformers but no network: TRL and its few missing dependencies
# travel as wheels in .whl/: bash bench/fetch_gpu_wheels.sh here first, then carry .whl.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-.bench/gpu}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
SITE=/tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    .whl/trl-*.whl .whl/datasets-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl
  if ! python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/pyarrow-*.whl
  fi
fi
export PYTHONPATH="$SITE:$PWD"
timeout "${TRL_TIMEOUT:-330}" python3 bench/train_vs_trl.py --mode gpu 2>&1 | tee "$OUT/train_vs_trl.log"
timeout "${SCORE_TIMEOUT:-200}" python3 bench/score_gpu.py 2>&1 | tee "$OUT/score_gpu.log"
echo "done"
