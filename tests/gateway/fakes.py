"""Shared fakes for the gateway app's tests: a fake OpenAI-compatible upstream (aiohttp.web on 127.0.0.1) and a
harness that wires the REAL router, SQLite store and embedded reward server (tiny models) into the gateway app.
No internals are replaced: the fakes sit at the network edges. Nothing waits by sleeping: `until` polls.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import Services
from gateway.cli import build_app
from gateway.config import GatewaySettings
from gateway.criteria import DEFAULT_KINDS, CriterionKind
from gateway.criteria.reward_client import HttpxReward
from gateway.metrics import GatewayMetrics
from gateway.store import LogStore
from gateway.upstream.providers import ProviderConfig
from gateway.upstream.router import RetryPolicy, Router
from tests.tiny import save_reward_model

KEY = "sk-provider-key-0123456789abcdef"  # the provider's key: must never reach a client or a log
ANSWERS = [
    "Open settings, choose security, then reset your password.",
    "I cannot help with that. Please ask someone else.",
    "Thanks for reaching out! Your order ships tomorrow and arrives in two days.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Go to the login page and click 'forgot password'.",
]
STREAM_TEXT = ["Hel", "lo", "!"]
DRIP_HOLD = 3  # the words a `drip` stream sends before it waits for `release`
MESSAGES = [{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": "How do I reset?"}]


class FakeUpstream:
    """POST /v1/chat/completions; the request's `model` picks the behaviour:
    ok: answers honouring `n`, each choice a different ANSWERS entry | fail-second: the 2nd request answers 400
    always-500: always 500 | stream: SSE chunks then [DONE] (`stream: true`) | hold-stream: one chunk, then waits
    break-stream: one chunk, then the connection drops mid-body
    judge: an LLM judge (gateway/criteria/llm_judge.py's format): PASS (0.9) when the judged output mentions a
    password, else FAIL (0.8) | judge-garbage: a judge that answers no verdict
    hold: answers like ok once `release` is set (a slow upstream) | auth-401: refuses the gateway's key with 401
    drip (streams only): ANSWERS[seed % 5] one word per chunk (a "token"), holding after DRIP_HOLD words until
    `release` is set, then the rest (slow-drip: one word per 50 ms, never holding), a usage chunk when asked
    (stream_options.include_usage) and [DONE]; each stream's words sent are counted in `dripped` by seed
    Every handler a client abandons is cancelled (aiohttp's handler_cancellation): counted in `cancelled`, with
    the monotonic time in `cancelled_at`.
    """

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.produced = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.sent: list[bytes] = []
        self.cancelled_at: list[float] = []
        self.dripped: Counter[int] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        model = body["model"]
        self.counts[model] += 1
        try:
            return await self.answer(request, body, model)
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancelled_at.append(time.monotonic())
            raise

    async def answer(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        if model == "auth-401":
            return web.json_response({"error": {"message": f"Incorrect API key provided: {KEY}"}}, status=401)
        if model == "hold":
            await self.release.wait()
        if model == "always-500" or (model == "fail-second" and self.counts[model] == 2):
            status = 500 if model == "always-500" else 400
            return web.json_response({"error": {"message": f"upstream says no ({KEY})"}}, status=status)
        if body.get("stream") and model in ("drip", "slow-drip"):
            return await self.drip(request, body)
        if body.get("stream"):
            return await self.stream(request, model)
        if model in ("judge", "judge-garbage"):
            return web.json_response(self.judge(body, model))
        choices = []
        for i in range(body.get("n", 1)):
            text = ANSWERS[self.produced % len(ANSWERS)]
            self.produced += 1
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        n = len(choices)
        usage = {"prompt_tokens": 3, "completion_tokens": 4 * n, "total_tokens": 3 + 4 * n}
        response = {
            "id": f"chatcmpl-{len(self.bodies)}",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": "fp_fake",
        }
        self.responses.append(response)
        return web.json_response(response)

    def judge(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        section = re.search(r"<<<OUTPUT (\w+)>>>\n(.*)\n<<<END OUTPUT \1>>>", body["messages"][-1]["content"], re.S)
        assert section is not None, "the judge prompt has no OUTPUT section"
        passed = "password" in section.group(2).lower()
        verdict = {"explanation": "checked for a password", "verdict": "PASS" if passed else "FAIL"}
        verdict["confidence"] = 0.9 if passed else 0.8
        text = "The weather is nice today." if model == "judge-garbage" else json.dumps(verdict)
        message = {"role": "assistant", "content": text}
        usage = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
        return {"id": "chatcmpl-judge", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}  # fmt: skip

    async def stream(self, request: web.Request, model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, text in enumerate([*STREAM_TEXT, None]):
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "finish_reason": None if text else "stop"}
            chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}
            data = b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n"
            self.sent.append(data)
            await response.write(data)
            if model == "hold-stream":
                await self.release.wait()
            if model == "break-stream":
                assert request.transport is not None
                request.transport.close()  # the chunked body never ends: the client sees a payload error
                return response
        self.sent.append(b"data: [DONE]\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def drip(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        seed = int(body.get("seed") or 0)
        words = ANSWERS[seed % len(ANSWERS)].split(" ")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": f"chatcmpl-d{seed}", "object": "chat.completion.chunk", "created": 1, "model": "drip"}

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n")

        slow = body.get("model") == "slow-drip"
        for k, word in enumerate(words):
            if slow:
                await asyncio.sleep(0.05)
            elif k == DRIP_HOLD:
                await self.release.wait()
            delta = {"role": "assistant", "content": word} if k == 0 else {"content": " " + word}
            await send([{"index": 0, "delta": delta, "finish_reason": None}])
            self.dripped[seed] += 1
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
            await send([], usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


def failing_scores(app: ASGIApp) -> ASGIApp:
    """The real reward server, except that POST /v1/score answers 500 (a reward server failing mid-request)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/score":
            body = json.dumps({"error": {"message": "CUDA out of memory", "type": "inference_error"}}).encode()
            await send(
                {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return asgi


@dataclass
class Gateway:
    app: Starlette
    client: httpx.AsyncClient  # to the gateway, over ASGI
    store: LogStore
    reward: httpx.AsyncClient | None  # to the reward server the criteria use when embedded, over ASGI
    metrics: GatewayMetrics


def make_router(upstream: FakeUpstream) -> Router:
    """`fake` honours n natively; `solo` (same upstream) gets N parallel calls. No retries: failures stay failures."""
    configs = [
        ProviderConfig("fake", "openai", upstream.url, KEY),
        ProviderConfig("solo", "openai", upstream.url, KEY, native_n=False),
    ]
    return Router.from_configs(configs, default_provider="fake", retry=RetryPolicy(attempts=1))


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    upstream: FakeUpstream,
    models_dir: Path,
    *,
    settings: GatewaySettings | None = None,
    wrap_reward: Callable[[ASGIApp], ASGIApp] | None = None,
    reward_url: str | None = None,
    kinds: Sequence[CriterionKind] = DEFAULT_KINDS,
) -> AsyncIterator[Gateway]:
    """The gateway app as `rewardgate serve` wires it (gateway.cli.build_app), lifespan entered, with the fake
    upstream's router, the store in tmp_path (unless `settings` names one) and the reward server embedded from
    `models_dir` (or at `reward_url`)."""
    settings = settings or GatewaySettings(upstream_models=("fake:ok", "gpt-4o-mini"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    changes: dict[str, object] = {"models_dir": str(models_dir), "device": "cpu"}
    if settings.store_url == GatewaySettings().store_url:
        changes["store_url"] = str(tmp_path / "logs.db")
    if reward_url is not None:
        changes["reward_server_url"] = reward_url
    settings = settings.replace(**changes)
    app = build_app(settings, router=make_router(upstream), wrap_reward=wrap_reward, kinds=kinds)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            reward = services.reward.client if isinstance(services.reward, HttpxReward) else None
            yield Gateway(app, client, services.store, reward, services.metrics)


def chat_body(model: str = "ok", **extra: Any) -> dict[str, Any]:
    """A chat-completions body for the fake upstream's `model` (MESSAGES as the prompt)."""
    return {"model": model, "messages": MESSAGES, **extra}


def two_versions(root: Path) -> Path:
    """A reward-model store with tiny-rm v1 and v2 (different weights), so `tiny-rm` means v2."""
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    save_reward_model(root / "tiny-rm" / "v2", "tiny-rm", "v2", seed=1)
    return root


@dataclass
class ServeProcess:
    """A `python -m gateway serve` process: the port it listens on and every line it printed so far."""

    port: int
    output: list[bytes]
    pid: int = 0  # of the `serve` process (with --workers, the supervisor of the worker processes)

    def text(self) -> str:
        return b"".join(self.output).decode(errors="replace")


@asynccontextmanager
async def serve_process(args: list[str], env: dict[str, str], *, timeout: float = 60.0) -> AsyncIterator[ServeProcess]:
    """`rewardgate serve` as a user starts it (stdout and stderr read as it runs), until uvicorn says where it
    listens; terminated on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output: list[bytes] = []

    async def drain() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            output.append(line)

    reader = asyncio.create_task(drain())
    try:
        started = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        await until(lambda: any(started.search(line) for line in output) or proc.returncode is not None, timeout)
        ports = [m.group(1).decode() for line in output if (m := started.search(line))]
        assert ports, b"".join(output).decode(errors="replace")[-3000:]
        yield ServeProcess(int(ports[0]), output, proc.pid)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        await reader


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)
