"""The reward-model criteria's client of reward servers (DESIGN contract 3): `RewardHttp`, the two calls the criteria
make (POST /v1/score, GET /v1/models) as bytes in, status and bytes out, and its two implementations.

- `RewardServers`: networked reward servers, spread over several URLs with retries; plain-http ones through
  gateway.http1's keep-alive pools (a third of aiohttp's client CPU per call, bench/http_client_cpu.py),
  https ones through aiohttp's. No httpx on this path: its request and response objects, URL merging and cookie
  handling around each scoring call took a third of the gateway's CPU per best-of-4 request (and httpx 0.28's pool
  scanned every connection on each request, encode/httpx#3215).
- `HttpxReward`: an `httpx.AsyncClient` behind the same interface, for embedded mode (the reward app in this process
  through `httpx.ASGITransport`) and for tests (`httpx.MockTransport`).

`reward_server_url` may hold several comma-separated URLs (replicas), or one Kubernetes Service URL (then the
Service spreads and this client only retries). A request goes to the next URL in turn; on a connection error, a
timeout, or a 429/502/503/504 answer it is retried on the following URLs (each at most once), and the last answer or
error is what the caller sees. Scoring is idempotent, so a retry never does harm. A URL that failed is skipped for
`cooldown_s` unless every URL is cooling down. Errors: `TimeoutError`, `RewardServerUnreachable` (connection refused,
reset, closed early) and `UndecodableReply` (a body that could not be read). Must not import starlette, torch or
reward_serving.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
from yarl import URL

from gateway.http1 import Http1Pool, ReplyError

logger = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_JSON_HEADERS = {"Content-Type": "application/json"}


class RewardServerUnreachable(Exception):
    """The request did not get an answer: the connection was refused, reset or closed before the reply."""


class UndecodableReply(Exception):
    """An answer came whose body could not be read (a broken compression or chunked encoding)."""


@dataclass(frozen=True)
class Reply:
    """A reward server's answer: status and the whole body (scores and listings are small)."""

    status: int
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


class RewardHttp(Protocol):
    """What the reward-model criteria need from a client of reward servers."""

    async def request(self, method: str, path: str, *, body: bytes | None = None, timeout_s: float) -> Reply: ...

    async def aclose(self) -> None: ...


# method, absolute URL, body, timeout -> reply; raises TimeoutError, RewardServerUnreachable, UndecodableReply
Send = Callable[[str, URL, bytes | None, float], Awaitable[Reply]]


class RewardServers:
    """Networked reward servers at `urls` (each `scheme://host:port[/prefix]`). `send` is injectable (tests); by
    default an http1 pool per plain-http origin and one aiohttp session for https, made on first use inside the
    running loop."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        send: Send | None = None,
        limit: int = 256,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one reward-server URL is needed")
        self.urls = [u.strip().rstrip("/") for u in urls]
        self._send = send or self._send_default
        self._limit = limit
        self._pools: dict[str, Http1Pool] = {}
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._targets: dict[tuple[int, str], URL] = {}  # parsed once: yarl's parsing is not free per request
        self._turn = itertools.count()
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failed_at = [-float("inf")] * len(self.urls)

    def _order(self) -> list[int]:
        """Every URL once, starting at the next in turn, the ones cooling down last."""
        count = len(self.urls)
        start = next(self._turn) % count
        if count == 1:
            return [0]
        order = [(start + k) % count for k in range(count)]
        now = self._clock()
        return sorted(order, key=lambda i: now - self._failed_at[i] < self._cooldown_s)

    def _target(self, i: int, path: str) -> URL:
        url = self._targets.get((i, path))
        if url is None:
            url = self._targets[i, path] = URL(self.urls[i] + path)
        return url

    async def request(self, method: str, path: str, *, body: bytes | None = None, timeout_s: float) -> Reply:
        order = self._order()
        for attempt, i in enumerate(order):
            last = attempt == len(order) - 1
            try:
                reply = await self._send(method, self._target(i, path), body, timeout_s)
            except (RewardServerUnreachable, TimeoutError) as exc:
                self._failed_at[i] = self._clock()
                if last:
                    raise
                logger.warning("reward server %s failed (%s); trying the next one", self.urls[i], type(exc).__name__)
                continue
            if reply.status in RETRY_STATUSES and not last:
                self._failed_at[i] = self._clock()
                logger.warning("reward server %s answered %d; trying the next one", self.urls[i], reply.status)
                continue
            return reply
        raise AssertionError("unreachable: the last URL returns or raises")

    async def _send_default(self, method: str, url: URL, body: bytes | None, timeout_s: float) -> Reply:
        if url.scheme != "http":
            return await self._send_aiohttp(method, url, body, timeout_s)
        origin = f"http://{url.raw_authority}"
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Http1Pool(origin, limit=self._limit)
        try:
            reply = await pool.request(method, url.raw_path_qs, body, timeout_s)
        except TimeoutError:  # an OSError too: a timeout, not a refusal
            raise
        except ReplyError as exc:  # an answer came and could not be read (before OSError: it is one)
            raise UndecodableReply(str(exc)) from exc
        except OSError as exc:  # refused, reset, closed before the reply or during it
            raise RewardServerUnreachable(f"{type(exc).__name__}: {exc}") from exc
        return Reply(reply.status, reply.body)

    async def _send_aiohttp(self, method: str, url: URL, body: bytes | None, timeout_s: float) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._limit))
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(connect=timeout_s, sock_read=timeout_s)
        try:
            async with self._session.request(
                method, url, data=body, headers=_JSON_HEADERS if body is not None else None, timeout=timeout,
                allow_redirects=False,
            ) as response:  # fmt: skip
                return Reply(response.status, await response.read())
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors (and ClientErrors): a timeout, not a refusal
            raise
        except aiohttp.ClientError as exc:  # a body cut short included: the connection closed before the reply
            raise RewardServerUnreachable(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.close()
        if self._session is not None:
            await self._session.close()


class HttpxReward:
    """An httpx client (its base_url the reward server) as a `RewardHttp`: embedded mode and tests."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(self, method: str, path: str, *, body: bytes | None = None, timeout_s: float) -> Reply:
        headers = _JSON_HEADERS if body is not None else None
        try:
            response = await self.client.request(method, path, content=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.DecodingError as exc:
            raise UndecodableReply(str(exc)) from exc
        except httpx.RequestError as exc:
            raise RewardServerUnreachable(f"{type(exc).__name__}: {exc}") from exc
        return Reply(response.status_code, response.content)

    async def aclose(self) -> None:
        await self.client.aclose()


def as_reward_http(client: RewardHttp | httpx.AsyncClient) -> RewardHttp:
    """An httpx client wrapped as `HttpxReward`; a `RewardHttp` as it is."""
    return HttpxReward(client) if isinstance(client, httpx.AsyncClient) else client


def reward_server_client(urls: str) -> RewardServers:
    """The client of the reward-model criteria for `reward_server_url` (one URL or several, comma-separated)."""
    return RewardServers([u for u in urls.split(",") if u.strip()])
