"""Soak (issue 7): sustained concurrent load on a real `python -m gateway serve` over loopback, bounded in request
count and in time; every answer checked, the gateway's memory (RSS) sampled, the stored logs counted at the end.

Processes (bench/overhead_harness.py's): its fake upstream + trivial reward server on one port (chat answers after
--latency-ms, scores at once), and the gateway (SQLite store in a temp dir, networked reward server = the fake),
pinned to --gateway-cpu; this script (the load generator: asyncio + aiohttp, --concurrency clients in a closed
loop, keep-alive) and the fake on --load-cpu. The mix, by request number: 4 in 10 best-of-4 with `op-criteria` and
store: true, 3 in 10 pass-through with store: true, 3 in 10 pass-through without.

Order: --warmup requests (not counted), RSS baseline, --requests measured requests (RSS sampled every
--sample-every answers), the gateway left to go idle, final RSS. An error is any answer that is not a 200 with the
expected shape: a transport error, another status, a missing log_id, a criterion that did not succeed. At the end
the SQLite file must hold one log per stored request, a sample of logs must read back as answered, and the
gateway must report no criterion errors. Exit status 1 when anything fails or RSS grew by --max-growth or more.

Run: python bench/soak.py [--requests 20000 --concurrency 32 --max-seconds 900] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the harness module
from overhead_harness import SCORER_SLUG, Server, free_port, start

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "How do I reset my password?"},
]
MIX = ("best_of_4",) * 4 + ("passthrough_stored",) * 3 + ("passthrough",) * 3  # by request number mod 10
N = 4


@dataclass
class Tally:
    """What the load generator saw: latencies per kind, errors (with the first few examples), stored log ids."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in set(MIX)})
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    stored: int = 0  # answers that carried a log_id
    sampled: dict[str, dict[str, Any]] = field(default_factory=dict)  # log_id -> reply, for the read-back check

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.examples) < 10:
            self.examples.append(what)


def request_for(seq: int) -> tuple[str, dict[str, Any], dict[str, str]]:
    kind = MIX[seq % len(MIX)]
    body: dict[str, Any] = {"model": "openai:fake", "messages": MESSAGES, "max_tokens": 16}
    headers: dict[str, str] = {}
    if kind == "best_of_4":
        body |= {"n": N, "store": True, "metadata": {"soak": "1", "seq": str(seq)}}
        headers["op-criteria"] = json.dumps([SCORER_SLUG])
    elif kind == "passthrough_stored":
        body |= {"store": True, "metadata": {"soak": "1", "seq": str(seq)}}
    return kind, body, headers


def problem(kind: str, reply: dict[str, Any]) -> str | None:
    """Why an answer (a 200) is not what `kind` must get; None when it is."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or len(choices) != (N if kind == "best_of_4" else 1):
        return f"{kind}: {len(choices) if isinstance(choices, list) else 'no'} choices"
    if kind != "passthrough" and not (reply.get("rewardgate") or {}).get("log_id"):
        return f"{kind}: no log_id"
    if kind == "best_of_4":
        results = [c.get("criteria_results", {}).get(SCORER_SLUG, {}) for c in choices]
        if any(r.get("status") != "success" for r in results) or choices[0].get("finish_reason") != "stop":
            return f"{kind}: a candidate not scored: {results}"
    return None


async def load(
    url: str, first: int, count: int, concurrency: int, deadline: float, tally: Tally, on_answer: Any = None
) -> int:
    """Requests `first` .. `first + count - 1` from `concurrency` closed-loop clients; stops early at `deadline`
    (monotonic). Returns the number answered (good or not)."""
    sequence = iter(range(first, first + count))
    done = 0
    rng = random.Random(first)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as http:

        async def client() -> None:
            nonlocal done
            for seq in sequence:
                if time.monotonic() > deadline:
                    return
                kind, body, headers = request_for(seq)
                await one(kind, seq, body, headers)
                done += 1
                if on_answer is not None:
                    on_answer(done)

        async def one(kind: str, seq: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            started = time.perf_counter()
            try:
                async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.error(f"{kind} #{seq}: {type(exc).__name__}: {exc}")
                return
            tally.latencies[kind].append(time.perf_counter() - started)
            if status != 200:
                tally.error(f"{kind} #{seq}: HTTP {status}: {raw[:200]!r}")
                return
            reply = json.loads(raw)
            why = problem(kind, reply)
            if why is not None:
                tally.error(f"#{seq} {why}")
            elif kind != "passthrough":
                tally.stored += 1
                if rng.random() < 0.02:
                    tally.sampled[reply["rewardgate"]["log_id"]] = reply

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the process, in kB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"count": len(ordered), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def slope_kb_per_1k(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS against answers over the second half of the run: a leak shows as a steady
    climb even while the total growth is small."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return None
    xs, ys = [s["answered"] for s in half], [s["rss_kb"] for s in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else round(1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var, 1)


def read_back(gateway: Server, sampled: dict[str, dict[str, Any]]) -> list[str]:
    """Each sampled log as stored: its candidates' messages are the choices the client got, in the same order."""
    problems = []
    for log_id, reply in sampled.items():
        log = json.loads(gateway.get_text(f"/v1/logs/{log_id}"))
        stored = [c["message"] for c in log["candidates"]]
        if stored != [c["message"] for c in reply["choices"]]:
            problems.append(f"{log_id}: stored candidates differ from the answer")
    return problems


def main(args: argparse.Namespace) -> int:
    if shutil.which("taskset") is None or not {args.gateway_cpu, args.load_cpu} <= os.sched_getaffinity(0):
        print(f"needs taskset and CPUs {args.gateway_cpu} and {args.load_cpu}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.load_cpu})  # the load generator beside the fake, off the gateway's core
    work = Path(tempfile.mkdtemp(prefix="rewardgate-soak-"))
    load_start, started = os.getloadavg(), time.monotonic()
    deadline = started + args.max_seconds
    up = f"http://127.0.0.1:{free_port()}"
    fake = [sys.executable, str(ROOT / "bench" / "overhead_harness.py"), "--port", up.rsplit(":", 1)[1]]
    servers = [start("upstream", [*fake, "--latency-ms", str(args.latency_ms)], args.load_cpu, up, {}, work)]
    port = free_port()
    gateway_cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    gateway_cmd += ["--store-url", f"sqlite:///{work / 'logs.db'}", "--reward-server-url", up, "--log-level", "warning"]
    gateway_cmd += ["--models-dir", str(work / "models"), "--jobs-dir", str(work / "jobs")]
    env = {"OPENAI_BASE_URL": up + "/v1", "OPENAI_API_KEY": "sk-fake", "PYTHONPATH": str(ROOT)}
    servers.append(start("gateway", gateway_cmd, args.gateway_cpu, f"http://127.0.0.1:{port}", env, work))
    gateway = servers[1]
    print(
        f"soak: {args.requests} requests (+{args.warmup} warm-up) at concurrency {args.concurrency}, upstream "
        f"latency {args.latency_ms:g} ms, at most {args.max_seconds} s; load average "
        f"{' '.join(f'{x:.2f}' for x in load_start)}",
        flush=True,
    )
    samples: list[dict[str, Any]] = []
    tally = Tally()
    try:
        for server in servers:
            server.wait_ready("/health", timeout_s=60)
        pid = gateway.process.pid
        warm = Tally()
        asyncio.run(load(gateway.url, 0, args.warmup, args.concurrency, deadline, warm))
        gateway.wait_idle()
        baseline, _ = rss_kb(pid)
        samples.append({"answered": 0, "rss_kb": baseline, "seconds": 0.0})
        measured_at = time.monotonic()

        def sample(answered: int) -> None:
            if answered % args.sample_every == 0:
                elapsed = round(time.monotonic() - measured_at, 1)
                samples.append({"answered": answered, "rss_kb": rss_kb(pid)[0], "seconds": elapsed})
                if answered % (args.sample_every * 5) == 0:
                    print(f"  {answered} answered, {tally.errors} errors, RSS {samples[-1]['rss_kb']} kB", flush=True)

        answered = asyncio.run(
            load(gateway.url, args.warmup, args.requests, args.concurrency, deadline, tally, on_answer=sample)
        )
        seconds = time.monotonic() - measured_at
        gateway.wait_idle()
        final, peak = rss_kb(pid)
        samples.append({"answered": answered, "rss_kb": final, "seconds": round(seconds, 1)})
        with sqlite3.connect(work / "logs.db") as db:
            logs_in_db = int(db.execute("SELECT count(*) FROM logs").fetchone()[0])
            integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        readback = read_back(gateway, tally.sampled)
        metrics = gateway.get_text("/metrics").splitlines()
    finally:
        for server in reversed(servers):
            server.stop()

    criterion_errors = [m for m in metrics if m.startswith("rewardgate_criterion_errors_total{")]
    non_200 = [m for m in metrics if re.match(r'rewardgate_requests_total\{.*status="(?!200")', m)]
    growth = 100 * (final - baseline) / baseline
    expected_logs = warm.stored + tally.stored
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu_count": os.cpu_count(), "kernel": platform.release(), "cpu": _cpu_model()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "settings": vars(args),
        "requests": answered,
        "complete": answered == args.requests,
        "seconds": round(seconds, 1),
        "requests_per_s": round(answered / seconds, 1),
        "errors": tally.errors + warm.errors,
        "error_examples": tally.examples + warm.examples,
        "latency": {kind: percentiles(values) for kind, values in sorted(tally.latencies.items())},
        "rss_kb": {
            "after_warmup": baseline,
            "end": final,
            "peak": peak,
            "growth_percent": round(growth, 2),
            "slope_kb_per_1k_requests_second_half": slope_kb_per_1k(samples),
        },
        "rss_samples": samples,
        "store": {
            "logs_expected": expected_logs,
            "logs_in_db": logs_in_db,
            "integrity_check": integrity,
            "read_back_checked": len(tally.sampled),
            "read_back_problems": readback,
        },
        "gateway_criterion_errors": criterion_errors,
        "gateway_non_200_counters": non_200,
    }
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=2) + "\n")
    failures = [
        *(["incomplete: hit --max-seconds"] if not record["complete"] else []),
        *([f"{record['errors']} errors"] if record["errors"] else []),
        *([f"RSS grew {growth:.2f} % (limit {args.max_growth:g} %)"] if growth >= args.max_growth else []),
        *([f"{logs_in_db} logs stored, {expected_logs} expected"] if logs_in_db != expected_logs else []),
        *([f"integrity_check: {integrity}"] if integrity != "ok" else []),
        *readback,
        *criterion_errors,
        *non_200,
    ]
    print(_report(record))
    print(f"raw results: {out}")
    if failures:
        print("FAIL:", *failures, sep="\n  ")
        print(f"the servers' logs are in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("PASS")
    return 0


def _report(r: dict[str, Any]) -> str:
    rss = r["rss_kb"]
    lines = [
        f"{r['requests']} requests in {r['seconds']} s ({r['requests_per_s']} req/s), {r['errors']} errors",
        f"RSS after warm-up {rss['after_warmup']} kB, at the end {rss['end']} kB ({rss['growth_percent']:+.2f} %), "
        f"peak {rss['peak']} kB; slope over the second half {rss['slope_kb_per_1k_requests_second_half']} kB/1K req",
        *(
            f"  {k:<20} {v['count']:>6} requests  p50 {v['p50_ms']} ms  p99 {v['p99_ms']} ms  max {v['max_ms']} ms"
            for k, v in r["latency"].items()
        ),
        f"store: {r['store']['logs_in_db']} logs (expected {r['store']['logs_expected']}), integrity "
        f"{r['store']['integrity_check']}, {r['store']['read_back_checked']} read back",
        f"load average at start {' '.join(f'{x:.2f}' for x in r['loadavg_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in r['loadavg_end'])}",
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 requests after 500 warm-up")
    parser.add_argument("--requests", type=int, default=20000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before the RSS baseline, not counted")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake upstream's fixed latency")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop (and fail) past this, warm-up included")
    parser.add_argument("--sample-every", type=int, default=500, help="RSS sample every this many answers")
    parser.add_argument("--max-growth", type=float, default=5.0, help="fail at this RSS growth (percent) or more")
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "rewardgate_soak.json"))
    if parser.parse_known_args(argv)[0].quick:  # flags given explicitly still win
        parser.set_defaults(requests=2000, warmup=500)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
