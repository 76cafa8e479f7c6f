"""The only place that calls LLM providers: one `ChatProvider` interface, its two implementations, provider config.

`OpenAICompatibleProvider` forwards the chat-completions body as-is (OpenAI, vLLM, most hosted open-model APIs): a
whole completion from a plain-http upstream (an in-cluster vLLM, TGI or LiteLLM proxy) over gateway.http1's
keep-alive pool (a third of aiohttp's client CPU per call, bench/http_client_cpu.py), streams and https upstreams
over one pooled aiohttp session; `LiteLLMProvider` translates for the rest (anthropic, gemini, bedrock...) and imports
LiteLLM lazily, off the event loop. Model names, retries, fallbacks and best-of-N candidates are the router's
(gateway.upstream.router).
The offline `local` provider (`local:smollm2`) is gateway.upstream.local, over LiteLLMProvider. Must not import
starlette, torch, transformers or trainer.

Errors (each has `status`, an OpenAI-style `code`, and `retryable`)::

    ProviderError
     ├── UnknownModelError            404  the model name's provider is not configured (the message names it)
     ├── ForbiddenFieldError          400  the body tries to choose the upstream URL, key or headers
     ├── router.AllCandidatesFailed   the first failure's status; `.errors` holds every CandidateError
     └── UpstreamError(status, msg)   the upstream's own status; retryable on 408, 409, 429 and 5xx
          ├── UpstreamAuthError         502  the provider refused the gateway's credentials (its 401/403); no retry
          ├── UpstreamTimeout           504  no answer (or, streaming, no chunk) within the timeout
          ├── UpstreamConnectionError   502  could not connect, or the connection dropped
          └── InvalidUpstreamResponse   502  a success status whose body is not a chat completion (not retried)

Timeouts: `complete`'s bounds the whole call; `stream`'s bounds connecting and each wait for the next chunk. Keys are
redacted from every error message and never shown in a repr. Streams close the upstream response in a `finally`,
however the consumer leaves (end, break, error, cancellation); consumers should still use `contextlib.aclosing`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn, Protocol, Self

import aiohttp
import orjson

from gateway.http1 import Http1Pool


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _loads(data: bytes) -> Any:
    return orjson.loads(data)


OPENAI_BASE_URL = "https://api.openai.com/v1"
# Providers LiteLLM translates for, each with the environment variables LiteLLM reads its credentials from (any
# one of them): `providers_from_env` configures a provider only when one is set, so a model of a provider with no
# credentials is refused at once (404, with this hint) instead of failing upstream after retries.
LITELLM_CREDENTIALS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "anthropic": ("ANTHROPIC_API_KEY",),
        "gemini": ("GEMINI_API_KEY",),
        "vertex_ai": ("VERTEXAI_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"),
        "bedrock": ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
        "azure": ("AZURE_API_KEY", "AZURE_AD_TOKEN"),
        "mistral": ("MISTRAL_API_KEY",),
        "cohere": ("COHERE_API_KEY", "CO_API_KEY"),
        "groq": ("GROQ_API_KEY",),
        "xai": ("XAI_API_KEY",),
    }
)
LITELLM_PROVIDERS = tuple(LITELLM_CREDENTIALS)
# What reaches LiteLLM: OpenAI chat parameters only, since LiteLLM treats many other kwargs as routing or credentials.
LITELLM_PARAMS = frozenset(
    [
        "messages",
        "model",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "reasoning_effort",
        "modalities",
        "audio",
        "prediction",
        "functions",
        "function_call",
        "web_search_options",
    ]
)
DONE = b"data: [DONE]\n\n"


class ProviderError(Exception):
    status = 502
    code = "provider_error"
    retryable = False


class UnknownModelError(ProviderError):
    status = 404
    code = "model_not_found"


class ForbiddenFieldError(ProviderError):
    status = 400
    code = "forbidden_field"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field  # the first field at fault: the answer's `param`


class UpstreamError(ProviderError):
    code = "upstream_error"

    def __init__(self, status: int, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # the raw Retry-After header, parsed by the router against its clock
        self.retryable = status in (408, 409, 429) or status >= 500


class UpstreamAuthError(UpstreamError):
    """The provider refused the gateway's own credentials (its 401/403): the operator's problem, not the client's,
    so not the 401 the gateway answers for a bad gateway key. Never retried; the key is never named."""

    code = "upstream_auth_error"

    def __init__(self, message: str) -> None:
        super().__init__(502, message)
        self.retryable = False


class UpstreamTimeout(UpstreamError):
    code = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(504, message)


class UpstreamConnectionError(UpstreamError):
    code = "connection_error"

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


class InvalidUpstreamResponse(UpstreamError):
    code = "invalid_response"

    def __init__(self, message: str) -> None:
        super().__init__(502, message)
        self.retryable = False


@dataclass(frozen=True)
class ProviderConfig:
    """One configured provider. The key is sent as `Authorization: Bearer` (direct) or to LiteLLM, never shown."""

    name: str
    kind: Literal["openai", "litellm"] = "openai"
    base_url: str | None = None  # required for "openai"; an optional api_base override for "litellm"
    api_key: str | None = field(default=None, repr=False)
    native_n: bool | None = None  # does the upstream honour `n`? default: yes for "openai", no for "litellm"
    litellm_provider: str | None = None  # LiteLLM's provider prefix; defaults to `name`
    max_connections: int = 100

    @property
    def supports_n(self) -> bool:
        return self.kind == "openai" if self.native_n is None else self.native_n


def providers_from_env(environ: Mapping[str, str] | None = None) -> list[ProviderConfig]:
    """OpenAI from OPENAI_API_KEY / OPENAI_BASE_URL, plus each LiteLLM provider whose credentials are set. Called
    explicitly, never at import."""
    env = os.environ if environ is None else environ
    openai = ProviderConfig(
        "openai", "openai", env.get("OPENAI_BASE_URL") or OPENAI_BASE_URL, env.get("OPENAI_API_KEY")
    )
    credentialed = [name for name, names in LITELLM_CREDENTIALS.items() if any(env.get(n) for n in names)]
    return [openai, *(ProviderConfig(name, "litellm") for name in credentialed)]


def credentials_hint(provider: str) -> str:
    """How to configure a LiteLLM provider the gateway knows but has no credentials for ("" for other names)."""
    names = LITELLM_CREDENTIALS.get(provider)
    return f" (to use {provider}, set {' or '.join(names)} where the gateway runs)" if names else ""


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-style error envelope (`{"error": {"message": ...}}`, or vLLM's older flat one)."""
    try:
        data = _loads(raw)
    except ValueError:
        return raw[:500].decode(errors="replace")
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message)[:500]


class ChatProvider(Protocol):
    """What the router needs from a provider. `body` is a chat-completions body whose `model` is already the
    upstream's name; both calls raise only UpstreamError subclasses for upstream failures."""

    @property
    def name(self) -> str: ...
    @property
    def native_n(self) -> bool: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def complete(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any]: ...
    def stream(self, body: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]: ...


class _Lifecycle:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class OpenAICompatibleProvider(_Lifecycle):
    """The direct path: the body goes out as-is, the upstream's JSON (parsed) or SSE bytes (raw) come back."""

    def __init__(self, config: ProviderConfig, session: aiohttp.ClientSession | None = None) -> None:
        if not config.base_url:
            raise ValueError(f"provider {config.name!r}: an OpenAI-compatible provider needs a base_url")
        self.name = config.name
        self.native_n = config.supports_n
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._key = config.api_key
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._max_connections = config.max_connections
        self._session = session
        self._owns_session = session is None
        self._fast: Http1Pool | None = None  # whole completions from a plain-http upstream (start() makes it)
        origin, _, path = self._url.partition("://")[2].partition("/")
        self._fast_origin = f"http://{origin}" if self._url.startswith("http://") else None
        self._fast_path = "/" + path

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self.name!r}, url={self._url!r})"

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
        if self._fast is None and self._fast_origin is not None:
            auth = {k: v for k, v in self._headers.items() if k != "Content-Type"}  # http1 sends the body's own
            self._fast = Http1Pool(self._fast_origin, limit=self._max_connections, headers=auth)

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
            self._fast = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _post(self, body: Mapping[str, Any], timeout: aiohttp.ClientTimeout) -> Any:
        if self._session is None:
            raise RuntimeError(f"provider {self.name!r} is not started: use `async with` or `await start()`")
        return self._session.post(self._url, data=_dumps(body), headers=self._headers, timeout=timeout)

    def _failure(self, err: BaseException, timeout: float) -> UpstreamError:
        if isinstance(err, TimeoutError):  # before ClientError: aiohttp's timeouts are both
            return UpstreamTimeout(f"{self.name}: no answer within {timeout:g} s")
        return UpstreamConnectionError(_redact(f"{self.name}: {type(err).__name__}: {err}", self._key))

    def _status_error(self, status: int, raw: bytes, retry_after: str | None) -> UpstreamError:
        message = _redact(f"{self.name}: {_error_message(raw)}", self._key)
        if status in (401, 403):
            return UpstreamAuthError(f"{message} (the provider refused the gateway's credentials: {status})")
        return UpstreamError(status, message, retry_after=retry_after)

    async def complete(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        try:
            if self._fast is not None:
                reply = await self._fast.request("POST", self._fast_path, _dumps(body), timeout)
                status, raw, retry_after = reply.status, reply.body, reply.header("Retry-After")
            else:
                async with self._post(body, aiohttp.ClientTimeout(total=timeout)) as resp:
                    status, raw, retry_after = resp.status, await resp.read(), resp.headers.get("Retry-After")
        except (TimeoutError, OSError, aiohttp.ClientError) as err:  # http1's are OSErrors
            raise self._failure(err, timeout) from err
        if status >= 400:
            raise self._status_error(status, raw, retry_after)
        try:
            data = _loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise InvalidUpstreamResponse(f"{self.name}: the upstream's answer is not a chat completion")
        return data

    async def stream(self, body: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]:
        idle = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        try:
            resp = await self._post(body, idle)
        except (TimeoutError, aiohttp.ClientError) as err:
            raise self._failure(err, timeout) from err
        try:  # the finally closes the upstream response however the consumer leaves: done, break, error, cancel
            if resp.status >= 400:
                raise self._status_error(resp.status, await resp.read(), resp.headers.get("Retry-After"))
            async for chunk in resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as err:
            raise self._failure(err, timeout) from err
        finally:
            resp.close()  # a no-op once the body was read whole; otherwise drops the connection


def import_acompletion() -> Callable[..., Awaitable[Any]]:
    """LiteLLM imported with the gateway's settings (local cost map, no debug banner): its `acompletion`. Slow
    (seconds): call it off the event loop."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before the import: never fetch the cost map
    import litellm

    litellm.suppress_debug_info = True  # else every error prints a banner on stdout
    acompletion: Callable[..., Awaitable[Any]] = litellm.acompletion
    return acompletion


class LiteLLMProvider(_Lifecycle):
    """Providers that need translation. LiteLLM is imported on first use, off the event loop (it takes seconds)."""

    def __init__(self, config: ProviderConfig, acompletion: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.name = config.name
        self.native_n = config.supports_n
        self._prefix = config.litellm_provider or config.name
        self._key = config.api_key
        self._base_url = config.base_url
        self._acompletion = acompletion

    def __repr__(self) -> str:
        return f"LiteLLMProvider(name={self.name!r}, litellm_provider={self._prefix!r})"

    async def _call(self, body: Mapping[str, Any], timeout: float, **extra: Any) -> Any:
        if self._acompletion is None:
            self._acompletion = await asyncio.to_thread(import_acompletion)
        kwargs = {k: v for k, v in body.items() if k in LITELLM_PARAMS}
        kwargs.update(extra, model=f"{self._prefix}/{body['model']}", timeout=timeout, num_retries=0, max_retries=0)
        if self._key:
            kwargs["api_key"] = self._key
        if self._base_url:
            kwargs["api_base"] = self._base_url
        try:
            async with asyncio.timeout(timeout):
                return await self._acompletion(**kwargs)
        except Exception as err:
            self._reraise(err, timeout)

    def _reraise(self, err: Exception, timeout: float) -> NoReturn:
        """LiteLLM raises openai.APIError subclasses: -> our UpstreamError tree. Anything else propagates as is."""
        import openai  # a LiteLLM dependency, already imported by it

        if isinstance(err, TimeoutError | openai.APITimeoutError):
            raise UpstreamTimeout(f"{self.name}: no answer within {timeout:g} s") from err
        # `from None`: LiteLLM's exception text may quote the upstream's answer, key included, in a logged traceback
        if isinstance(err, openai.APIConnectionError):
            raise UpstreamConnectionError(_redact(f"{self.name}: {err}", self._key)) from None
        if isinstance(err, openai.APIError):
            status = getattr(err, "status_code", None)
            headers = getattr(getattr(err, "response", None), "headers", None)
            retry_after = headers.get("retry-after") if headers is not None else None
            message = _redact(f"{self.name}: {err.message}", self._key)
            if status in (401, 403):
                refused = f"{message} (the provider refused the gateway's credentials: {status})"
                raise UpstreamAuthError(refused) from None
            raise UpstreamError(status if isinstance(status, int) else 502, message, retry_after=retry_after) from None
        raise err

    async def complete(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        response = await self._call(body, timeout)
        return dict(response.model_dump())

    async def stream(self, body: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]:
        response = await self._call(body, timeout, stream=True)
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await anext(response)
                except StopAsyncIteration:
                    break
                except Exception as err:
                    self._reraise(err, timeout)
                yield b"data: " + _dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"
            yield DONE
        finally:
            await response.aclose()


def build_provider(config: ProviderConfig) -> ChatProvider:
    return OpenAICompatibleProvider(config) if config.kind == "openai" else LiteLLMProvider(config)
