"""The reward-model criteria's client of networked reward servers: httpx's API (what the criteria are written
against, and what embedded mode serves through ASGITransport) over aiohttp's connection pool, spread over
several reward-server URLs with retries.

Why aiohttp underneath: httpx 0.28's pool scans every pooled connection on each request (encode/httpx#3215);
measured in bench/gateway_overhead.py it took half the gateway's CPU in best-of-N at 32 clients.

`reward_server_url` may hold several comma-separated URLs (replicas), or one Kubernetes Service URL (then the
Service spreads and this transport only retries). A request goes to the next URL in turn; on a connection error,
a timeout, or a 429/502/503/504 answer it is retried on the following URLs (each at most once), and the last
answer or error is what the caller sees. Scoring is idempotent, so a retry never does harm. A URL that failed is
skipped for `cooldown_s` unless every URL is cooling down. Must not import starlette, torch or reward_serving.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp
import httpx

logger = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({429, 502, 503, 504})


_HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with one aiohttp session (made on first use, inside the running loop). The whole
    response is read (scores are small); aiohttp errors become the httpx errors callers already handle."""

    def __init__(self, *, limit: int = 256) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), auto_decompress=True
            )
        timeouts = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.get("connect"), sock_read=timeouts.get("read"))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self._session.request(
                request.method, str(request.url), headers=headers, data=request.content, timeout=timeout,
                allow_redirects=False,
            ) as response:  # fmt: skip
                body = await response.read()
                kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _DECODED]
                return httpx.Response(response.status, headers=kept, content=body, request=request)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"no answer in time: {exc}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_DECODED = frozenset({"content-encoding", "content-length", "transfer-encoding"})  # aiohttp decoded the body


class SpreadTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        urls: Sequence[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one reward-server URL is needed")
        self._bases = [httpx.URL(u.rstrip("/")) for u in urls]
        self._transport = transport or AiohttpTransport()
        self._turn = itertools.count()
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failed_at = [-float("inf")] * len(self._bases)

    def _order(self) -> list[int]:
        """Every URL once, starting at the next in turn, the ones cooling down last."""
        start = next(self._turn) % len(self._bases)
        order = [(start + k) % len(self._bases) for k in range(len(self._bases))]
        now = self._clock()
        return sorted(order, key=lambda i: now - self._failed_at[i] < self._cooldown_s)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        order = self._order()
        for attempt, i in enumerate(order):
            last = attempt == len(order) - 1
            target = _rebase(request, self._bases[i])
            try:
                response = await self._transport.handle_async_request(target)
            except (httpx.TransportError, TimeoutError) as exc:
                self._failed_at[i] = self._clock()
                if last:
                    raise
                logger.warning("reward server %s failed (%s); trying the next one", self._bases[i], type(exc).__name__)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                self._failed_at[i] = self._clock()
                await response.aclose()
                logger.warning(
                    "reward server %s answered %d; trying the next one", self._bases[i], response.status_code
                )
                continue
            return response
        raise AssertionError("unreachable: the last URL returns or raises")

    async def aclose(self) -> None:
        await self._transport.aclose()


def _rebase(request: httpx.Request, base: httpx.URL) -> httpx.Request:
    """The same request sent to `base` (scheme, host, port and path prefix), with its body read once."""
    url = base.copy_with(path=base.path.rstrip("/") + request.url.path, query=request.url.query or None)
    headers = httpx.Headers(request.headers)
    headers["host"] = url.netloc.decode("ascii")
    return httpx.Request(request.method, url, headers=headers, content=request.content, extensions=request.extensions)


def reward_server_client(urls: str, *, timeout_s: float) -> httpx.AsyncClient:
    """The client of the reward-model criteria for `reward_server_url` (one URL or several, comma-separated)."""
    listed = [u.strip() for u in urls.split(",") if u.strip()]
    return httpx.AsyncClient(transport=SpreadTransport(listed), base_url="http://reward-servers", timeout=timeout_s)
