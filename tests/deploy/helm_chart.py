"""Real Helm for tests/deploy: lints and renders a chart with Helm v4's Go SDK, as bundled by helm-python-sdk (no helm
binary, no cluster). Run by a Python that has `helm_python` (scripts/install_deploy_tools.sh's venv), not by the
project's, so it imports the standard library and helm_python only; tests/deploy/tools.py runs it.

    python helm_chart.py CHART_DIR < requests.json > results.json

requests: a list of {"values": what `-f` files and `--set` give, "release": name, "namespace": ns, "lint": bool}.
results, one per request: {"values": the values Helm renders with (values.yaml coalesced under the given ones),
"manifests": {template path: rendered text}, "lint": Helm's lint report (when asked)}, or {"error": Helm's message,
"kind": "values" (values.schema.json refused them) | "render" (a template failed, `fail` included)}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import helm_python as helm


def one(chart: Any, path: str, request: dict[str, Any]) -> dict[str, Any]:
    values = request.get("values") or {}
    result: dict[str, Any] = {}
    if request.get("lint"):
        result["lint"] = helm.lint(path, values, strict=True, namespace=request["namespace"])
    try:
        result["values"] = chart.merge_values(values)
        result["manifests"] = chart.render(
            values, name=request["release"], namespace=request["namespace"], is_install=True
        )
    except helm.HelmValuesError as exc:
        return {**result, "error": str(exc), "kind": "values"}
    except helm.HelmRenderError as exc:
        return {**result, "error": str(exc), "kind": "render"}
    return result


def main() -> int:
    path = sys.argv[1]
    requests = json.load(sys.stdin)
    with helm.Chart.load(path) as chart:
        results = [one(chart, path, request) for request in requests]
    json.dump({"helm": helm.helm_sdk_version(), "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
