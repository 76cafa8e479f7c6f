"""OpenPipe's request headers on POST /v1/chat/completions (gateway/api/chat.py) and the response cache behind
op-cache (gateway/service/cache.py), end to end over ASGI with the fake upstream, the real store and the embedded
reward server: op-log-request stores (and wins over `store`), op-tags merge under `metadata` with the same rules,
op-cache answers an identical request without an upstream call and logs it as a hit, and a different n, another
resolved version of a reward model, readOnly and writeOnly behave as OpenPipe documents them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.fakes import FakeUpstream, Gateway, chat_body
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:  # per test: one test adds a version
    save_reward_model(tmp_path / "models" / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    return tmp_path / "models"


async def post(gw: Gateway, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = await gw.client.post("/v1/chat/completions", json=chat_body(**body), headers=headers or {})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def lookups(gw: Gateway, outcome: str) -> float:
    return gw.metrics.registry.get_sample_value("rewardgate_cache_lookups_total", {"outcome": outcome}) or 0.0


# ---------------------------------------------------------------- op-log-request, op-tags


async def test_op_log_request_stores_and_wins_over_store(gw: Gateway) -> None:
    stored = await post(gw, {"op-log-request": "true"})
    assert (await gw.store.get_log(stored["rewardgate"]["log_id"])).completion_id == stored["id"]
    assert "rewardgate" not in await post(gw, {"op-log-request": "false"}, store=True)
    assert "rewardgate" not in await post(gw)  # /v1 keeps OpenAI's default: not stored
    assert len((await gw.store.list_logs()).logs) == 1
    bad = await gw.client.post("/v1/chat/completions", json=chat_body(), headers={"op-log-request": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "op-log-request"


async def test_op_tags_merge_under_metadata_with_its_rules(gw: Gateway) -> None:
    tags = {"prompt_id": "from-tags", "shared": "tags", "n": 1, "flag": True, "gone": None, "$sdk": "python"}
    headers = {"op-tags": json.dumps(tags), "op-log-request": "true"}
    body = await post(gw, headers, metadata={"shared": "body"})
    expected = {"prompt_id": "from-tags", "shared": "body", "n": "1", "flag": "true", "$sdk": "python"}
    assert body["rewardgate"]["metadata"] == expected
    for value, param in (("not json", "op-tags"), ("[1]", "op-tags"), ('{"a": [1]}', "op-tags"),
                         (json.dumps({f"k{i}": "v" for i in range(17)}), "metadata.k16")):  # fmt: skip
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers={"op-tags": value})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, value
    assert len((await gw.store.list_logs()).logs) == 1  # a refused request stores nothing


# ---------------------------------------------------------------- op-cache


async def test_a_best_of_n_hit_costs_no_upstream_call_and_is_logged_as_a_hit(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    headers = {**CRITERIA, "op-cache": "readWrite"}
    first = await post(gw, headers, n=3, store=True)
    assert first["rewardgate"]["cache_hit"] is False and lookups(gw, "miss") == 1
    calls = len(upstream.bodies)
    second = await post(gw, {**headers, "op-best-only": "true"}, n=3, store=True, metadata={"run": "2"})
    assert len(upstream.bodies) == calls  # answered from the cache
    assert second["rewardgate"]["cache_hit"] is True and lookups(gw, "hit") == 1
    assert [c["message"] for c in second["choices"]] == [first["choices"][0]["message"]]  # best-only still applies
    assert second["choices"][0]["criteria_results"] == first["choices"][0]["criteria_results"]
    log = await gw.store.get_log(second["rewardgate"]["log_id"])
    assert log.cache_hit and log.metadata == {"run": "2"} and log.latencies.upstream_ms == 0
    assert [c.message for c in log.candidates] == [c["message"] for c in first["choices"]]  # every candidate
    assert [c.score for c in log.candidates] == [c["rewardgate"]["score"] for c in first["choices"]]
    assert log.criteria_versions == {"tiny-rm": "v1"} and log.completion_id == first["id"]
    assert not (await gw.store.get_log(first["rewardgate"]["log_id"])).cache_hit
    streamed = await gw.client.post("/v1/chat/completions", json=chat_body(n=3, stream=True), headers=headers)
    assert streamed.status_code == 200 and len(upstream.bodies) == calls  # a hit streams as chunks too
    assert '"cache_hit": true' in streamed.text.replace('":true', '": true')
    scrape = (await gw.client.get("/metrics")).text
    assert 'rewardgate_cache_lookups_total{outcome="hit"} 2.0' in scrape
    assert "rewardgate_cache_writes_total 1.0" in scrape


async def test_another_n_or_a_new_model_version_is_a_miss(
    gw: Gateway, upstream: FakeUpstream, models_dir: Path
) -> None:
    headers = {**CRITERIA, "op-cache": "readWrite"}
    await post(gw, headers, n=2)
    await post(gw, headers, n=3)  # OpenPipe's own cache ignores n; this one does not
    assert lookups(gw, "miss") == 2 and len(upstream.bodies) == 2
    save_reward_model(models_dir / "tiny-rm" / "v2", "tiny-rm", "v2", seed=1)
    for _ in range(400):  # the criteria's listing of reward models is cached for 2 s: poll until v2 resolves
        listed = (await gw.client.get("/v1/models")).json()["data"]
        if any(m["id"] == "tiny-rm@v2" and m["rewardgate"]["latest"] for m in listed):
            break
        await asyncio.sleep(0.01)
    replay = await post(gw, headers, n=2)
    while replay["rewardgate"]["criteria"] != {"tiny-rm": "v2"}:  # until the catalog itself has refreshed
        await asyncio.sleep(0.05)
        replay = await post(gw, headers, n=2)
    assert replay["rewardgate"]["cache_hit"] is False  # v2 scores: never v1's stale ranking
    pinned = await post(gw, {**headers, "op-criteria": '["tiny-rm@v1"]'}, n=2)
    assert pinned["rewardgate"]["cache_hit"] is True  # v1 pinned: its ranking is still good


async def test_read_only_and_write_only(gw: Gateway, upstream: FakeUpstream) -> None:
    for _ in range(2):  # a miss of a pass-through is the upstream's answer as it came
        assert "rewardgate" not in await post(gw, {"op-cache": "readOnly"})  # never written
    assert "rewardgate" not in await post(gw, {"op-cache": "writeOnly"})  # written, not read
    assert "rewardgate" not in await post(gw, {"op-cache": "writeOnly"})
    hit = await post(gw, {"op-cache": "READONLY"}, store=True)  # any case
    assert hit["rewardgate"]["cache_hit"] is True and len(upstream.bodies) == 4
    assert hit["choices"] == upstream.responses[-1]["choices"]  # the last write's answer
    assert (await gw.store.get_log(hit["rewardgate"]["log_id"])).cache_hit
    for value in ("false", "off"):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers={"op-cache": value})
        assert response.status_code == (200 if value == "false" else 400)
    assert response.json()["error"]["param"] == "op-cache"
