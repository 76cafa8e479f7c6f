"""Where the gateway's CPU goes per request (issue 17, part 3): cProfile around `python -m gateway serve` under load.

The setup of bench/gateway_overhead.py, reused from bench/overhead_harness.py: the fake upstream (chat answers after
--latency-ms, a trivial reward server on the same port) on CPU 1 with wrk, the gateway alone on CPU 0, run under
`python -m cProfile`. wrk drives one path (best-of-4 with `op-criteria`, or passthrough) at --concurrency clients
for --seconds; then the gateway is stopped with SIGINT, so that cProfile writes its statistics, and this prints the
gateway's CPU per request (from /proc, profiler included: cProfile roughly doubles it) and the functions that take
the most time, by own time and by cumulative time, each as a share of all profiled time.

With --py-spy PATH (a py-spy binary, e.g. from `python -m venv /work/pyspy-venv && /work/pyspy-venv/bin/pip install
py-spy`) the gateway runs without cProfile and py-spy samples it during the measured run instead: no overhead per
Python call, so the shares are closer to the truth (cProfile inflates code made of many small calls, such as httpx's).
It prints the functions with the most samples on top of the stack (own) and anywhere in it (inclusive).

Run: python bench/profile_gateway.py [--path best_of_n|passthrough] [--seconds 6] [--concurrency 32] [--top 30]
     [--out FILE] [--py-spy PATH]   (a cProfile file reads again with `python -m pstats FILE`)
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the helper module
from overhead_harness import Server, free_port, http_json, lua_script, run_wrk, start

ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = 0, 1
MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "How do I reset my password?"},
]
N = 4


def start_gateway(profile: Path | None, upstream: str, key: str, work: Path) -> Server:
    port = free_port()
    profiler = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
    command = [sys.executable, *profiler, "-m", "gateway", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--store-url", f"sqlite:///{work / 'logs.db'}"]
    command += ["--reward-server-url", upstream, "--upstream-models", "openai:fake", "--log-level", "warning"]
    env = {
        "OPENAI_BASE_URL": upstream + "/v1",
        "OPENAI_API_KEY": "sk-fake",
        "REWARDGATE_API_KEYS": key,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    server = start("gateway", command, PROXY_CPU, f"http://127.0.0.1:{port}", env, work)
    server.wait_ready("/health", timeout_s=180)
    return server


def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})
    work = Path(tempfile.mkdtemp(prefix="rewardgate-profile-"))
    profile = Path(args.out) if args.out else work / ("gateway.txt" if args.py_spy else "gateway.prof")
    key = "sk-gw-" + secrets.token_hex(16)
    up = f"http://127.0.0.1:{free_port()}"
    fake = [sys.executable, str(ROOT / "bench" / "overhead_harness.py"), "--port", up.rsplit(":", 1)[1]]
    upstream = start("upstream", [*fake, "--latency-ms", str(args.latency_ms)], LOAD_CPU, up, {}, work)
    try:
        upstream.wait_ready("/health", timeout_s=60)
        gateway = start_gateway(None if args.py_spy else profile, up, key, work)
        try:
            body: dict[str, object] = {"model": "openai:fake", "messages": MESSAGES, "max_tokens": 16, "store": False}
            headers = {"Authorization": f"Bearer {key}"}
            if args.path == "best_of_n":
                body["n"] = N
                headers["op-criteria"] = '["bench-trivial"]'
            reply = http_json(gateway.url + "/v1/chat/completions", body, headers)
            assert len(reply["choices"]) == (N if args.path == "best_of_n" else 1), reply
            script = lua_script(body, headers, work / "load.lua")
            run_wrk(gateway.url + "/v1/chat/completions", script, args.concurrency, 2, LOAD_CPU)  # warm-up
            gateway.wait_idle()
            sampler = None
            if args.py_spy:
                command = [args.py_spy, "record", "--pid", str(gateway.process.pid), "--duration", str(args.seconds)]
                command += ["--rate", "1000", "--format", "raw", "--output", str(profile), "--nonblocking"]
                sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # attached before the load starts
            cpu_before = gateway.cpu_seconds()
            wrk = run_wrk(gateway.url + "/v1/chat/completions", script, args.concurrency, args.seconds, LOAD_CPU)
            cpu = gateway.cpu_seconds() - cpu_before
            if sampler is not None:
                sampler.wait(timeout=60)
        finally:
            os.killpg(gateway.process.pid, signal.SIGINT)  # cProfile writes its file on the way out
            try:
                gateway.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.stop()
    finally:
        upstream.stop()
    done = wrk["requests"] - wrk["non_2xx"]
    seconds = wrk["duration_us"] / 1e6
    print(
        f"gateway profile: {args.path}, {args.concurrency} clients, {args.seconds} s, {done / seconds:.1f} req/s "
        f"under cProfile, p50 {wrk['p50_us'] / 1000:.2f} ms, errors {wrk['non_2xx'] + wrk['socket_errors']}, "
        f"gateway CPU {cpu * 1000 / max(done, 1):.3f} ms/request ({'py-spy' if args.py_spy else 'cProfile'}), load "
        "average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if not profile.exists():
        print(f"no profile written; the gateway's log: {work / 'gateway.log'}", file=sys.stderr)
        return 1
    if args.py_spy:
        print_samples(profile, args.top)
        return 0
    stats = pstats.Stats(str(profile))
    total = stats.total_tt  # type: ignore[attr-defined]
    for key_name, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(key_name).print_stats(args.top)
        print(f"\n--- top {args.top} by {title}; profiled total {total:.2f} s (includes warm-up and idle waits)")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip()[:1].isdigit() or "ncalls" in line))
    print(f"\nprofile: {profile}")
    return 0


def print_samples(path: Path, top: int) -> None:
    """py-spy's raw output (one `frame;frame;...;leaf count` line per distinct stack): shares by own and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"\n--- py-spy: {total} samples (1 kHz, idle included: a sample of the loop waiting is `select`/`poll`)")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"\n top {top} by {title} samples")
        for frame, count in counter.most_common(top):
            print(f"  {100 * count / total:5.1f}%  {frame}")
    print(f"\nsamples: {path}")


def _short(frame: str) -> str:
    """`function (path/to/module.py:line)` with the path cut to the package: site-packages/ or the repository."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.rsplit(':', 1)[0]})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--path", choices=("best_of_n", "passthrough"), default="best_of_n")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", help="keep the profile here (default: a temporary folder)")
    parser.add_argument("--py-spy", help="a py-spy binary: sample with it instead of cProfile")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
