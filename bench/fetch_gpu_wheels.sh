#!/usr/bin/env bash
# Download, on this machine (PyPI reachable), the wheels bench/run_gpu.sh installs on the GPU machine
# (Python 3.12, x86_64, no network): TRL and what it needs that the GPU image lacks. .whl/ is git-ignored;
# name it in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 'dill<0.4.2' 'multiprocess<0.70.20' 'pyarrow>=24'
ls -la .whl
