#!/usr/bin/env bash
# OpenPipe's Python SDK (openpipe==5.0.0) in a venv of its own, for the tests that run the real SDK against the
# gateway (tests/gateway/api/test_openpipe_sdk.py, which finds it at .openpipe-venv/ or $REWARDGATE_OPENPIPE_PYTHON
# and skips, saying so, without it). openpipe 5.0.0 pins openai<=1.97.1, so it cannot share the project's venv.
#   bash scripts/install_openpipe_sdk.sh [DIR]     (default: .openpipe-venv in the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/.openpipe-venv}"
python3 -m venv "$dir"
"$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/openpipe_sdk_requirements.txt"
"$dir/bin/python" -c "import openpipe, importlib.metadata as m; print('openpipe', m.version('openpipe'), 'in $dir')"
