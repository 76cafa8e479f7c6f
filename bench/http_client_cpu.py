"""CPU per call of the gateway's HTTP clients on its hot path: gateway.http1 against aiohttp's client (its peer, what
the gateway used before) and httpx, in the same run.

bench/gateway_overhead.py's fake upstream (bench/overhead_harness.py, a raw asyncio server) with no latency, on CPU
1, answers every POST with a fixed chat completion on keep-alive connections; the client process, on CPU 0, sends
--calls POSTs of a small chat-completions body from --concurrency concurrent callers through each client in turn,
--rounds times, alternating the order. CPU per call = the client process's user+sys time / calls; the median over
rounds is printed with the ratio to http1.

Run: python bench/http_client_cpu.py [--calls 5000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the harness
from overhead_harness import free_port, start

REQUEST = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "How do I reset my password?"}]})

Call = Callable[[], Awaitable[bytes]]


async def http1_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from gateway.http1 import Http1Pool

    origin, _, path = url.partition("://")[2].partition("/")
    pool = Http1Pool(f"http://{origin}", limit=100, headers={"Authorization": "Bearer sk-bench"})
    body = REQUEST.encode()

    async def call() -> bytes:
        return (await pool.request("POST", "/" + path, body, 30)).body

    return call, pool.close


async def aiohttp_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    body = REQUEST.encode()

    async def call() -> bytes:  # as the gateway called it before http1 (gateway/upstream/providers.py)
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return await resp.read()

    return call, session.close


async def httpx_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    body = REQUEST.encode()

    async def call() -> bytes:
        return (await client.post(url, content=body, headers=headers)).content

    return call, client.aclose


CLIENTS = {"http1": http1_client, "aiohttp": aiohttp_client, "httpx": httpx_client}


async def measure(name: str, url: str, calls: int, concurrency: int) -> float:
    call, close = await CLIENTS[name](url)
    try:
        assert json.loads(await call())["choices"][0]["message"]["content"]

        async def caller(count: int) -> None:
            for _ in range(count):
                await call()

        await asyncio.gather(*(caller(20) for _ in range(concurrency)))  # warm: every connection open
        per = calls // concurrency
        started = time.process_time()
        await asyncio.gather(*(caller(per) for _ in range(concurrency)))
        return (time.process_time() - started) / (per * concurrency) * 1e6
    finally:
        await close()


async def run(args: argparse.Namespace, url: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in args.clients}
    for r in range(args.rounds):
        order = args.clients if r % 2 == 0 else list(reversed(args.clients))
        for name in order:
            results[name].append(await measure(name, url, args.calls, args.concurrency))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="http1,aiohttp,httpx")
    args = parser.parse_args()
    args.clients = args.clients.split(",")
    port = free_port()
    harness = [sys.executable, str(Path(__file__).resolve().parent / "overhead_harness.py"), "--port", str(port)]
    work = Path(tempfile.mkdtemp(prefix="rewardgate-http-client-"))
    url = f"http://127.0.0.1:{port}"
    server = start("upstream", [*harness, "--latency-ms", "0"], 1, url, {}, work)
    os.sched_setaffinity(0, {0})
    try:
        server.wait_ready("/health", timeout_s=60)
        try:
            import uvloop

            results = uvloop.run(run(args, url + "/v1/chat/completions"))
        except ImportError:
            results = asyncio.run(run(args, url + "/v1/chat/completions"))
    finally:
        server.stop()
    base = statistics.median(results["http1"]) if "http1" in results else None
    print(f"client CPU per call, {args.calls} calls x {args.rounds} rounds, {args.concurrency} concurrent callers, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for name, values in results.items():
        median = statistics.median(values)
        ratio = f"  {median / base:.2f}x http1's" if base else ""
        print(f"  {name:8s} {median:7.1f} us  (rounds: {', '.join(f'{v:.1f}' for v in values)}){ratio}")


if __name__ == "__main__":
    main()
