"""A real Prometheus (Debian's) on the real processes: deploy/prometheus/prometheus.yml scrapes a gateway, the training
worker and a reward server run here (stack.py) while traffic flows (pass-through, best-of-N, a failing upstream, a
bad request, a training job that deploys and one that fails); then every query of every dashboard panel runs
through Prometheus' HTTP API and must show the traffic, and the alerting rules load, evaluate cleanly, and the ones
this traffic should trigger are active. promtool checks the rules and runs their unit tests (alerts.test.yml).
Skips, saying why, without prometheus or promtool (tools.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import DEPLOY, TARGET_LABELS, compose, exported_series, panel_queries, parse_promql
from tests.deploy.prometheus import ALERTS, Prometheus, scrape_config_for, throwaway_prometheus
from tests.deploy.stack import Stack, job_state, running_stack, send_round, submit_training_jobs, until
from tests.deploy.tools import run, tool

ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"

# Panels whose check fails today, and why: the gateway lacks the behaviour, so the panel cannot show what it is
# for. Strict: once the gateway has it, the check passes and the mark must go.
KNOWN_GAPS: dict[str, str] = {}  # panel title -> why it cannot show data yet (xfail, strict: a fix shows)

# Panels of a gauge that is 0 at rest: they must return series, not a non-zero value.
AT_REST = {"Queue depth"}

# What the traffic must set off (stack.ROUND sends 5xx; one training job fails).
EXPECTED_ALERTS = {"RewardgateGatewayErrors5xx", "RewardgateCandidatesFailing", "RewardgateTrainingJobFailed"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------- promtool, no processes


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    checked = run([promtool, "check", "rules", str(ALERTS)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_promtool_accepts_the_scrape_config_as_the_test_runs_it(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config_for({"gateway": 1, "training-worker": 2, "reward-server": 3})))
    done = run([tool("promtool"), "check", "config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_reads_exported_metrics_and_tells_the_operator_what_happened() -> None:
    series = exported_series()
    for rule in alert_rules():
        name, query = rule["alert"], parse_promql(rule["expr"])
        unknown = [m for m in query.metrics if m not in series and m != "up"]  # `up`: Prometheus' own, per target
        assert query.metrics and not unknown, f"{name}: {unknown} are not exported"
        for metric, labels in query.matched.items():
            known = TARGET_LABELS if metric == "up" else series[metric].labels | TARGET_LABELS
            assert labels <= known, f"{name}: {metric} has no label {labels - known}"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    missing = sorted({rule["alert"] for rule in alert_rules()} - fired)
    assert not missing, f"no case in {ALERT_TESTS.name} fires {missing}"


def test_compose_mounts_the_rules_where_prometheus_yml_loads_them() -> None:
    [rule_file] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert f"./prometheus/alerts.yml:{rule_file}:ro" in compose()["services"]["prometheus"]["volumes"]


# ---------------------------------------------------------------- a real Prometheus on running processes


@dataclass(frozen=True)
class Observed:
    prometheus: Prometheus
    stack: Stack
    since: float  # Unix time before the first request, after a scrape of every target
    ports: Mapping[str, int]  # each compose service's port in this run

    def window_s(self) -> int:
        """A range (for $__rate_interval) from before the traffic to now: every rate sees all of it."""
        return math.ceil(time.time() - self.since) + 2


def scraped_since(prometheus: Prometheus, moment: float, ports: Mapping[str, int]) -> bool:
    """This run's every target has been scraped, successfully, after `moment`. Only its own ports count: a server
    reused across runs (CI's, or a developer's) still holds the `up` series of earlier runs' targets for a while."""
    instances = "|".join(f"127.0.0.1:{port}" for port in ports.values())
    ups = prometheus.query(f'up{{job=~"rewardgate-.*", instance=~"{instances}"}}')
    fresh = [s for s in ups if s["value"][1] == "1" and float(s["value"][0]) > moment]
    scraped = prometheus.query(f'timestamp(up{{job=~"rewardgate-.*", instance=~"{instances}"}})')
    return len(fresh) == len(ports) and all(float(s["value"][1]) > moment for s in scraped)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observed")
    with throwaway_prometheus(tmp / "prometheus") as prometheus, running_stack(tmp / "stack") as stack:
        ports = {host: int(process.url.rsplit(":", 1)[1]) for host, process in stack.processes.items()}
        prometheus.load(scrape_config_for(ports))
        since = time.time()
        until(lambda: scraped_since(prometheus, since, ports), "Prometheus to scrape every process", 60)
        deployed, failed = submit_training_jobs(stack, tmp / "not-a-model")
        for _ in range(2):  # twice: a labelled series is born in the first round and grows in the second
            send_round(stack)
            ended = time.time()
            until(lambda: scraped_since(prometheus, ended, ports), "a scrape after the round", 60)  # noqa: B023
        for job_id, state in ((deployed, "DEPLOYED"), (failed, "ERROR")):
            seen = until(lambda j=job_id: (s := job_state(stack, j))["state"] in ("DEPLOYED", "ERROR") and s,
                         f"job {job_id} to finish", 240)  # fmt: skip
            assert seen["state"] == state, seen
        until(lambda: prometheus.query('rewardgate_training_jobs{state="DEPLOYED"} == 1 and on() '
                                       'rewardgate_training_jobs{state="ERROR"} == 1'),
              "Prometheus to see the jobs' states", 60)  # fmt: skip
        yield Observed(prometheus, stack, since, ports)


def _panels() -> list[Any]:
    """Every panel's title, those of KNOWN_GAPS marked as expected to fail (strict: a fix shows as a failure)."""
    out: list[Any] = []
    for title in dict.fromkeys(q.panel for q in panel_queries()):
        gap = KNOWN_GAPS.get(title)
        out.append(pytest.param(title, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=gap))
                   if gap else title)  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("panel", _panels())
def test_every_dashboard_panel_shows_the_traffic(observed: Observed, panel: str) -> None:
    window = observed.window_s()
    values = []
    for query in (q for q in panel_queries() if q.panel == panel):
        expr = query.promql(window)
        series = observed.prometheus.query(expr)
        assert series, f"{query.name}: no series for {expr}"
        finite = [v for s in series if math.isfinite(v := float(s["value"][1]))]
        assert finite, f"{query.name}: only NaN or infinite values for {expr}: {series}"
        values += finite
    if panel not in AT_REST:
        assert any(v > 0 for v in values), f"{panel}: only zeros, though the test sent what it plots: {values}"


@pytest.mark.slow
def test_the_alerting_rules_evaluate_and_the_traffic_sets_off_its_alerts(observed: Observed) -> None:
    prometheus = observed.prometheus

    def evaluated() -> list[dict[str, Any]] | None:
        groups: list[dict[str, Any]] = prometheus.api("rules", type="alert")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return groups if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else None

    groups = until(evaluated, "every rule to be evaluated", 30)
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == {
        g["name"]: [r["alert"] for r in g["rules"]] for g in yaml.safe_load(ALERTS.read_text())["groups"]
    }
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    ours = {f"127.0.0.1:{port}" for port in observed.ports.values()}

    def active() -> set[str] | None:
        alerts = prometheus.api("alerts")["alerts"]  # an earlier run's targets on a reused server do not count
        names = {a["labels"]["alertname"] for a in alerts if a["labels"].get("instance", next(iter(ours))) in ours}
        return names if names >= EXPECTED_ALERTS else None

    assert until(active, f"{sorted(EXPECTED_ALERTS)} pending or firing", 30) == EXPECTED_ALERTS
