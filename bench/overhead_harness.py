"""The harness of bench/gateway_overhead.py: the fake upstream it runs, the servers it starts, and wrk.

The fake upstream (`python bench/overhead_harness.py --port P [--latency-ms 20]`) is an OpenAI-compatible chat
server that answers after a fixed latency and, on the same port, a trivial reward server (contract 3) that scores
every candidate at once: a raw asyncio HTTP/1.1 server (keep-alive, Content-Length bodies, no pipelining), so that it
takes little of the load generator's core. Routes: POST /v1/chat/completions (honours `n`), POST /v1/score,
GET /v1/models (one reward model, `SCORER_SLUG@v1`), GET /health. `Server` is a started process pinned to one CPU:
its CPU time (from /proc), pause and resume. Also: wrk runs, per-CPU busy shares, and the gateway's
rewardgate_overhead_seconds histogram. Imports nothing from the project or from tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson  # a core dependency of the project

SCORER_SLUG = "bench-trivial"
ANSWERS = (
    "Open settings, choose security, then reset your password.",
    "Go to the login page and click 'forgot password'.",
    "Thanks for reaching out! Your order ships tomorrow.",
    "Settings, then security, then 'reset password'.",
)
MODELS = {
    "object": "list",
    "data": [
        {
            "id": f"{SCORER_SLUG}@v1",
            "object": "model",
            "slug": SCORER_SLUG,
            "version": "v1",
            "latest": True,
            "loaded": True,
            "reward_stats": {"mean": 0.0, "std": 1.0, "count": 0},
        }
    ],
}


def completion(n: int) -> bytes:
    """A chat completion with `n` choices, the same bytes every time for the same n."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]},
            "logprobs": None,
            "finish_reason": "stop",
        }
        for i in range(n)
    ]
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "fake",
            "choices": choices,
            "usage": {"prompt_tokens": 12, "completion_tokens": 12 * n, "total_tokens": 12 + 12 * n},
            "system_fingerprint": "fp_fake",
        }
    ).encode()


def scores(count: int) -> bytes:
    data = [{"index": i, "score": -0.001 * i} for i in range(count)]  # distinct, so the ranking is deterministic
    return json.dumps({"model": SCORER_SLUG, "version": "v1", "data": data, "usage": {"prompt_tokens": 0}}).encode()


def response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class HttpServer(asyncio.Protocol):
    """One connection: requests are parsed as they arrive; chat answers are written `latency_s` later."""

    def __init__(self, latency_s: float, cache: dict[int, bytes]) -> None:
        self._latency_s = latency_s
        self._cache = cache
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            method, path, _ = head[0].split(" ", 2)
            self._route(method, path, body)

    def _send(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(payload)

    def _route(self, method: str, path: str, body: bytes) -> None:
        if method == "POST" and path.endswith("/chat/completions"):
            n = int(orjson.loads(body).get("n") or 1)
            if n not in self._cache:
                self._cache[n] = response(200, completion(n))
            self._loop.call_later(self._latency_s, self._send, self._cache[n])
        elif method == "POST" and path == "/v1/score":
            self._send(response(200, scores(len(orjson.loads(body)["conversations"]))))
        elif method == "GET" and path == "/v1/models":
            self._send(response(200, json.dumps(MODELS).encode()))
        elif method == "GET" and path == "/health":
            self._send(response(200, b'{"status":"ok"}'))
        else:
            self._send(response(404, b'{"error":{"message":"not found"}}'))


async def serve(port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    cache: dict[int, bytes] = {}
    server = await loop.create_server(lambda: HttpServer(latency_ms / 1000, cache), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- the bench's side: processes and HTTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class Server:
    """A started process (its own session, pinned to one CPU) and its base URL."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return str(response.read().decode())

    def wait_ready(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; its log: {self.log}")
            try:
                self.get_text(path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s; its log: {self.log}") from None
                time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """user + system time so far of every live process in the server's session (it started one)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
            except (OSError, IndexError):  # the process ended meanwhile
                continue
            if int(fields[3]) == self.process.pid:  # session id
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout_s: float = 10.0, interval_s: float = 0.1, busy_s: float = 0.005) -> None:
        """Until the server uses under `busy_s` of CPU in `interval_s`: the requests a load generator left in flight
        are done. Pausing a server with requests in flight breaks them: after a stop of over 5 s, httpx's pool
        (keep-alive expiry 5 s) fails an in-flight call with ReadError."""
        deadline = time.monotonic() + timeout_s
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            now = self.cpu_seconds()
            if now - last < busy_s:
                return
            last = now

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(name: str, command: list[str], cpu: int | str, url: str, env: Mapping[str, str], work: Path) -> Server:
    """`command` under `taskset -c cpu` (one CPU, or a list such as "0,1"), in a session of its own (so pause/stop
    reach all its processes), run in `work`, its output in work/<name>.log."""
    log = work / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", str(cpu), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=work,
            start_new_session=True,
        )
    return Server(name, process, url, log)


def lua_script(body: Mapping[str, Any], headers: Mapping[str, str], path: Path) -> Path:
    """wrk's script: the POST body and headers, and a JSON summary line printed by done()."""
    lines = "".join(f'wrk.headers["{k}"] = [==[{v}]==]\n' for k, v in headers.items())
    path.write_text(
        f"""wrk.method = "POST"
wrk.body = [==[{json.dumps(body)}]==]
wrk.headers["Content-Type"] = "application/json"
{lines}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""
    )
    return path


def run_wrk(url: str, script: Path, concurrency: int, seconds: int, cpu: int) -> dict[str, Any]:
    """One closed-loop wrk run on `cpu`: one thread, one keep-alive connection per client."""
    command = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s"]
    command += ["--timeout", "10s", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {result.stdout}{result.stderr}")
    return dict(json.loads(line.removeprefix("WRKJSON ")))


def cpu_ticks() -> list[tuple[int, int]]:
    """(busy, total) clock ticks so far of each CPU, from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            ticks = [int(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            out.append((sum(ticks) - ticks[3] - ticks[4], sum(ticks)))
    return out


def busy_fractions(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    """Each CPU's busy share between two cpu_ticks() snapshots: this bench's processes and anyone else's."""
    return [round((a[0] - b[0]) / (a[1] - b[1]), 3) if a[1] > b[1] else 0.0 for b, a in zip(before, after, strict=True)]


def interpreter_info(python: str) -> dict[str, Any]:
    """What uvicorn's loop="auto" and http="auto" will pick in that interpreter."""
    code = (
        "import importlib.util as u, sys, json; print(json.dumps({'python': sys.version.split()[0], "
        "'uvloop': u.find_spec('uvloop') is not None, 'httptools': u.find_spec('httptools') is not None}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


_BUCKET = re.compile(r"^rewardgate_overhead_seconds_bucket\{(.*)\} (\S+)$")


def overhead_buckets(base_url: str) -> dict[str, list[tuple[float, float]]]:
    """The gateway's rewardgate_overhead_seconds histogram: mode -> [(upper bound, cumulative count)]."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    modes: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            modes.setdefault(labels["mode"], {})[float(labels["le"])] = float(match.group(2))
    return {mode: sorted(buckets.items()) for mode, buckets in modes.items()}


def histogram_quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over the observations between two scrapes (linear within a bucket)."""
    earlier = dict(before)
    buckets = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the fake upstream and reward server of bench/gateway_overhead.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="chat completions answer after this")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.latency_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
