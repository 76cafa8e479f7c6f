"""A real Prometheus for tests/deploy/test_prometheus.py: the throwaway server of scripts/start_test_prometheus.sh
(.ci/run starts one and exports its URL; otherwise the test starts its own, where `prometheus` is on PATH), fed
deploy/prometheus/prometheus.yml with the ports of the processes the test runs, and read through its HTTP API."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy.common import DEPLOY, ROOT
from tests.deploy.tools import tool

PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SCRIPT = ROOT / "scripts" / "start_test_prometheus.sh"


def scrape_config_for(ports: Mapping[str, int]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml as the test runs it: every target `<service>:<port>` at 127.0.0.1 on the
    port of the test's process for that compose service, 1 s scrape and rule intervals, the rule file from the
    repository instead of its mount path. Job names, paths and everything else stay as deployed."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    rule_files = config.get("rule_files", [])
    assert [Path(f).name for f in rule_files] == [ALERTS.name], f"prometheus.yml must load alerts.yml: {rule_files}"
    config["rule_files"] = [str(ALERTS)]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{ports[target.rsplit(':', 1)[0]]}" for target in static["targets"]]
    return config


@dataclass(frozen=True)
class Prometheus:
    url: str
    config_file: Path

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the present: the series it returns, each {"metric": labels, "value": [t, "v"]}."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}, not an instant vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    def load(self, config: Mapping[str, Any]) -> None:
        """Write the config where the server reads it, and reload it (the lifecycle API)."""
        self.config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        response = httpx.post(f"{self.url}/-/reload", timeout=30)
        assert response.status_code == 200, f"reload refused: {response.text}"


@contextmanager
def throwaway_prometheus(folder: Path) -> Iterator[Prometheus]:
    """CI's server (REWARDGATE_TEST_PROMETHEUS_URL and _CONFIG), its config put back afterwards; else one of our
    own in `folder`, stopped afterwards; the test skips where neither is possible."""
    url, config = os.environ.get("REWARDGATE_TEST_PROMETHEUS_URL"), os.environ.get("REWARDGATE_TEST_PROMETHEUS_CONFIG")
    if url and config:
        server = Prometheus(url, Path(config))
        before = yaml.safe_load(server.config_file.read_text())
        try:
            yield server
        finally:
            server.load(before)
        return
    tool("prometheus")
    env = {**os.environ, "REWARDGATE_PROM_DIR": str(folder)}
    started = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    exported = dict(word.split("=", 1) for word in shlex.split(started.stdout.strip())[1:])  # export A=a B=b
    url, config = exported["REWARDGATE_TEST_PROMETHEUS_URL"], exported["REWARDGATE_TEST_PROMETHEUS_CONFIG"]
    try:
        yield Prometheus(url, Path(config))
    finally:
        subprocess.run(["bash", str(SCRIPT), "--stop"], env=env, capture_output=True, timeout=120, check=False)
