"""POST /v1/chat/completions and GET /v1/models end to end over ASGI (and real HTTP for early stream closing): a fake
OpenAI-compatible upstream on 127.0.0.1 behind the REAL router and OpenAICompatibleProvider, the REAL SQLite store in
tmp_path, and the REAL reward server embedded with tiny models (tiny-rm v1 and v2). Nothing inside the gateway is
mocked: the app is wired as `rewardgate serve` wires it.
"""

from __future__ import annotations

import asyncio
import math
import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from gateway.config import GatewaySettings
from tests.gateway.fakes import (
    ANSWERS,
    KEY,
    MESSAGES,
    FakeUpstream,
    Gateway,
    chat_body,
    failing_scores,
    running_gateway,
    two_versions,
    until,
)

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_versions(tmp_path_factory.mktemp("models"))


chat = chat_body


async def raw_scores(gw: Gateway, model: str, answers: list[str]) -> list[float]:
    conversations = [[*MESSAGES, {"role": "assistant", "content": a}] for a in answers]
    assert gw.reward is not None
    response = await gw.reward.post("/v1/score", json={"model": model, "conversations": conversations})
    return [d["score"] for d in response.json()["data"]]


# ---------------------------------------------------------------- pass-through


async def test_passthrough_json_is_the_upstreams_answer_and_gateway_fields_stay_home(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat(seed=7, vendor_x={"a": 1}, metadata={"k": "v"}))
    assert response.status_code == 200
    assert response.json() == upstream.responses[-1]
    assert upstream.bodies == [{"model": "ok", "messages": MESSAGES, "seed": 7, "vendor_x": {"a": 1}}]
    assert (await gw.store.list_logs()).logs == ()  # store not requested: nothing stored


async def test_passthrough_stream_relays_the_sse_bytes(gw: Gateway, upstream: FakeUpstream) -> None:
    async with gw.client.stream("POST", "/v1/chat/completions", json=chat("stream", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert received == b"".join(upstream.sent)
    assert upstream.bodies[-1]["stream"] is True


async def test_upstream_errors_keep_their_status_streaming_or_not(gw: Gateway) -> None:
    for body in (chat("always-500"), chat("always-500", stream=True)):
        response = await gw.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 500
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "upstream_error"
        assert KEY not in response.text  # provider keys are redacted from upstream messages


async def test_stream_client_leaving_early_closes_the_upstream(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    # Real HTTP: ASGITransport buffers whole responses, so an early close needs a socket.
    async with running_gateway(tmp_path, upstream, models_dir) as gw:
        server = uvicorn.Server(uvicorn.Config(gw.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve())
        try:
            await until(lambda: server.started)
            port = server.servers[0].sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                body = chat("hold-stream", stream=True)
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for chunk in response.aiter_bytes():
                        assert b"Hel" in chunk
                        break  # the client stops after the first chunk; the upstream is still holding
            await until(lambda: upstream.cancelled == 1)
        finally:
            server.should_exit = True
            await task


# ---------------------------------------------------------------- best-of-N


async def test_best_of_n_ranks_by_the_reward_servers_scores(gw: Gateway, upstream: FakeUpstream) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat(n=4), headers=CRITERIA)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(upstream.bodies) == 1 and upstream.bodies[0]["n"] == 4  # native n: one upstream call
    produced = [c["message"]["content"] for c in upstream.responses[0]["choices"]]
    raw = await raw_scores(gw, "tiny-rm@v2", produced)  # the newest version scores `tiny-rm`
    expected = sorted(range(4), key=lambda i: -raw[i])
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]  # index = rank position
    assert [c["rewardgate"]["candidate_index"] for c in choices] == expected
    for choice in choices:
        k = choice["rewardgate"]["candidate_index"]
        result = choice["criteria_results"]["tiny-rm"]
        assert result["status"] == "success" and result["version"] == "v2"
        assert math.isclose(result["score"], raw[k], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(choice["rewardgate"]["score"], 1 / (1 + math.exp(-raw[k])), rel_tol=1e-5)
        assert choice["message"]["content"] == produced[k] and choice["finish_reason"] == "stop"
    assert body["rewardgate"]["criteria"] == {"tiny-rm": "v2"} and body["rewardgate"]["log_id"] is None
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 16,
        "total_tokens": 19,
        "criteria": {
            "criteria": 1,
            "scored_candidates": 4,
            "criterion_calls": 4,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        },
    }


async def test_pinned_version_and_best_only(gw: Gateway, upstream: FakeUpstream) -> None:
    headers = {"op-criteria": '["tiny-rm@v1"]', "op-best-only": "true"}
    response = await gw.client.post("/v1/chat/completions", json=chat(n=3), headers=headers)
    body = response.json()
    produced = [c["message"]["content"] for c in upstream.responses[0]["choices"]]
    raw = await raw_scores(gw, "tiny-rm@v1", produced)
    (best,) = body["choices"]
    assert best["rewardgate"]["candidate_index"] == max(range(3), key=lambda i: raw[i])
    assert best["criteria_results"]["tiny-rm"]["version"] == "v1" and body["rewardgate"]["criteria"] == {
        "tiny-rm": "v1"
    }
    assert body["rewardgate"]["best_only"] is True


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ('["no-such-rm"]', "'no-such-rm'"),
        ('["tiny-rm@v9"]', "'tiny-rm@v9'"),
        ("tiny-rm", "not valid JSON"),
        ('["tiny-rm", 3]', "op-criteria[1]"),
    ],
)
async def test_bad_criteria_fail_with_400_before_the_upstream_is_called(
    gw: Gateway, upstream: FakeUpstream, header: str, named: str
) -> None:
    body = chat(n=2, store=True, metadata={"k": "v"})
    response = await gw.client.post("/v1/chat/completions", json=body, headers={"op-criteria": header})
    assert response.status_code == 400
    error = response.json()["error"]
    assert named in error["message"] and error["param"] == "op-criteria"
    assert upstream.bodies == [] and (await gw.store.list_logs()).logs == ()


@pytest.mark.parametrize(("extra", "param"), [({"n": 0}, "n"), ({"n": 17}, "n")])
async def test_n_out_of_range_with_criteria_is_400(
    gw: Gateway, upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat(**extra), headers=CRITERIA)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert upstream.bodies == []


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": {"nested": "object"}}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"messages": []}, "messages"),
        ({"n": 100000}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "abc"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 99}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
        ({"stream": "yes"}, "stream"),
    ],
)
@pytest.mark.parametrize("criteria", [False, True], ids=["passthrough", "best-of-n"])
async def test_every_field_outside_openais_rules_is_a_400_naming_it_before_any_upstream_call(
    gw: Gateway, upstream: FakeUpstream, change: dict[str, Any], param: str, criteria: bool
) -> None:
    body = {**chat(n=2, store=True), **change}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=CRITERIA if criteria else {})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param + ": ")
    assert upstream.bodies == [] and (await gw.store.list_logs()).logs == ()


async def test_valid_openai_shapes_and_unknown_fields_pass_through_as_received(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}, {"type": "video_x"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]  # fmt: skip
    body = {"model": "ok", "messages": messages, "temperature": 1, "stop": "x", "vendor_extra": {"keep": True}}
    response = await gw.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert upstream.bodies == [body]  # byte for byte what the client sent: `temperature: 1` stays an integer


async def test_the_providers_refusal_of_the_gateways_key_is_a_502_not_the_clients_401(gw: Gateway) -> None:
    for headers in ({}, CRITERIA):
        response = await gw.client.post("/v1/chat/completions", json=chat("auth-401", n=2), headers=headers)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] in ("upstream_auth_error", "all_candidates_failed") and KEY not in response.text
        assert "refused the gateway's credentials" in error["message"]


async def test_a_field_that_would_choose_the_upstream_is_named_in_param(gw: Gateway, upstream: FakeUpstream) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat(api_base="http://evil.example"))
    assert response.status_code == 400 and response.json()["error"]["param"] == "api_base"
    assert upstream.bodies == []


async def test_op_criteria_is_read_as_utf8_so_an_unknown_id_is_echoed_intact(gw: Gateway) -> None:
    header = '["tëst-rm"]'.encode()  # as a client sends it: UTF-8 bytes
    response = await gw.client.post("/v1/chat/completions", json=chat(n=2), headers={"op-criteria": header})
    assert response.status_code == 400 and "'tëst-rm'" in response.json()["error"]["message"]
    bad = await gw.client.post("/v1/chat/completions", json=chat(n=2), headers={"op-criteria": b'["\xff"]'})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "op-criteria"


async def test_a_body_that_is_not_utf8_says_where(gw: Gateway) -> None:
    response = await gw.client.post("/v1/chat/completions", content=b'{"model": "\xff"}')
    assert response.status_code == 400
    assert "not valid UTF-8 (byte 11: 0xff)" in response.json()["error"]["message"]


async def test_a_failed_candidate_is_reported_last_not_hidden(gw: Gateway, upstream: FakeUpstream) -> None:
    # `solo` has no native n: three parallel calls, the second of which the upstream refuses.
    response = await gw.client.post("/v1/chat/completions", json=chat("solo:fail-second", n=3), headers=CRITERIA)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["finish_reason"] for c in choices] == ["stop", "stop", "error"]
    failed = choices[2]
    assert failed["error"]["status"] == 400 and failed["error"]["code"] == "upstream_error"
    assert failed["message"]["content"] is None and failed["criteria_results"] == {}
    assert KEY not in response.text
    assert response.json()["usage"]["criteria"]["scored_candidates"] == 2


async def test_reward_server_failures_give_error_results_not_failed_requests(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    async with running_gateway(tmp_path / "a", upstream, models_dir, wrap_reward=failing_scores) as gw:
        response = await gw.client.post("/v1/chat/completions", json=chat(n=2), headers=CRITERIA)
        assert response.status_code == 200
        for choice in response.json()["choices"]:
            result = choice["criteria_results"]["tiny-rm"]
            assert result["status"] == "error" and result["errorCode"] == "reward_server_error"
            assert choice["rewardgate"]["score"] is None and choice["rewardgate"]["criteria_errors"] == 1
        assert "rewardgate_criterion_errors_total" in (await gw.client.get("/metrics")).text
    with socket.socket() as s:  # a port nobody listens on: the reward server is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with running_gateway(tmp_path / "b", upstream, models_dir, reward_url=down) as gw:
        response = await gw.client.post("/v1/chat/completions", json=chat(n=2), headers=CRITERIA)
        assert response.status_code == 200
        codes = {c["criteria_results"]["tiny-rm"]["errorCode"] for c in response.json()["choices"]}
        assert codes == {"reward_server_unavailable"}


async def test_bad_metadata_is_400_naming_the_key_and_nothing_is_called(gw: Gateway, upstream: FakeUpstream) -> None:
    body = chat(n=2, store=True, metadata={"ok": "fine", "bad": 3})
    for headers in (CRITERIA, {}):
        response = await gw.client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 400 and response.json()["error"]["param"] == "metadata.bad"
    assert upstream.bodies == [] and (await gw.store.list_logs()).logs == ()


async def test_models_lists_upstream_and_reward_models_with_versions(gw: Gateway) -> None:
    data = (await gw.client.get("/v1/models")).json()["data"]
    assert [m["id"] for m in data] == ["fake:ok", "gpt-4o-mini", "tiny-rm@v1", "tiny-rm@v2"]
    rm = {m["id"]: m["rewardgate"] for m in data if "rewardgate" in m}
    assert rm["tiny-rm@v2"] == {"kind": "reward_model", "slug": "tiny-rm", "version": "v2", "latest": True}
    assert rm["tiny-rm@v1"]["latest"] is False


async def test_metrics_names(gw: Gateway) -> None:
    await gw.client.post("/v1/chat/completions", json=chat(n=2), headers=CRITERIA)
    await gw.client.post("/v1/chat/completions", json=chat())
    text = (await gw.client.get("/metrics")).text
    for name in (
        'rewardgate_requests_total{route="/v1/chat/completions",status="200"} 2.0',
        "rewardgate_request_duration_seconds_bucket",
        'rewardgate_overhead_seconds_count{mode="best_of_n"} 1.0',
        'rewardgate_overhead_seconds_count{mode="passthrough"} 1.0',
        'rewardgate_upstream_duration_seconds_count{provider="fake"} 2.0',
        'rewardgate_candidates_total{outcome="generated"} 2.0',
        'rewardgate_candidates_total{outcome="failed"} 0.0',
        'rewardgate_criterion_duration_seconds_count{criterion="tiny-rm"} 1.0',
        "rewardgate_scoring_duration_seconds_count 1.0",
    ):
        assert name in text, name


@pytest.mark.parametrize("model", ["always-500", "solo:always-500"], ids=["native-n", "parallel"])
async def test_when_every_candidate_fails_the_failures_are_still_counted(gw: Gateway, model: str) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat(model, n=3), headers=CRITERIA)
    assert response.status_code == 500 and response.json()["error"]["code"] == "all_candidates_failed"
    text = (await gw.client.get("/metrics")).text
    provider = model.partition(":")[0] if ":" in model else "fake"
    calls = 1 if provider == "fake" else 3  # native n: one upstream call for all three
    assert 'rewardgate_candidates_total{outcome="failed"} 3.0' in text
    assert 'rewardgate_candidates_total{outcome="generated"} 0.0' in text
    assert f'rewardgate_upstream_duration_seconds_count{{provider="{provider}"}} {calls}.0' in text


# ---------------------------------------------------------------- the real openai client, unchanged


async def test_the_openai_package_works_unchanged(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> None:
    settings = GatewaySettings(api_keys=("gw-key",))
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app))
        client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="gw-key", http_client=http)
        async with client:
            ranked = await client.chat.completions.create(
                model="ok",
                messages=MESSAGES,
                n=3,
                extra_headers=CRITERIA,  # type: ignore[arg-type]
            )
            assert [c.index for c in ranked.choices] == [0, 1, 2]
            extra = [c.model_extra or {} for c in ranked.choices]
            assert sorted(e["rewardgate"]["candidate_index"] for e in extra) == [0, 1, 2]
            scores = [e["rewardgate"]["score"] for e in extra]
            assert scores == sorted(scores, reverse=True)
            assert extra[0]["criteria_results"]["tiny-rm"]["version"] == "v2"

            plain = await client.chat.completions.create(model="ok", messages=MESSAGES)  # type: ignore[arg-type]
            assert plain.choices[0].message.content in ANSWERS and plain.usage is not None

            stream = await client.chat.completions.create(model="stream", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            assert text == "Hello!"


async def test_op_best_only_takes_true_or_false_and_refuses_anything_else(gw: Gateway, upstream: FakeUpstream) -> None:
    for value, choices in (("TRUE", 1), (" false ", 2)):
        response = await gw.client.post(
            "/v1/chat/completions", json=chat(n=2), headers={**CRITERIA, "op-best-only": value}
        )
        assert response.status_code == 200 and len(response.json()["choices"]) == choices
    calls = len(upstream.bodies)
    response = await gw.client.post("/v1/chat/completions", json=chat(n=2), headers={**CRITERIA, "op-best-only": "yes"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "op-best-only"
    assert len(upstream.bodies) == calls  # refused before the upstream
