"""gateway.upstream.providers and gateway.upstream.router over real HTTP, against a fake OpenAI-compatible upstream
(aiohttp.web on 127.0.0.1). No test sleeps to wait: they await events or poll with a deadline; retry delays go to
an injected sleep.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from aiohttp import web

from gateway.upstream.providers import (
    ChatProvider,
    ForbiddenFieldError,
    InvalidUpstreamResponse,
    LiteLLMProvider,
    OpenAICompatibleProvider,
    ProviderConfig,
    UnknownModelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
    providers_from_env,
)
from gateway.upstream.router import (
    AllCandidatesFailed,
    Candidate,
    CandidateError,
    RetryPolicy,
    Router,
    parse_retry_after,
    split_model_name,
)
from tests.gateway.fakes import until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"),  # LiteLLM's types
]

KEY = "sk-planted-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
STREAM_TEXT = ["Hel", "lo", "!"]


class FakeUpstream:
    """POST /v1/chat/completions. The request's `model` picks the behaviour:
    ok: answers, honouring `n` | short: one choice whatever `n` | garbage: 200 with a non-JSON body
    fail-K-STATUS: the first K requests answer STATUS (with Retry-After when `retry_after` is set), then ok
    always-STATUS: always STATUS | nth-fail: the 2nd request answers 500 | echo-auth: 401 echoing the key
    hold: waits for `release` | stream: SSE chunks then [DONE] (`stream: true`) | hold-stream: one chunk, then waits
    """

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.counts: Counter[str] = Counter()
        self.active = 0  # handlers running now
        self.cancelled = 0  # handlers cancelled because the client went away
        self.retry_after: str | None = None
        self.release = asyncio.Event()
        self.sent: list[bytes] = []  # SSE bytes written, to compare with what the client received

    def error(self, status: int, message: str = "upstream trouble") -> web.Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.json_response(
            {"error": {"message": message, "type": "server_error"}}, status=status, headers=headers
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization"))
        model = body["model"]
        self.counts[model] += 1
        self.active += 1
        try:
            return await self.answer(request, body, model, self.counts[model])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def answer(self, request: web.Request, body: dict[str, Any], model: str, count: int) -> web.StreamResponse:
        kind, _, arg = model.partition("-")
        if kind == "fail" and count <= int(arg.split("-")[0]):
            return self.error(int(arg.split("-")[1]))
        if kind == "always":
            return self.error(int(arg))
        if model == "nth-fail" and count == 2:
            return self.error(500)
        if model == "garbage":
            return web.Response(body=b"<html>502 bad gateway</html>", content_type="text/html")
        if model == "echo-auth":
            return self.error(401, f"invalid key: {request.headers.get('Authorization')}")
        if model == "hold":
            await self.release.wait()
        if body.get("stream"):
            return await self.stream(request, model)
        n = 1 if model == "short" else body.get("n", 1)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"answer {i} of request {len(self.bodies)}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ]
        usage = {"prompt_tokens": 3, "completion_tokens": 4 * n, "total_tokens": 3 + 4 * n}
        id_ = f"chatcmpl-{len(self.bodies)}"
        return web.json_response(
            {"id": id_, "object": "chat.completion", "created": 1, "model": model, "choices": choices, "usage": usage}
        )

    async def stream(self, request: web.Request, model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, text in enumerate([*STREAM_TEXT, None]):
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "finish_reason": None if text else "stop"}
            chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}
            await self.write(response, b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n")
            if model == "hold-stream":
                await self.release.wait()
        await self.write(response, b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        self.sent.append(data)
        await response.write(data)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield fake
    fake.release.set()
    await runner.cleanup()


class Sleeps:
    """An injected sleep: records each retry delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def fake_config(upstream: FakeUpstream, kind: str = "openai", **kwargs: Any) -> ProviderConfig:
    if kind == "litellm":  # LiteLLM's OpenAI-compatible provider, pointed at the same fake upstream
        return ProviderConfig("fake", "litellm", upstream.url, KEY, litellm_provider="openai", **kwargs)
    return ProviderConfig("fake", "openai", upstream.url, KEY, **kwargs)


def make_router(upstream: FakeUpstream, kind: str = "openai", native_n: bool | None = None, **kwargs: Any) -> Router:
    kwargs.setdefault("sleep", Sleeps())
    return Router.from_configs([fake_config(upstream, kind, native_n=native_n)], default_provider="fake", **kwargs)


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


# --- model names and configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("vllm:meta-llama/Llama-3.1-8B", ("vllm", "meta-llama/Llama-3.1-8B")),
        ("together_ai/meta-llama/Llama-3-8b", ("together_ai", "meta-llama/Llama-3-8b")),
        ("openai:ft:gpt-4o-mini:org:abc", ("openai", "ft:gpt-4o-mini:org:abc")),
        ("gpt-4o-mini", (None, "gpt-4o-mini")),
    ],
)
def test_split_model_name_accepts_both_styles(name: str, expected: tuple[str | None, str]) -> None:
    assert split_model_name(name) == expected


@pytest.mark.parametrize("name", [":gpt", "openai:", "/x"])
def test_split_model_name_rejects_empty_parts(name: str) -> None:
    with pytest.raises(UnknownModelError):
        split_model_name(name)


def test_router_resolves_names_and_names_unknown_providers() -> None:
    configs = [ProviderConfig("openai", base_url="http://127.0.0.1:9/v1"), ProviderConfig("anthropic", "litellm")]
    router = Router.from_configs(configs)  # builds providers only: no session, no LiteLLM import
    provider, model = router.resolve("anthropic:claude-3-5-haiku")
    assert isinstance(provider, LiteLLMProvider)
    assert (provider.name, provider.native_n, model) == ("anthropic", False, "claude-3-5-haiku")
    provider, model = router.resolve("gpt-4o-mini")  # bare: the default provider
    assert (provider.name, provider.native_n, model) == ("openai", True, "gpt-4o-mini")
    assert router.resolve("openai/gpt-4o")[1] == "gpt-4o"
    with pytest.raises(UnknownModelError, match="'mistral'"):
        router.resolve("mistral:large")
    with pytest.raises(UnknownModelError, match="'nope'"):  # a bad fallback fails at construction
        Router.from_configs(configs, fallbacks={"gpt-4o": ["nope:model"]})
    with pytest.raises(UnknownModelError, match="no default"):
        Router.from_configs(configs, default_provider=None).resolve("gpt-4o")


def test_a_litellm_provider_without_credentials_is_a_404_that_says_how_to_configure_it() -> None:
    router = Router.from_configs(providers_from_env({"OPENAI_API_KEY": KEY}), default_provider="openai")
    with pytest.raises(UnknownModelError) as caught:
        router.resolve("anthropic:claude-3-5-haiku")
    assert "configured: ['openai']" in str(caught.value) and "set ANTHROPIC_API_KEY" in str(caught.value)
    with pytest.raises(UnknownModelError) as unknown:
        router.resolve("nosuch:model")
    assert "set " not in str(unknown.value)


def test_providers_from_env_reads_the_openai_variables_only_when_called() -> None:
    configs = providers_from_env({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://vllm:8000/v1"})
    openai = configs[0]
    assert (openai.name, openai.kind, openai.base_url, openai.api_key) == (
        "openai",
        "openai",
        "http://vllm:8000/v1",
        KEY,
    )
    assert configs[1:] == []  # no LiteLLM provider without its credentials
    with_keys = providers_from_env({"ANTHROPIC_API_KEY": "a", "AWS_PROFILE": "p", "GROQ_API_KEY": ""})
    assert [c.name for c in with_keys[1:]] == ["anthropic", "bedrock"]
    assert all(c.kind == "litellm" and not c.supports_n for c in with_keys[1:])
    assert providers_from_env({})[0].base_url == "https://api.openai.com/v1"
    assert KEY not in repr(configs) and KEY not in str(openai)


def test_parse_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 12, usegmt=True), now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None


# --- the one interface, against both providers -----------------------------------------------------------------


@pytest.fixture(params=["openai", "litellm"])
async def provider(request: pytest.FixtureRequest, upstream: FakeUpstream) -> AsyncIterator[ChatProvider]:
    config = fake_config(upstream, request.param)
    chat: ChatProvider = OpenAICompatibleProvider(config) if request.param == "openai" else LiteLLMProvider(config)
    await chat.start()
    yield chat
    await chat.close()


async def test_complete_returns_openai_json_from_either_provider(
    provider: ChatProvider, upstream: FakeUpstream
) -> None:
    response = await provider.complete(body("ok", temperature=0.5), timeout=10)
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == "answer 0 of request 1"
    assert response["usage"]["total_tokens"] == 7
    assert upstream.bodies[0]["model"] == "ok" and upstream.bodies[0]["temperature"] == 0.5
    assert upstream.auth == [f"Bearer {KEY}"]


async def test_stream_yields_sse_bytes_from_either_provider(provider: ChatProvider, upstream: FakeUpstream) -> None:
    async with aclosing(provider.stream(body("stream", stream=True), timeout=10)) as chunks:
        raw = b"".join([chunk async for chunk in chunks])
    events = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    assert "".join(d.get("content") or "" for d in deltas) == "".join(STREAM_TEXT)
    if isinstance(provider, OpenAICompatibleProvider):  # the direct path: byte for byte what the upstream sent
        assert raw == b"".join(upstream.sent)


async def test_upstream_errors_carry_status_and_retry_after_from_either_provider(
    provider: ChatProvider, upstream: FakeUpstream
) -> None:
    upstream.retry_after = "7"
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(body("always-429"), timeout=10)
    assert (caught.value.status, caught.value.retry_after, caught.value.retryable) == (429, "7", True)
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(body("always-400"), timeout=10)
    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert "upstream trouble" in str(caught.value)
    with pytest.raises(UpstreamError) as caught:
        await anext(aiter(provider.stream(body("always-503", stream=True), timeout=10)))
    assert caught.value.status == 503


async def test_keys_never_appear_in_errors_reprs_or_logs(
    provider: ChatProvider, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError) as caught:  # a careless upstream echoes the key back in its error
        await provider.complete(body("echo-auth"), timeout=10)
    # the provider's 401 is the gateway's credentials failing: a 502 of its own, never the gateway-key 401
    assert caught.value.status == 502 and caught.value.code == "upstream_auth_error" and not caught.value.retryable
    assert "***" in str(caught.value) and "401" in str(caught.value)
    router = Router({"fake": provider}, default_provider="fake", retry=RetryPolicy(attempts=2), sleep=Sleeps())
    with pytest.raises(AllCandidatesFailed) as failed:
        await router.generate_candidates(body("echo-auth"), n=2, timeout=10)
    texts = [str(caught.value), repr(caught.value), str(failed.value), repr(failed.value.errors), repr(provider)]
    texts += ["".join(traceback.format_exception(caught.value)), "".join(traceback.format_exception(failed.value))]
    texts += [repr(router), repr(fake_config(upstream)), caplog.text]
    assert all(KEY not in text for text in texts)


async def test_connection_failures_are_retryable_and_keep_the_key_out() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenAICompatibleProvider(
        ProviderConfig("down", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    ) as p:
        with pytest.raises(UpstreamConnectionError) as caught:
            await p.complete(body("ok"), timeout=5)
    assert caught.value.retryable and caught.value.status == 502
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)


# --- the direct path ---------------------------------------------------------------------------------------------


async def test_direct_path_forwards_the_body_as_is_with_only_the_model_rewritten(upstream: FakeUpstream) -> None:
    sent = body("fake:ok", top_k=5, metadata={"team": "a"}, stream=False)
    async with make_router(upstream) as router:
        response = await router.complete(sent, timeout=10)
    assert upstream.bodies == [{**sent, "model": "ok"}]
    assert response["id"] == "chatcmpl-1" and response["model"] == "ok"


async def test_garbage_bodies_are_invalid_responses_and_not_retried(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        with pytest.raises(InvalidUpstreamResponse):
            await router.complete(body("garbage"), timeout=10)
    assert upstream.counts["garbage"] == 1


@pytest.mark.parametrize("use_aclosing", [True, False])
async def test_stream_closes_the_upstream_when_the_consumer_stops_early(
    upstream: FakeUpstream, use_aclosing: bool
) -> None:
    async with make_router(upstream) as router:
        chunks = router.stream(body("hold-stream"), timeout=10)
        if use_aclosing:
            async with aclosing(chunks):
                async for _ in chunks:
                    break
        else:  # a consumer that just walks away: the generator's finaliser runs the same `finally`
            async for _ in chunks:
                break
            del chunks
        await until(lambda: upstream.cancelled == 1 and upstream.active == 0)
        assert upstream.bodies[0]["stream"] is True
        assert (await router.complete(body("ok"), timeout=10))["choices"]  # the pool still works


async def test_timeouts_complete_stream_and_candidates(upstream: FakeUpstream) -> None:
    async with make_router(upstream, retry=RetryPolicy(attempts=1)) as router:
        with pytest.raises(UpstreamTimeout) as caught:
            await router.complete(body("hold"), timeout=0.2)
        assert (caught.value.status, caught.value.retryable) == (504, True)
        with pytest.raises(AllCandidatesFailed) as failed:
            await router.generate_candidates(body("hold"), n=2, timeout=0.2)
        assert [e.code for e in failed.value.errors] == ["timeout", "timeout"]
        async with aclosing(router.stream(body("hold-stream"), timeout=0.2)) as chunks:
            assert (await anext(chunks)).startswith(b"data: ")  # the first chunk comes, then nothing
            with pytest.raises(UpstreamTimeout):
                await anext(chunks)


async def test_clients_cannot_choose_the_upstream(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        for field in ("api_base", "base_url", "api_key", "extra_headers"):
            bad = body("ok", **{field: "http://attacker.example/v1"})
            with pytest.raises(ForbiddenFieldError, match=field):
                await router.complete(bad, timeout=10)
            with pytest.raises(ForbiddenFieldError):
                router.stream(bad, timeout=10)
            with pytest.raises(ForbiddenFieldError):
                await router.generate_candidates(bad, n=2, timeout=10)
    assert upstream.bodies == []


async def test_litellm_gets_only_openai_parameters_and_the_configured_upstream() -> None:
    calls: list[dict[str, Any]] = []

    class Response:
        def model_dump(self) -> dict[str, Any]:
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}

    async def acompletion(**kwargs: Any) -> Response:
        calls.append(kwargs)
        return Response()

    config = ProviderConfig("claude", "litellm", "https://configured.example", KEY, litellm_provider="anthropic")
    sent = body("claude-x", temperature=0.1, vertex_project="p", mock_response="x", aws_region_name="r")
    assert (await LiteLLMProvider(config, acompletion).complete(sent, timeout=3))["choices"][0]["index"] == 0
    assert calls == [
        {
            "model": "anthropic/claude-x",
            "messages": MESSAGES,
            "temperature": 0.1,
            "timeout": 3,
            "num_retries": 0,
            "max_retries": 0,
            "api_key": KEY,
            "api_base": "https://configured.example",
        }
    ]


# --- candidates: native n, parallel calls, retries, fallbacks, partial results, cancellation ----------------------


async def test_native_n_is_one_upstream_call(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        candidates = await router.generate_candidates(body("ok", n=9, stream=True), n=3, timeout=10)
    assert len(upstream.bodies) == 1 and upstream.bodies[0]["n"] == 3 and "stream" not in upstream.bodies[0]
    assert all(isinstance(c, Candidate) for c in candidates)
    assert [c.index for c in candidates] == [0, 1, 2]
    assert len({c.choice["message"]["content"] for c in candidates if isinstance(c, Candidate)}) == 3
    assert all(isinstance(c, Candidate) and c.model == "ok" and c.usage == candidates[0].usage for c in candidates)


@pytest.mark.parametrize("kind", ["openai", "litellm"])
async def test_without_native_n_candidates_are_parallel_single_calls(upstream: FakeUpstream, kind: str) -> None:
    async with make_router(upstream, kind, native_n=False) as router:
        candidates = await router.generate_candidates(body("ok", n=3), n=3, timeout=10)
    assert len(upstream.bodies) == 3 and all("n" not in b for b in upstream.bodies)
    assert [c.index for c in candidates] == [0, 1, 2]
    assert all(isinstance(c, Candidate) and c.choice["index"] == c.index for c in candidates)


async def test_partial_results_report_the_failed_candidate(upstream: FakeUpstream) -> None:
    async with make_router(upstream, native_n=False, retry=RetryPolicy(attempts=1)) as router:
        candidates = await router.generate_candidates(body("nth-fail"), n=3, timeout=10)
        failed = [c for c in candidates if isinstance(c, CandidateError)]
        assert len(failed) == 1 and len(candidates) == 3
        assert (failed[0].code, failed[0].status, failed[0].model) == ("upstream_error", 500, "nth-fail")
        assert "upstream trouble" in failed[0].message
        with pytest.raises(AllCandidatesFailed) as caught:
            await router.generate_candidates(body("always-500"), n=3, timeout=10)
    assert caught.value.status == 500 and len(caught.value.errors) == 3


async def test_native_n_reports_choices_the_upstream_left_out(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        candidates = await router.generate_candidates(body("short"), n=3, timeout=10)
    assert [type(c).__name__ for c in candidates] == ["Candidate", "CandidateError", "CandidateError"]
    assert isinstance(candidates[1], CandidateError) and candidates[1].code == "missing_choice"


async def test_retries_honour_retry_after_in_seconds_and_capped(upstream: FakeUpstream) -> None:
    sleeps = Sleeps()
    async with make_router(upstream, sleep=sleeps, retry=RetryPolicy(attempts=3, max_retry_after=30)) as router:
        upstream.retry_after = "7"
        assert (await router.complete(body("fail-2-429"), timeout=10))["choices"]
        upstream.retry_after = "3600"
        assert (await router.complete(body("fail-1-503"), timeout=10))["choices"]
    assert sleeps.delays == [7.0, 7.0, 30.0]
    assert upstream.counts["fail-2-429"] == 3


async def test_retries_honour_retry_after_as_an_http_date(upstream: FakeUpstream) -> None:
    now, sleeps = 1_700_000_000.0, Sleeps()
    upstream.retry_after = email.utils.formatdate(now + 12, usegmt=True)
    async with make_router(upstream, sleep=sleeps, clock=lambda: now) as router:
        await router.generate_candidates(body("fail-1-429"), n=2, timeout=10)
    assert sleeps.delays == [12.0]


async def test_retries_back_off_with_jitter_and_stop(upstream: FakeUpstream) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, base_delay=0.5, max_delay=8)
    async with make_router(upstream, sleep=sleeps, retry=policy) as router:
        with pytest.raises(UpstreamError) as caught:
            await router.complete(body("always-500"), timeout=10)
        assert caught.value.status == 500 and upstream.counts["always-500"] == 3
        with pytest.raises(UpstreamError):
            await router.complete(body("always-400"), timeout=10)  # not retryable: one call
    assert upstream.counts["always-400"] == 1
    assert len(sleeps.delays) == 2 and 0.25 <= sleeps.delays[0] <= 0.5 and 0.5 <= sleeps.delays[1] <= 1.0


async def test_fallbacks_retry_only_the_failed_candidates(upstream: FakeUpstream) -> None:
    fallbacks = {"always-500": ["fake:ok"], "nth-fail": ["fake:ok"]}
    async with make_router(upstream, native_n=False, fallbacks=fallbacks, retry=RetryPolicy(attempts=1)) as router:
        assert (await router.complete(body("always-500"), timeout=10))["model"] == "ok"
        candidates = await router.generate_candidates(body("nth-fail"), n=3, timeout=10)
    assert all(isinstance(c, Candidate) for c in candidates)
    assert sorted(c.model for c in candidates if isinstance(c, Candidate)) == ["fake:ok", "nth-fail", "nth-fail"]
    assert upstream.counts["ok"] == 2  # one for complete, one for the single failed candidate


@pytest.mark.parametrize("native_n", [True, False])
async def test_cancelling_candidates_aborts_every_upstream_call(upstream: FakeUpstream, native_n: bool) -> None:
    async with make_router(upstream, native_n=native_n) as router:
        task = asyncio.create_task(router.generate_candidates(body("hold"), n=3, timeout=30))
        calls = 1 if native_n else 3
        await until(lambda: upstream.active == calls)
        task.cancel()  # what a client disconnect does to the request's task
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: upstream.cancelled == calls and upstream.active == 0)
        leftovers = [t for t in asyncio.all_tasks() if "Router" in getattr(t.get_coro(), "__qualname__", "")]
        assert leftovers == []
