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
# ONLY="passes" (or "trl score passes", space-separated) runs a subset, to fit a short device session.
ONLY=${ONLY:-"trl score passes"}
run() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if run trl; then
  timeout "${TRL_TIMEOUT:-330}" python3 bench/train_vs_trl.py --mode gpu 2>&1 | tee "$OUT/train_vs_trl.log"
fi
if run score; then
  timeout "${SCORE_TIMEOUT:-200}" python3 bench/score_gpu.py 2>&1 | tee "$OUT/score_gpu.log"
fi
if run passes; then  # issue 17 parts 1 and 2 on the GPU: padded vs packed vs bucketed vs compiled packed, shared prompts
  timeout "${PASSES_TIMEOUT:-180}" python3 bench/pass_variants.py --model bert-random --device cuda --dtype bfloat16 \
    --requests 512 --window 128 --max-batch-tokens 65536 --min-len 64 --max-len 512 --rounds 3 --seconds 3 \
    --compiled 2>&1 | tee "$OUT/pass_variants_encoder.log"
  timeout "${PASSES_TIMEOUT:-180}" python3 bench/pass_variants.py --model qwen-random --device cuda --dtype bfloat16 \
    --requests 256 --window 64 --max-batch-tokens 65536 --prompt-len 300 --min-len 10 --max-len 60 --rounds 3 \
    --seconds 3 --compiled 2>&1 | tee "$OUT/pass_variants_decoder.log"
fi
echo "done"
