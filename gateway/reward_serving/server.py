"""The reward server app: POST /v1/score, GET /v1/models, /health, /metrics (DESIGN contract 3).

Owns `ServerSettings`, `create_app` (routes plus a lifespan that closes the loaded models), parsing a
score request into domain messages (errors name the field), and the one error path (`errors.error_reply`).
Handlers stay thin: parse -> registry lease -> servable.score -> render. Must not import the gateway's web
code (proxy, criteria, config, gateway.errors, gateway.metrics) nor torch: engines are imported when built.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.formats import Message, PairError, parse_message

from .batcher import BatcherConfig
from .errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    error_reply,
)
from .metrics import RewardServerMetrics
from .openapi import openapi_json
from .protocol import (
    Health,
    LoadedModel,
    ModelCard,
    ModelList,
    RewardStats,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
)
from .registry import Loader, ModelRef, ModelVersion, Registry, parse_model_ref

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    """Every setting of the reward server, written once; `cli.py` generates the flags from these fields."""

    models_dir: str = field(default="models", metadata={"help": "model store: <dir>/<slug>/v<N>/"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8081, metadata={"help": "port to listen on"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata={"help": "where models run (auto: CUDA when present)", "choices": ("auto", "cpu", "cuda")},
    )
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata={
            "help": "model weights (auto: bfloat16 on CUDA, float32 on CPU; bfloat16 suits CPUs with AMX)",
            "choices": ("auto", "float32", "bfloat16"),
        },
    )
    engine: Literal["torch", "vllm"] = field(
        default="torch",
        metadata={"help": "scoring engine (vllm needs the optional extra)", "choices": ("torch", "vllm")},
    )
    max_batch_tokens: int = field(default=16384, metadata={"help": "padded tokens per forward pass"})
    max_batch_size: int = field(default=256, metadata={"help": "conversations per forward pass"})
    max_queue_requests: int = field(default=512, metadata={"help": "admitted requests per model; more get 429"})
    max_wait_ms: float = field(default=2.0, metadata={"help": "how long a request waits for others to batch"})
    memory_budget_gb: float = field(
        default=0.0,
        metadata={"help": "parameter memory of loaded models before LRU unloading (0: unlimited)"},
    )
    max_request_bytes: int = field(default=8 * 1024 * 1024, metadata={"help": "largest request body"})
    header_timeout_s: float = field(
        default=10.0, metadata={"help": "time a client has to send a request's headers (408, then closed, after)"}
    )
    body_timeout_s: float = field(default=30.0, metadata={"help": "time a client has to send a whole body (408 after)"})
    max_conversations: int = field(default=1024, metadata={"help": "most conversations in one request"})
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model (its layers on GPU; an encoder whole, frozen, on CPU)"},
    )
    packing: str = field(
        default="auto",
        metadata={
            "help": "torch engine: score a pass's rows packed, no pads computed, a decoder's best-of-N rows as prompt "
            "trees (reward_serving.packing); auto: on for BERT-shaped encoders and plainly causal decoders; any "
            "setting stays off for a model whose probe pass does not score as padded",
            "choices": ("auto", "on", "off"),
        },
    )
    pass_workers: str = field(
        default="auto",
        metadata={
            "help": "torch engine: forward passes scored at once per model, each on its share of the CPU cores (a "
            "number, or auto: 2 for an encoder on a CPU with 2+ threads, else 1)"
        },
    )
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds sent with 429/503"})

    def batcher_config(self) -> BatcherConfig:
        return BatcherConfig(
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            max_wait_s=self.max_wait_ms / 1000,
            max_queue_requests=self.max_queue_requests,
            retry_after_s=self.retry_after_s,
        )

    def memory_budget_bytes(self) -> int | None:
        return int(self.memory_budget_gb * 2**30) if self.memory_budget_gb > 0 else None


@dataclass(frozen=True)
class ScoreCall:
    """A validated score request."""

    ref: ModelRef
    conversations: tuple[tuple[Message, ...], ...]
    tools: tuple[Mapping[str, Any], ...] | None


@dataclass(frozen=True)
class _App:
    settings: ServerSettings
    registry: Registry
    metrics: RewardServerMetrics


def parse_score_request(body: bytes, max_conversations: int) -> ScoreCall:
    """Decode and validate a /v1/score body; every error names the field it is about."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # decode errors, bad JSON, an integer of more than 4,300 digits
        raise InvalidRequestError(f"malformed JSON body: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    if isinstance(raw.get("conversations"), list) and len(raw["conversations"]) > max_conversations:
        raise RequestTooLargeError(
            f"conversations: {len(raw['conversations'])} conversations exceed the "
            f"limit of {max_conversations} per request",
            param="conversations",
        )
    try:
        request = ScoreRequest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _where(error["loc"])
        raise InvalidRequestError(f"{where}: {error['msg']}", param=where) from None
    conversations = []
    for i, raw_conversation in enumerate(request.conversations):
        messages = []
        for j, raw_message in enumerate(raw_conversation):
            where = f"conversations[{i}][{j}]"
            try:
                messages.append(parse_message(raw_message, where))
            except PairError as exc:  # its message names the exact field, e.g. "...[1].role: unknown role"
                raise InvalidRequestError(str(exc), param=where) from None
        if messages[-1].role != "assistant":
            where = f"conversations[{i}][{len(messages) - 1}].role"
            raise InvalidRequestError(
                f"{where}: the last message must be the assistant response to score, got {messages[-1].role!r}",
                param=where,
            )
        conversations.append(tuple(messages))
    tools = tuple(request.tools) if request.tools is not None else None
    return ScoreCall(parse_model_ref(request.model), tuple(conversations), tools)


def create_app(
    settings: ServerSettings | None = None,
    *,
    registry: Registry | None = None,
    loader: Loader | None = None,
    metrics: RewardServerMetrics | None = None,
) -> Starlette:
    """The reward server as an ASGI app; inject `registry` or `loader` to serve fakes in tests."""
    settings = settings or ServerSettings()
    metrics = metrics or RewardServerMetrics()
    if registry is None:
        registry = Registry(
            settings.models_dir,
            loader or _default_loader(settings, metrics),
            memory_budget_bytes=settings.memory_budget_bytes(),
            on_load=metrics.record_load,
        )
    app = _App(settings, registry, metrics)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        logger.info("reward server settings: %s", asdict(settings))
        try:
            yield
        finally:
            await registry.aclose()

    routes = [
        Route("/v1/score", _endpoint(app, "/v1/score", _score), methods=["POST"]),
        Route("/v1/models", _endpoint(app, "/v1/models", _models), methods=["GET"]),
        Route("/health", _endpoint(app, "/health", _health), methods=["GET"]),
        Route("/metrics", _endpoint(app, "/metrics", _metrics), methods=["GET"]),
        Route("/openapi.json", _endpoint(app, "/openapi.json", openapi_json), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# ---------------------------------------------------------------- handlers


async def _score(request: Request, app: _App) -> Response:
    call = parse_score_request(
        await _read_body(request, app.settings.max_request_bytes, app.settings.body_timeout_s),
        app.settings.max_conversations,
    )
    started = time.perf_counter()

    async def work() -> tuple[ModelVersion, tuple[float, ...], int]:
        async with app.registry.lease(call.ref) as (version, servable):
            result = await servable.score(call.conversations, call.tools)
        return version, result.scores, result.prompt_tokens

    version, scores, tokens = await _unless_disconnected(request, work())
    app.metrics.record_scoring(len(scores), tokens, time.perf_counter() - started)
    body = ScoreResponse(
        model=version.slug,
        version=version.name,
        usage=ScoreUsage(prompt_tokens=tokens),
        data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
    )
    return JSONResponse(body.model_dump())


async def _models(request: Request, app: _App) -> Response:
    versions = app.registry.all_versions()
    loaded = {version.key for version, _ in app.registry.loaded()}
    newest: dict[str, int] = {}
    for v in versions:
        newest[v.slug] = max(newest.get(v.slug, 0), v.version)
    cards = [_card(v, latest=newest[v.slug] == v.version, loaded=v.key in loaded) for v in versions]
    return JSONResponse(ModelList(data=cards).model_dump(exclude_none=True))


async def _health(request: Request, app: _App) -> Response:
    ok = app.registry.models_dir.is_dir()
    loaded = [
        LoadedModel(model=v.slug, version=v.name, memory_bytes=s.memory_bytes, queue_size=s.queue_size)
        for v, s in app.registry.loaded()
    ]
    body = Health(
        status="ok" if ok else "unavailable",
        models_dir=str(app.registry.models_dir),
        available_models=len({v.slug for v in app.registry.all_versions()}),
        loaded=loaded,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _metrics(request: Request, app: _App) -> Response:
    loaded = app.registry.loaded()
    app.metrics.set_state(
        queue_size=app.registry.queue_size(),
        loaded_models=len(loaded),
        loaded_bytes=sum(s.memory_bytes for _, s in loaded),
    )
    payload, content_type = app.metrics.exposition()
    return Response(payload, media_type=content_type)


# ---------------------------------------------------------------- plumbing


def _endpoint(
    app: _App,
    route: str,
    handler: Callable[[Request, _App], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The one error path and request metrics around a handler."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request, app)
        except Exception as exc:  # every error, ours or not, goes through error_reply
            if isinstance(exc, ClientDisconnectedError):  # the client's doing: no traceback, no ERROR
                logger.info("%s %s: %s", request.method, route, exc.message)
            status, body, headers = error_reply(exc)
            response = JSONResponse(body, status_code=status, headers=headers)
        app.metrics.record_request(route, response.status_code, time.perf_counter() - started)
        return response

    return endpoint


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body: 413 past `limit` bytes, 408 when it has not all come within `timeout_s`, and the client's 499
    when it leaves before sending it all (its doing, not a server error)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:  # isdigit() alone admits '²'
        raise RequestTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout_s:g} s ({size} bytes came)"
        ) from None
    except ClientDisconnect:
        raise ClientDisconnectedError(f"the client left after sending {size} bytes of its body") from None
    return b"".join(chunks)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so dropping its queued batches) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnectedError("the client disconnected; its work was dropped")
    return task.result()


async def _disconnect(request: Request) -> None:
    # The body is read, so the next ASGI message is http.disconnect when (and only when) the client leaves.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _default_loader(settings: ServerSettings, metrics: RewardServerMetrics) -> Loader:
    # Engines are imported here, not at module level: torch is heavy and vLLM an optional extra.
    if settings.engine == "vllm":
        from .vllm_engine import vllm_loader

        return vllm_loader(
            device=settings.device,
            dtype=settings.dtype,
            max_queue_requests=settings.max_queue_requests,
            retry_after_s=settings.retry_after_s,
        )
    from .engine import torch_loader

    return torch_loader(
        device=settings.device,
        dtype=settings.dtype,
        batcher=settings.batcher_config(),
        on_batch=metrics.record_batch,
        compile_blocks=settings.compile,
        packing={"on": True, "off": False}.get(settings.packing, settings.packing),
        pass_workers=_pass_workers(settings.pass_workers),
    )


def _pass_workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"pass_workers {value!r} is not 'auto' or a number") from None


def _where(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "body"


def _card(version: ModelVersion, *, latest: bool, loaded: bool) -> ModelCard:
    card = version.card

    def typed(key: str, kind: type[T]) -> T | None:
        value = card.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    stats = card.get("reward_stats")
    try:
        reward_stats = RewardStats.model_validate(stats) if isinstance(stats, dict) else None
    except ValidationError:
        reward_stats = None
    return ModelCard(
        id=version.key,
        slug=version.slug,
        version=version.name,
        latest=latest,
        loaded=loaded,
        base_model=typed("base_model", str),
        created_at=typed("created_at", str),
        max_length=typed("max_length", int),
        reward_stats=reward_stats,
        metrics=typed("metrics", dict),
    )
