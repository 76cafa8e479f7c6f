"""The reward server over HTTP: httpx.ASGITransport for most tests, one over a real uvicorn socket."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.formats import parse_message
from gateway.reward_serving.batcher import BatchedModel, BatcherConfig
from gateway.reward_serving.engine import TorchRewardEngine
from gateway.reward_serving.registry import ModelVersion
from gateway.reward_serving.server import ServerSettings, create_app

from .fakes import FakeEngine, FakeScorer, until

pytestmark = pytest.mark.anyio

PROMPT = {"role": "user", "content": "How do I reset my password?"}
ANSWERS = [
    "Open settings, choose security, then reset.",
    "I cannot help with that.",
    "Thanks for reaching out! Your order ships tomorrow.",
    "Please ask someone else.",
]
CONVERSATIONS = [[PROMPT, {"role": "assistant", "content": a}] for a in ANSWERS]


def score_body(model: str = "tiny-rm", conversations: Any = CONVERSATIONS) -> dict[str, Any]:
    return {"model": model, "conversations": conversations}


@pytest.fixture
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        ServerSettings(models_dir=str(store), device="cpu", max_request_bytes=64 * 1024, max_conversations=16)
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://rm") as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def test_score_returns_one_raw_score_per_conversation_in_order(client: httpx.AsyncClient, store: Path) -> None:
    response = await client.post("/v1/score", json=score_body())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("tiny-rm", "v2")  # the newest version
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    engine = TorchRewardEngine.load(store / "tiny-rm" / "v2", device="cpu")
    expected = engine.score(CONVERSATIONS)
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-5)
    rendered = engine.render([[parse_message(m, "m") for m in c] for c in CONVERSATIONS])
    assert body["usage"]["prompt_tokens"] == sum(map(len, rendered))
    engine.close()


async def test_a_pinned_version_and_an_encoder_model(client: httpx.AsyncClient) -> None:
    pinned = await client.post("/v1/score", json=score_body("tiny-rm@v1"))
    assert pinned.status_code == 200 and pinned.json()["version"] == "v1"
    newest = await client.post("/v1/score", json=score_body("tiny-rm"))
    assert [d["score"] for d in pinned.json()["data"]] != [d["score"] for d in newest.json()["data"]]
    bert = await client.post("/v1/score", json=score_body("bert-rm"))
    assert bert.status_code == 200 and len(bert.json()["data"]) == 4


@pytest.mark.parametrize(("model", "named"), [("nope", "'nope'"), ("tiny-rm@v9", "no version v9")])
async def test_an_unknown_model_or_version_is_a_404_naming_it(
    client: httpx.AsyncClient, model: str, named: str
) -> None:
    response = await client.post("/v1/score", json=score_body(model))
    assert response.status_code == 404
    error = error_of(response)
    assert named in error["message"] and error["param"] == "model" and error["type"] == "model_not_found"


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/score", content=b'{"model": "tiny-rm", "conversations": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "malformed JSON" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (score_body(conversations=[]), "conversations", "conversations: "),
        ({"conversations": CONVERSATIONS}, "model", "model: "),
        (score_body(conversations=[[]]), "conversations[0]", "conversations[0]: "),
        (
            score_body(conversations=[CONVERSATIONS[0], [PROMPT, {"role": "robot", "content": "x"}]]),
            "conversations[1][1]",
            "conversations[1][1].role: unknown role 'robot'",
        ),
        (score_body(conversations=[[PROMPT]]), "conversations[0][0].role", "must be the assistant response"),
        (
            score_body(conversations=[[PROMPT, {"role": "assistant", "content": " "}]]),
            "conversations[0][1]",
            "conversations[0][1].content",
        ),
        (score_body(model="../etc"), "model", "expected 'slug' or 'slug@vN'"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], param: str, fragment: str
) -> None:
    response = await client.post("/v1/score", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param and fragment in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_oversize_requests_are_refused_with_413(client: httpx.AsyncClient) -> None:
    too_many = await client.post("/v1/score", json=score_body(conversations=CONVERSATIONS * 5))
    assert too_many.status_code == 413 and error_of(too_many)["param"] == "conversations"
    huge = [[PROMPT, {"role": "assistant", "content": "x" * 70_000}]]
    too_big = await client.post("/v1/score", json=score_body(conversations=huge))
    assert too_big.status_code == 413 and "exceeds the limit" in error_of(too_big)["message"]


async def test_models_lists_every_version_with_its_card(client: httpx.AsyncClient) -> None:
    await client.post("/v1/score", json=score_body("tiny-rm@v1"))
    body = (await client.get("/v1/models")).json()
    cards = {c["id"]: c for c in body["data"]}
    assert body["object"] == "list" and set(cards) == {"bert-rm@v1", "tiny-rm@v1", "tiny-rm@v2"}
    v1, v2 = cards["tiny-rm@v1"], cards["tiny-rm@v2"]
    assert (v1["latest"], v2["latest"], v1["loaded"], v2["loaded"]) == (False, True, True, False)
    assert v1["slug"] == "tiny-rm" and v1["version"] == "v1" and v1["base_model"] == "tiny-llama"
    assert v1["max_length"] == 256 and v1["reward_stats"] == {"mean": 0.0, "std": 1.0, "count": 0}
    assert v1["created_at"].startswith("2026-")


async def test_health_reports_loaded_models(client: httpx.AsyncClient) -> None:
    await client.post("/v1/score", json=score_body("bert-rm"))
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["available_models"] == 2
    assert [(m["model"], m["version"]) for m in body["loaded"]] == [("bert-rm", "v1")]


async def test_metrics_exposes_the_server_series(client: httpx.AsyncClient) -> None:
    await client.post("/v1/score", json=score_body())
    await client.post("/v1/score", json=score_body("nope"))
    text = (await client.get("/metrics")).text
    for name in (
        "rewardgate_rm_requests_total",
        "rewardgate_rm_request_duration_seconds_bucket",
        "rewardgate_rm_scoring_duration_seconds",
        "rewardgate_rm_queue_size",
        "rewardgate_rm_queue_duration_seconds",
        "rewardgate_rm_batch_size",
        "rewardgate_rm_batch_tokens",
        "rewardgate_rm_batch_inference_duration_seconds",
        "rewardgate_rm_loaded_models",
        "rewardgate_rm_model_loads_total",
        "rewardgate_rm_prompt_tokens_total",
    ):
        assert name in text, name
    assert 'rewardgate_rm_requests_total{route="/v1/score",status="404"} 1.0' in text
    assert "rewardgate_rm_loaded_models 1.0" in text


# ---------------------------------------------------------------- with a gated fake engine


class FakeStore:
    """A model store of one fake model served by a gated FakeEngine behind a real batcher."""

    def __init__(self, root: Path, config: BatcherConfig) -> None:
        (root / "fake" / "v1").mkdir(parents=True)
        (root / "fake" / "v1" / "rewardgate.json").write_text(json.dumps({"slug": "fake", "max_length": 64}))
        self.scorer = FakeScorer(gated=True)
        self.config = config
        self.models: list[BatchedModel] = []
        self.app = create_app(ServerSettings(models_dir=str(root)), loader=self.load)

    def load(self, version: ModelVersion) -> BatchedModel:
        model = BatchedModel(FakeEngine(self.scorer), self.config)
        self.models.append(model)
        return model


def fake_body(answer: str) -> dict[str, Any]:
    return score_body("fake", [[PROMPT, {"role": "assistant", "content": answer}]])


async def test_overload_is_a_429_with_retry_after(tmp_path: Path) -> None:
    fake = FakeStore(tmp_path, BatcherConfig(max_queue_requests=1, max_wait_s=0.0, retry_after_s=2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://rm") as client:
        first = asyncio.ensure_future(client.post("/v1/score", json=fake_body("ab")))
        await asyncio.wait_for(fake.scorer.entered.wait(), 5)
        refused = await client.post("/v1/score", json=fake_body("cd"))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert error_of(refused)["type"] == "overloaded"
        fake.scorer.gate.set()
        response = await first
        assert response.status_code == 200 and response.json()["data"][0]["score"] == float(ord("a") + ord("b"))


async def test_a_client_that_disconnects_has_its_queued_work_dropped(tmp_path: Path) -> None:
    fake = FakeStore(tmp_path, BatcherConfig(max_wait_s=0.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://rm") as client:
        first = asyncio.ensure_future(client.post("/v1/score", json=fake_body("ab")))
        await asyncio.wait_for(fake.scorer.entered.wait(), 5)  # the worker is busy with the first request
        disconnect = asyncio.Event()
        sent: list[dict[str, Any]] = []
        gone = asyncio.ensure_future(raw_post(fake.app, json.dumps(fake_body("zz")).encode(), disconnect, sent))
        await until(lambda: fake.models[0].queue_size == 2)
        disconnect.set()
        await asyncio.wait_for(gone, 5)
        assert sent[0]["status"] == 499
        fake.scorer.gate.set()
        assert (await first).status_code == 200
    assert (ord("z"), ord("z")) not in fake.scorer.rows()


async def raw_post(app: Any, body: bytes, disconnect: asyncio.Event, sent: list[dict[str, Any]]) -> None:
    """POST /v1/score at the ASGI level, with a client that goes away when `disconnect` is set."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/score",
        "raw_path": b"/v1/score",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("rm", 80),
    }
    await app(scope, receive, send)


# ---------------------------------------------------------------- a real socket


async def test_scoring_over_a_real_uvicorn_socket(store: Path) -> None:
    app = create_app(ServerSettings(models_dir=str(store), device="cpu"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port, held by us until uvicorn takes the socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or serving.done(), timeout=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = await client.post("/v1/score", json=score_body("tiny-rm@v1"))
            health = await client.get("/health")
        assert response.status_code == 200 and len(response.json()["data"]) == 4
        assert health.json()["loaded"][0]["model"] == "tiny-rm"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 20)
        sock.close()
