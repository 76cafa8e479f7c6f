"""Fault-injecting fakes for the reliability tests: an OpenAI-compatible upstream and a reward server (aiohttp.web on
127.0.0.1, real HTTP) whose answers are scripted, and a harness that wires the REAL gateway app (router, providers,
SQLite store, networked reward-server client) to them. Nothing inside the gateway is replaced.

Faults are queued per upstream model name (or per reward-server route) and taken in arrival order; once a queue is
empty the answer is a good one. So "k of N candidates fail" is k faults queued before a best-of-N request whose
provider makes N parallel calls. The fakes wait only where the fault itself is a wait (a hang, a slow body).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from aiohttp import web

from gateway.api import Services
from gateway.cli import build_app
from gateway.config import GatewaySettings
from gateway.store import LogStore
from gateway.upstream.providers import ProviderConfig
from gateway.upstream.router import RetryPolicy, Router

KEY = "sk-fault-provider-key-0123456789"
SLUG = "rm"  # the reward server's one model
MESSAGES = [{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": "How do I reset?"}]
ANSWERS = [
    "Open settings, choose security, then reset your password.",
    "Go to the login page and click 'forgot password'.",
    "Thanks for reaching out!",
    "Settings, security, reset.",
]

Kind = Literal[
    "ok",  # a good answer (after `delay_s`; a stream sends its chunks `delay_s` apart)
    "status",  # an error envelope with `status` (and Retry-After when `retry_after`)
    "hang",  # never answers (the gateway must time out and close the connection)
    "garbage",  # 200 with an HTML body
    "not_completion",  # 200 with JSON that is not a chat completion
    "short",  # a completion with fewer choices than `n`
    "truncated",  # 200, Content-Length promises more than is sent, then the connection drops
    "trickle",  # 200, the body one byte every `delay_s` (slower than any sane timeout)
    "stall",  # stream: the first chunk, then nothing
    "break",  # stream: the first chunk, then the connection drops
    "nan",  # reward server: 200 with NaN scores
    "wrong_count",  # reward server: 200 with one score fewer than asked
]


@dataclass(frozen=True)
class Fault:
    kind: Kind
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0


OK = Fault("ok")


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", status=code, retry_after=retry_after)


class _Scripted:
    """Queues of faults by key; counts of calls, of handlers in flight and of handlers cancelled by a client leaving."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.active = 0
        self.cancelled = 0
        self._queues: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self._release = asyncio.Event()  # set at shutdown: hung handlers end
        self._runner: web.AppRunner | None = None

    def queue(self, key: str, *faults: Fault) -> None:
        self._queues[key].extend(faults)

    def _next(self, key: str) -> Fault:
        self.calls[key] += 1
        queue = self._queues[key]
        return queue.popleft() if queue else OK

    async def _tracked(self, answer: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        self.active += 1
        try:
            return await answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def _start(self, app: web.Application) -> None:
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Take the server down: later connections are refused."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hang(self) -> web.StreamResponse:
        await self._release.wait()
        return web.Response(status=599)

    async def _trickle(self, request: web.Request, body: bytes, delay_s: float) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        for i in range(len(body)):
            await response.write(body[i : i + 1])
            await asyncio.sleep(delay_s)
        return response

    async def _truncated(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return response


def _envelope(code: int, retry_after: str | None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    body = {"error": {"message": f"injected {code}", "type": "server_error", "code": None}}
    return web.json_response(body, status=code, headers=headers)


class FaultUpstream(_Scripted):
    """POST /v1/chat/completions. Faults are queued by the upstream's model name (the part after `provider:`).
    Good answers honour `n` (streams send one choice), each choice a different ANSWERS entry."""

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._tracked(self._answer(request, body, self._next(body["model"])))

    def completion(self, model: str, n: int) -> dict[str, Any]:
        choices = []
        for i in range(n):
            text = ANSWERS[self.produced % len(ANSWERS)]
            self.produced += 1
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        usage = {"prompt_tokens": 3, "completion_tokens": 4 * n, "total_tokens": 3 + 4 * n}
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": 1, "model": model, "choices": choices,
                "usage": usage}  # fmt: skip

    async def _answer(self, request: web.Request, body: dict[str, Any], fault: Fault) -> web.StreamResponse:
        model, n = body["model"], int(body.get("n") or 1)
        if fault.kind == "status":
            return _envelope(fault.status, fault.retry_after)
        if fault.kind == "hang":
            return await self._hang()
        if fault.kind == "garbage":
            return web.Response(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if fault.kind == "not_completion":
            return web.json_response({"object": "list", "data": []})
        if body.get("stream"):
            return await self._stream(request, model, fault)
        if fault.kind in ("truncated", "trickle"):
            raw = json.dumps(self.completion(model, n)).encode()
            if fault.kind == "truncated":
                return await self._truncated(request, raw)
            return await self._trickle(request, raw, fault.delay_s)
        await asyncio.sleep(fault.delay_s)
        return web.json_response(self.completion(model, 1 if fault.kind == "short" else n))

    async def _stream(self, request: web.Request, model: str, fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        text = ANSWERS[self.produced % len(ANSWERS)]
        self.produced += 1
        pieces = [text[:10], text[10:], None]
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece} if piece else {}
            choice = {"index": 0, "delta": delta, "finish_reason": None if piece else "stop"}
            chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}
            await response.write(b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n")
            if fault.kind == "stall":
                await self._release.wait()
            if fault.kind == "break":
                assert request.transport is not None
                request.transport.close()
                return response
            await asyncio.sleep(fault.delay_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class FaultRewardServer(_Scripted):
    """The reward server's wire API (DESIGN contract 3) with one model, `rm@v1` (reward stats mean 0, std 1).
    Faults are queued by route: "models" (GET /v1/models) and "score" (POST /v1/score). A good score is the
    answer's length / 100, so longer answers rank first."""

    def card(self) -> dict[str, Any]:
        return {"id": f"{SLUG}@v1", "object": "model", "slug": SLUG, "version": "v1", "latest": True, "loaded": True,
                "reward_stats": {"mean": 0.5, "std": 0.2, "count": 10}}  # fmt: skip

    async def models(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._models(self._next("models")))

    async def _models(self, fault: Fault) -> web.StreamResponse:
        if fault.kind == "hang":
            return await self._hang()
        if fault.kind == "status":
            return _envelope(fault.status, fault.retry_after)
        if fault.kind == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        await asyncio.sleep(fault.delay_s)
        return web.json_response({"object": "list", "data": [self.card()]})

    async def score(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._tracked(self._score(request, body, self._next("score")))

    async def _score(self, request: web.Request, body: dict[str, Any], fault: Fault) -> web.StreamResponse:
        if fault.kind == "hang":
            return await self._hang()
        if fault.kind == "status":
            return _envelope(fault.status, fault.retry_after)
        if fault.kind == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        conversations = body["conversations"]
        scores = [len(str(c[-1].get("content") or "")) / 100 for c in conversations]
        if fault.kind == "wrong_count":
            scores = scores[:-1]
        data = [{"index": i, "score": s} for i, s in enumerate(scores)]
        raw = json.dumps({"model": SLUG, "version": "v1", "data": data, "usage": {"prompt_tokens": 1}}).encode()
        if fault.kind == "nan":
            raw = raw.replace(b'"score": ', b'"score": NaN, "was": ')
        if fault.kind == "truncated":
            return await self._truncated(request, raw)
        await asyncio.sleep(fault.delay_s)
        return web.Response(body=raw, content_type="application/json")


@asynccontextmanager
async def fault_upstream() -> AsyncIterator[FaultUpstream]:
    fake = FaultUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    await fake._start(app)
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def fault_reward_server() -> AsyncIterator[FaultRewardServer]:
    fake = FaultRewardServer()
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/score", fake.score)
    await fake._start(app)
    try:
        yield fake
    finally:
        await fake.stop()


@dataclass
class Gateway:
    client: httpx.AsyncClient  # to the gateway app, over ASGI
    store: LogStore
    db_path: Path  # the SQLite file, for a second connection (a lock holder)
    settings: GatewaySettings


def settings_for(tmp_path: Path, **changes: Any) -> GatewaySettings:
    """Short timeouts, so that every fault ends in well under a second."""
    base = GatewaySettings(
        models_dir=str(tmp_path / "models"),
        jobs_dir=str(tmp_path / "jobs"),
        upstream_timeout_s=0.5,
        criteria_timeout_s=0.5,
        max_n=8,
    )
    return base.replace(**changes)


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    upstream: FaultUpstream,
    reward_url: str,
    *,
    settings: GatewaySettings | None = None,
    attempts: int = 1,
    busy_timeout_s: float = 0.3,
    max_connections: int = 100,
) -> AsyncIterator[Gateway]:
    """The gateway app, lifespan entered. Providers: `fake` makes N parallel calls for best-of-N (so faults hit
    single candidates), `native` asks for all N in one call; each pools at most `max_connections` upstream
    connections. Retries: `attempts` per model, ~10 ms apart. The store waits `busy_timeout_s` for a lock."""
    settings = settings or settings_for(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    db_path = tmp_path / "logs.db"
    settings = settings.replace(
        store_url=str(db_path), store_busy_timeout_s=busy_timeout_s, reward_server_url=reward_url
    )
    configs = [
        ProviderConfig("fake", "openai", upstream.url + "/v1", KEY, native_n=False, max_connections=max_connections),
        ProviderConfig("native", "openai", upstream.url + "/v1", KEY, native_n=True, max_connections=max_connections),
    ]
    retry = RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.02)
    router = Router.from_configs(configs, default_provider="fake", retry=retry)
    app = build_app(settings, router=router)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            services: Services = app.state.services
            yield Gateway(client, services.store, db_path, services.settings)


def assert_log_matches(log: dict[str, Any], reply: dict[str, Any], request: dict[str, Any] | None = None) -> None:
    """A stored log (GET /v1/logs/{id}) holds exactly what the client was told in `reply`: every candidate in rank
    order with its message or its failure, criteria results and combined score; and `request` as sent, if given.
    Works for best-of-N replies (choices carry `rewardgate`) and stored pass-through ones (the upstream's choices)."""
    assert log["id"] == reply["rewardgate"]["log_id"]
    if request is not None:
        assert log["request"] == request and log["model"] == request["model"]
        assert log["metadata"] == request.get("metadata", {})
    assert len(log["candidates"]) == len(reply["choices"])
    for rank, (choice, candidate) in enumerate(zip(reply["choices"], log["candidates"], strict=True)):
        assert candidate["rank"] == rank
        info = choice.get("rewardgate")
        if info is None:  # pass-through: the upstream's choice as it came
            assert candidate["index"] == choice["index"] and candidate["status"] == "ok"
            assert candidate["message"] == choice["message"]
            continue
        assert choice["index"] == rank and candidate["index"] == info["candidate_index"]
        assert candidate["score"] == info["score"]
        if choice["finish_reason"] == "error":
            assert candidate["status"] == "error" and candidate["message"] is None
            assert candidate["error"].startswith(choice["error"]["code"] + ":")
        else:
            assert candidate["status"] == "ok" and candidate["message"] == choice["message"]
            assert candidate["criteria_results"] == choice["criteria_results"]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition()` until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)
