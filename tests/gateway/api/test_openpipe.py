"""OpenPipe's API at /api/v1 (gateway/api/openpipe/) over ASGI, wired as `rewardgate serve` wires it: the issue's
curl example, OpenPipe's logging default, report -> a log like any other, update-metadata/-tags by filters, the
offline judge in OpenPipe's shape, datasets and entries (bad entries reported, good ones added), models (a reward
model per slug with its training status; create, get, delete), OpenPipe's error envelope and the gateway key.
The real SDK runs against the same routes in test_openpipe_sdk.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from gateway.service.training import DEFAULT_LEARNING_RATE
from tests.gateway.fakes import MESSAGES, FakeUpstream, Gateway, chat_body, running_gateway
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio
API = "/api/v1"
PAIR = {
    "messages": [{"role": "user", "content": "Where is QB-1?"}, {"role": "assistant", "content": "It ships today."}],
    "rejected_message": {"role": "assistant", "content": "No idea."},
    "split": "TRAIN",
    "metadata": {"source": "test"},
}


async def ok(gw: Gateway, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    response = await gw.client.request(method, API + path, json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def refused(gw: Gateway, method: str, path: str, body: Any, status: int, code: str) -> dict[str, Any]:
    """An error in OpenPipe's envelope: `message` and tRPC's `code`, OpenAI's `error` beside them."""
    response = await gw.client.request(method, API + path, json=body)
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()
    assert error["code"] == code and error["message"] == error["error"]["message"] and error["message"]
    return error


# ---------------------------------------------------------------- chat completions


async def test_the_issue_curl_example_works_with_only_the_host_changed(gw: Gateway, upstream: FakeUpstream) -> None:
    body = {"model": "ok", "messages": [{"role": "user", "content": "Count to 10"}], "store": True, "n": 5,
            "metadata": {"prompt_id": "counting", "any_key": "any_value"}}  # fmt: skip
    answer = await ok(gw, "POST", "/chat/completions", body, headers={"op-criteria": '["tiny-rm"]'})
    scores = [c["rewardgate"]["score"] for c in answer["choices"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(c["criteria_results"]["tiny-rm"]["status"] == "success" for c in answer["choices"])
    log = await gw.store.get_log(answer["rewardgate"]["log_id"])
    assert log.metadata == {"prompt_id": "counting", "any_key": "any_value"} and len(log.candidates) == 5
    assert upstream.bodies[-1]["n"] == 5 and "metadata" not in upstream.bodies[-1]


async def test_openpipe_logs_by_default_unless_told_not_to(gw: Gateway) -> None:
    logged = await ok(gw, "POST", "/chat/completions", chat_body())
    assert (await gw.store.get_log(logged["rewardgate"]["log_id"])).completion_id == logged["id"]
    for headers, body in (({"op-log-request": "false"}, chat_body()), ({}, chat_body(store=False))):
        assert "rewardgate" not in await ok(gw, "POST", "/chat/completions", body, headers=headers)
    assert len((await gw.store.list_logs()).logs) == 1


async def test_chat_errors_come_in_both_envelopes(gw: Gateway) -> None:
    response = await gw.client.post(API + "/chat/completions", json=chat_body(), headers={"op-criteria": '["nope"]'})
    body = response.json()
    assert response.status_code == 400 and body["code"] == "BAD_REQUEST"
    assert "Criterion nope not found" in body["message"] and body["error"]["param"] == "op-criteria"
    headers = {"op-criteria": '["tiny-rm@x"]'}
    response = await gw.client.post(API + "/chat/completions", json=chat_body(), headers=headers)
    assert "Criterion version x not found for criterion tiny-rm" in response.json()["message"]


# ---------------------------------------------------------------- report, logs


async def test_a_report_is_stored_like_any_completion(gw: Gateway, upstream: FakeUpstream) -> None:
    request = {"model": "gpt-4o", "messages": MESSAGES, "metadata": {"prompt_id": "p1"}}
    response = {"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."},
                                                 "finish_reason": "stop"}]}  # fmt: skip
    tags = {"numberTag": 1, "booleanTag": True, "nullTag": None, "prompt_id": "tag"}
    body = {"requestedAt": 1000, "receivedAt": 1250, "reqPayload": request, "respPayload": response,
            "statusCode": 200, "tags": tags}  # fmt: skip
    answer = await ok(gw, "POST", "/report", body)
    assert answer["status"] == "ok"
    listed = (await gw.client.get("/v1/logs", params={"metadata.prompt_id": "p1"})).json()["data"]
    assert [log["id"] for log in listed] == [answer["rewardgate"]["log_id"]]
    log = listed[0]
    assert log["request"] == request and log["model"] == "gpt-4o" and log["completion_id"] == "chatcmpl-x"
    assert log["metadata"] == {"prompt_id": "p1", "numberTag": "1", "booleanTag": "true"}  # reqPayload's wins
    assert log["latencies"]["total_ms"] == 250 and log["candidates"][0]["message"]["content"] == "Hi."
    assert upstream.bodies == []  # nothing was called
    failed = await ok(gw, "POST", "/report", {"reqPayload": {"x": "invalid"}, "statusCode": 400})
    stored = await gw.store.get_log(failed["rewardgate"]["log_id"])
    assert stored.request == {"x": "invalid"} and stored.model == "" and stored.candidates[0].status == "error"
    empty = await ok(gw, "POST", "/report", {"reqPayload": None, "respPayload": None})
    assert (await gw.store.get_log(empty["rewardgate"]["log_id"])).candidates == ()
    await refused(gw, "POST", "/report", {"requestedAt": "yesterday"}, 400, "BAD_REQUEST")
    await refused(gw, "POST", "/report", {"tags": {"a": [1]}}, 400, "BAD_REQUEST")


async def test_the_latest_logged_call_in_openpipes_shape(gw: Gateway) -> None:
    assert await ok(gw, "GET", "/local-testing-only-get-latest-logged-call") is None
    answer = await ok(gw, "POST", "/chat/completions", chat_body(metadata={"prompt_id": "x"}))
    latest = await ok(gw, "GET", "/local-testing-only-get-latest-logged-call")
    assert latest["cacheHit"] is False and latest["statusCode"] == 200 and latest["metadata"] == {"prompt_id": "x"}
    assert latest["reqPayload"]["messages"] == MESSAGES
    assert latest["respPayload"]["choices"][0]["message"] == answer["choices"][0]["message"]


async def test_update_metadata_by_filters(gw: Gateway) -> None:
    async def report(model: str, prompt_id: str, completion_id: str | None = None) -> str:
        response = {"id": completion_id, "choices": []} if completion_id else None
        body = {"reqPayload": {"model": model, "metadata": {"prompt_id": prompt_id}}, "respPayload": response}
        return str((await ok(gw, "POST", "/report", body))["rewardgate"]["log_id"])

    a, b, c = await report("m1", "p"), await report("m2", "p"), await report("m1", "q", "chatcmpl-7")
    patch = {"filters": [{"field": "metadata.prompt_id", "equals": "p"}], "metadata": {"prompt_id": "z", "k": 1}}
    assert await ok(gw, "POST", "/logs/update-metadata", patch) == {"matchedLogs": 2}
    assert [(await gw.store.get_log(x)).metadata for x in (a, b)] == [{"prompt_id": "z", "k": "1"}] * 2
    both = [{"field": "model", "equals": "m1"}, {"field": "tags.prompt_id", "equals": "z"}]
    assert await ok(gw, "POST", "/logs/update-tags", {"filters": both, "tags": {"k": None}}) == {"matchedLogs": 1}
    assert (await gw.store.get_log(a)).metadata == {"prompt_id": "z"}
    by_id = {"filters": [{"field": "completionId", "equals": "chatcmpl-7"}], "metadata": {"seen": True}}
    assert await ok(gw, "POST", "/logs/update-metadata", by_id) == {"matchedLogs": 1}
    assert (await gw.store.get_log(c)).metadata == {"prompt_id": "q", "seen": "true"}
    nothing = {"filters": [{"field": "metadata.prompt_id", "equals": "none"}], "metadata": {"x": None}}
    assert await ok(gw, "POST", "/logs/update-metadata", nothing) == {"matchedLogs": 0}
    bad = {"filters": [{"field": "input", "equals": "x"}], "metadata": {}}
    error = await refused(gw, "POST", "/logs/update-metadata", bad, 400, "BAD_REQUEST")
    assert error["error"]["param"] == "filters[0].field"
    await refused(gw, "POST", "/logs/update-metadata", {"filters": []}, 400, "BAD_REQUEST")


# ---------------------------------------------------------------- judge


async def test_judge_in_openpipes_shape(gw: Gateway) -> None:
    output = {"role": "assistant", "content": "Hi"}
    body = {"criterion_id": "tiny-rm", "input": {"messages": MESSAGES}, "output": output}
    judged = await ok(gw, "POST", "/criteria/judge", body)
    assert isinstance(judged["score"], float) and judged["explanation"] is None  # a reward model explains nothing
    assert judged["usage"]["total_tokens"] == 0 and judged["criterion"] == {"slug": "tiny-rm", "version": "v1",
                                                                             "kind": "reward_model"}  # fmt: skip
    v1 = await gw.client.post("/v1/criteria/judge", json=body)
    assert v1.json()["score"] == judged["score"]  # the same judge as /v1's
    error = await refused(gw, "POST", "/criteria/judge", {**body, "criterion_id": "nope"}, 400, "BAD_REQUEST")
    assert "Criterion nope not found" in error["message"]


# ---------------------------------------------------------------- datasets


async def test_datasets_and_entries(gw: Gateway) -> None:
    created = await ok(gw, "POST", "/datasets", {"name": "Test Dataset"})  # OpenPipe's free-form names
    assert created["object"] == "dataset" and created["dataset_entry_count"] == 0 and created["fine_tune_count"] == 0
    entries = [PAIR, {"messages": PAIR["messages"]}, {**PAIR, "split": "VALID"}, PAIR]  # no pair, a bad split
    added = await ok(gw, "POST", f"/datasets/{created['id']}/entries", {"entries": entries})
    assert added["object"] == "dataset.entries.creation" and added["entries_created"] == 2
    assert [e["entry_index"] for e in added["errors"]["data"]] == [1, 2]
    assert "rejected_message" in added["errors"]["data"][0]["message"]
    listed = await ok(gw, "GET", "/datasets")
    assert [(d["name"], d["dataset_entry_count"]) for d in listed["data"]] == [("Test Dataset", 2)]
    await refused(gw, "POST", "/datasets", {"name": "Test Dataset"}, 409, "CONFLICT")
    await refused(gw, "POST", "/datasets", {"name": " padded"}, 400, "BAD_REQUEST")
    await refused(gw, "POST", "/datasets", {"name": "x", "extra": 1}, 400, "BAD_REQUEST")
    await refused(gw, "POST", f"/datasets/{created['id']}/entries", {"entries": "x"}, 400, "BAD_REQUEST")
    assert await ok(gw, "DELETE", f"/datasets/{created['id']}") == {"id": created["id"], "object": "dataset",
                                                                     "deleted": True}  # fmt: skip
    await refused(gw, "DELETE", f"/datasets/{created['id']}", None, 404, "NOT_FOUND")
    await refused(gw, "POST", "/datasets/ds_missing/entries", {"entries": [PAIR]}, 404, "NOT_FOUND")


# ---------------------------------------------------------------- models


@pytest.fixture
async def parked(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    """A gateway that stores jobs without training them, over its own models directory (one test deletes)."""
    models = tmp_path / "models"
    save_reward_model(models / "cli-rm" / "v1", "cli-rm", "v1", seed=0)
    settings = GatewaySettings(jobs_dir=str(tmp_path / "jobs"), training_worker=False)
    async with running_gateway(tmp_path, upstream, models, settings=settings) as gateway:
        yield gateway


async def test_models_are_reward_models_with_their_training_status(parked: Gateway) -> None:
    gw = parked
    deployed = await ok(gw, "GET", "/models/cli-rm")  # trained by the CLI: no job, deployed
    assert deployed["openpipe"]["status"] == "DEPLOYED" and deployed["rewardgate"] == {"job_id": None, "version": "v1"}
    assert deployed["contextWindow"] > 0 and deployed["capabilities"] == [] and deployed["owned_by"] == "rewardgate"
    dataset = await ok(gw, "POST", "/datasets", {"name": "pairs"})
    await ok(gw, "POST", f"/datasets/{dataset['id']}/entries", {"entries": [PAIR]})
    config = {"provider": "openpipeReward", "baseModel": "minilm",
              "hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 2, "num_epochs": 3}}  # fmt: skip
    body = {"datasetId": dataset["id"], "slug": "new-rm", "trainingConfig": config}
    model = await ok(gw, "POST", "/models", body)
    assert model["id"] == "new-rm" and model["openpipe"]["status"] == "PENDING"
    assert model["openpipe"]["hyperparameters"] == {"batch_size": 4, "learning_rate_multiplier": 2, "num_epochs": 3}
    job = (await gw.client.get(f"/v1/reward-models/{model['rewardgate']['job_id']}")).json()
    assert job["hyperparameters"] == {"batch_size": 4, "learning_rate": 2 * DEFAULT_LEARNING_RATE, "epochs": 3}
    assert [m["id"] for m in (await ok(gw, "GET", "/models"))["data"]] == ["new-rm", "cli-rm"]
    assert (await ok(gw, "GET", "/datasets"))["data"][0]["fine_tune_count"] == 1
    assert (await ok(gw, "GET", "/models/new-rm"))["openpipe"]["datasetId"] == dataset["id"]
    error = await refused(gw, "POST", "/models", {**body, "trainingConfig": {**config, "provider": "openpipe"}},
                          400, "BAD_REQUEST")  # fmt: skip
    assert "openpipeReward" in error["message"]
    await refused(gw, "POST", "/models", {**body, "datasetId": "ds_missing"}, 404, "NOT_FOUND")
    await refused(gw, "GET", "/models/nope", None, 404, "NOT_FOUND")


async def test_deleting_a_model_removes_its_versions_and_jobs(parked: Gateway, tmp_path: Path) -> None:
    gw = parked
    assert await ok(gw, "DELETE", "/models/cli-rm") == {"id": "cli-rm", "object": "model", "deleted": True}
    assert not (tmp_path / "models" / "cli-rm").exists()
    await refused(gw, "DELETE", "/models/cli-rm", None, 404, "NOT_FOUND")
    await refused(gw, "DELETE", "/models/%2E%2E", None, 404, "NOT_FOUND")  # never a path outside the models directory
    response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers={"op-criteria": '["cli-rm"]'})
    for _ in range(300):  # the reward-model listing is cached for 2 s
        if response.status_code == 400:
            break
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers={"op-criteria": '["cli-rm"]'})
    assert response.status_code == 400


async def test_the_gateway_key_guards_the_mount(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> None:
    settings = GatewaySettings(api_keys=("gw-key",), jobs_dir=str(tmp_path / "jobs"), training_worker=False)
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        response = await gw.client.get(API + "/datasets")
        assert response.status_code == 401 and response.json()["code"] == "UNAUTHORIZED"
        authorized = await gw.client.get(API + "/datasets", headers={"Authorization": "Bearer gw-key"})
        assert authorized.status_code == 200 and json.loads(authorized.text) == {"object": "list", "data": []}
