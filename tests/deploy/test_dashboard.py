"""The Grafana dashboard queries only metrics and labels the code exports, and shows every one of them. The queries
come from common.panel_queries(), the same list test_prometheus.py runs in a real Prometheus (Grafana itself does
not install here)."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.common import (
    DASHBOARD,
    ROOT,
    TARGET_LABELS,
    exported_series,
    panel_queries,
    parse_promql,
)


def test_promql_parser_finds_metrics_matchers_and_grouping() -> None:
    query = parse_promql(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{status=~"[45]..", route!="x"}[$__rate_interval])))'
        " / clamp_min(sum(rate(b_total[5m])) without (pod), 1e-9)"
    )
    assert query.metrics == ["a_bucket", "b_total"]
    assert query.matched == {"a_bucket": {"status", "route"}, "b_total": set()}
    assert query.grouped == {"le", "route", "pod"}
    with pytest.raises(AssertionError, match="unknown function"):
        parse_promql("ratee(a_total[5m])")


def test_every_dashboard_query_names_only_exported_metrics_and_labels() -> None:
    series = exported_series()
    queries = panel_queries()
    assert len(queries) >= 20
    for panel_query in queries:
        where = f"panel {panel_query.name}: {panel_query.expr}"
        query = parse_promql(panel_query.expr)
        assert query.metrics, f"{where}: no metric"
        unknown = [m for m in query.metrics if m not in series]
        assert not unknown, f"{where}: {unknown} are not exported (exported: {sorted(series)})"
        known = set().union(*(series[m].labels for m in query.metrics)) | TARGET_LABELS
        for metric, labels in query.matched.items():
            assert labels <= series[metric].labels | TARGET_LABELS, f"{where}: {metric} has no label {labels}"
        assert query.grouped <= known, f"{where}: grouping by {query.grouped - known}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", panel_query.legend))
        assert legend <= query.grouped, f"{where}: legend uses {legend - query.grouped}, not kept by the query"


def test_the_dashboard_shows_every_exported_metric() -> None:
    used = {m for q in panel_queries() for m in parse_promql(q.expr).metrics}
    series = exported_series()
    shown = {series[m].family for m in used if m in series}  # unknown names: the test above
    missing = sorted({s.family for s in series.values()} - shown)
    assert not missing, f"no dashboard panel for {missing}: add one to {DASHBOARD.relative_to(ROOT)}"


def test_the_dashboard_is_a_well_formed_provisionable_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "rewardgate" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "latency", "overhead", "candidates", "criterion score", "criterion errors", "queue",
                  "batch size", "training jobs"):  # fmt: skip
        assert topic in titles, f"the dashboard lacks a {topic!r} panel"
