"""The stored logs through the API (gateway.api.logs): what best-of-N and pass-through requests store, read back,
listed by metadata, model and time, paged, exported as JSONL and as pairs, and patched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.formats import parse_line
from tests.gateway.fakes import (
    ANSWERS,
    Gateway,
    chat_body,
    two_versions,
)

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_versions(tmp_path_factory.mktemp("models"))


chat = chat_body


# ---------------------------------------------------------------- the log store


async def test_store_true_persists_everything_and_get_returns_it(gw: Gateway) -> None:
    body = chat("solo:fail-second", n=3, store=True, metadata={"team": "support", "ticket": "42"})
    response = await gw.client.post("/v1/chat/completions", json=body, headers=CRITERIA)
    info = response.json()["rewardgate"]
    assert info["log_id"].startswith("log_") and info["metadata"] == {"team": "support", "ticket": "42"}
    log = (await gw.client.get(f"/v1/logs/{info['log_id']}")).json()
    assert log["request"] == body and log["model"] == "solo:fail-second"
    assert log["criteria_versions"] == {"tiny-rm": "v2"} and log["metadata"] == info["metadata"]
    assert all(log["latencies"][k] > 0 for k in ("upstream_ms", "scoring_ms", "total_ms"))
    stored = log["candidates"]
    choices = response.json()["choices"]
    assert [c["rank"] for c in stored] == [0, 1, 2]
    assert [c["index"] for c in stored] == [c["rewardgate"]["candidate_index"] for c in choices]
    assert [c["status"] for c in stored] == ["ok", "ok", "error"] and "upstream_error" in stored[2]["error"]
    for record, choice in zip(stored[:2], choices, strict=False):
        assert record["message"] == choice["message"] and record["score"] == choice["rewardgate"]["score"]
        assert record["criteria_results"] == choice["criteria_results"]
    missing = await gw.client.get("/v1/logs/log_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "log_not_found"


async def test_list_filter_paginate_export_pairs_and_patch(gw: Gateway) -> None:
    ids = []
    for i in range(3):
        team = "a" if i < 2 else "b"
        body = chat(n=3, store=True, metadata={"team": team, "i": str(i)})
        ids.append(
            (await gw.client.post("/v1/chat/completions", json=body, headers=CRITERIA)).json()["rewardgate"]["log_id"]
        )
    plain = (await gw.client.post("/v1/chat/completions", json=chat(store=True))).json()  # pass-through, stored
    assert plain["rewardgate"]["log_id"].startswith("log_") and plain["choices"][0]["message"]["content"] in ANSWERS

    page = (await gw.client.get("/v1/logs", params={"metadata.team": "a", "limit": "1"})).json()
    assert [log["id"] for log in page["data"]] == [ids[1]] and page["has_more"] is True
    page2 = (
        await gw.client.get("/v1/logs", params={"metadata.team": "a", "limit": "1", "cursor": page["next_cursor"]})
    ).json()
    assert [log["id"] for log in page2["data"]] == [ids[0]] and page2["next_cursor"] is None
    assert len((await gw.client.get("/v1/logs", params={"model": "ok"})).json()["data"]) == 4
    assert (await gw.client.get("/v1/logs", params={"since": "2999-01-01T00:00:00Z"})).json()["data"] == []
    assert (await gw.client.get("/v1/logs", params={"limit": "x"})).status_code == 400
    assert (await gw.client.get("/v1/logs", params={"cursor": "???"})).status_code == 400

    export = await gw.client.get("/v1/logs/export", params={"metadata.team": "b"})
    lines = export.text.splitlines()
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["id"] for line in lines] == [ids[2]]

    pairs = (await gw.client.get("/v1/logs/export/pairs")).text.splitlines()
    assert len(pairs) == 3  # the pass-through log has one unscored candidate: no pair
    for line in pairs:
        pair = parse_line(line)
        assert pair.chosen.content in ANSWERS and pair.rejected.content in ANSWERS
        assert pair.metadata["chosen_score"] > pair.metadata["rejected_score"]

    patched = await gw.client.patch(f"/v1/logs/{ids[0]}/metadata", json={"metadata": {"team": None, "label": "good"}})
    assert patched.status_code == 200 and patched.json()["metadata"] == {"i": "0", "label": "good"}
    found = (await gw.client.get("/v1/logs", params={"metadata.label": "good"})).json()["data"]
    assert [log["id"] for log in found] == [ids[0]]
    bad = await gw.client.patch(f"/v1/logs/{ids[0]}/metadata", json={"metadata": {"x": 1}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "metadata.x"
