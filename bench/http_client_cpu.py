"""CPU per call of the gateway's HTTP clients on its hot path: gateway.http1 against aiohttp's client (its peer, what
the gateway used before) and httpx, in the same run.

A raw asyncio server in a separate process (pinned to the other CPU when there are two) answers every POST at once
with a fixed chat completion (~600 bytes) on keep-alive connections; the client process, pinned to one CPU, sends
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
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "fake",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 80}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 80, "total_tokens": 100},
}).encode()  # fmt: skip
REQUEST = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "How do I reset my password?"}]})

SERVER = r"""
import asyncio, sys
body = sys.stdin.buffer.read()
reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(reply)
async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.sleep(3600)
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""

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
        assert json.loads(await call())["id"] == "chatcmpl-bench"

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = (os.cpu_count() or 1) >= 2
    server = subprocess.Popen(
        [*(["taskset", "-c", "1"] if two else []), sys.executable, "-c", SERVER, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(ANSWER)
    server.stdin.close()
    server.stdout.readline()
    if two:
        os.sched_setaffinity(0, {0})
    try:
        try:
            import uvloop

            results = uvloop.run(run(args, f"http://127.0.0.1:{port}/v1/chat/completions"))
        except ImportError:
            results = asyncio.run(run(args, f"http://127.0.0.1:{port}/v1/chat/completions"))
    finally:
        server.kill()
    base = statistics.median(results["http1"]) if "http1" in results else None
    print(f"client CPU per call, {args.calls} calls x {args.rounds} rounds, {args.concurrency} concurrent callers, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for name, values in results.items():
        median = statistics.median(values)
        ratio = f"  {median / base:.2f}x http1's" if base else ""
        print(f"  {name:8s} {median:7.1f} us  (rounds: {', '.join(f'{v:.1f}' for v in values)}){ratio}")


if __name__ == "__main__":
    main()
