"""Gateway overhead (issue 4): the latency and CPU the gateway adds to each request, against calling the upstream
directly in the same run, and its throughput against LiteLLM's own proxy on the same upstream.

Processes: the fake upstream of bench/overhead_harness.py (chat answers after --latency-ms; a trivial reward server
that scores at once), `python -m gateway serve` (passthrough; best-of-4 with `op-criteria` over that reward server)
and, when --litellm-python has it, LiteLLM's proxy (one worker, no database). The gateway and LiteLLM's proxy run
on CPU 0 (taskset; the one not under test is paused with SIGSTOP); the fake upstream, wrk (closed loop, keep-alive,
one connection per client) and this script on CPU 1. Each round measures every path at each concurrency, direct
and proxied interleaved (the order flips each round); medians over rounds. Added latency = a proxied path's
percentile minus the direct path's in the same round; best-of-4 "beyond upstream + scoring" = best-of-4 minus
(direct n=4 + direct scorer call), beside the gateway's own rewardgate_overhead_seconds histogram. CPU per request =
the proxy process's user+sys time during the wrk run / requests completed. Prints a table and PASS/MISS per target
and writes the raw JSON to --out.

With --workers N (N > 1) the gateway runs as `rewardgate serve --workers N` on both CPUs, sharing them with the load
generator and the fake upstream (what a 2-core machine gives it); its CPU per request sums every worker's.

Run: python bench/gateway_overhead.py [--quick] [--rounds 3 --seconds 4] [--workers N] [--litellm-python PATH]
     [--out FILE]
Needs wrk (`apt-get install -y wrk`) and taskset; LiteLLM's proxy in a venv of its own (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the helper module
from overhead_harness import (
    Server,
    busy_fractions,
    cpu_ticks,
    free_port,
    histogram_quantile,
    http_json,
    interpreter_info,
    lua_script,
    overhead_buckets,
    run_wrk,
    start,
)

ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = 0, 1  # the proxy under test alone on one core; everything else on the other
DEFAULT_LITELLM_PYTHON = "/work/litellm-proxy-venv/bin/python"
MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "How do I reset my password?"},
]
ANSWER = {"role": "assistant", "content": "Open settings, choose security, then reset your password."}
N = 4  # best-of-N candidates


@dataclass(frozen=True)
class Cell:
    """One wrk run: one path at one concurrency in one round."""

    target: str
    concurrency: int
    round: int
    requests: int  # completed with a 2xx
    errors: int  # non-2xx answers and socket errors (timeouts included)
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms_per_request: float | None  # the proxy's user+sys CPU / requests; None on a direct path
    proxy_core_busy: float | None  # the proxy's CPU seconds / wall seconds (1.0: its core is saturated)
    core_busy: list[float]  # every CPU's busy share during the run, this bench's processes and anyone else's
    metric_overhead_p50_ms: float | None  # from rewardgate_overhead_seconds (bucket-interpolated)
    metric_overhead_p99_ms: float | None


@dataclass(frozen=True)
class Target:
    name: str  # direct | gateway | litellm | direct_n4 | scorer | best_of_n
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    server: Server | None  # the proxy whose CPU is measured; None: a direct path
    metric_mode: str | None = None  # rewardgate_overhead_seconds{mode=...} to read around the run


def measure(target: Target, proxies: list[Server], gateway: Server, script: Path, c: int, rnd: int, s: int) -> Cell:
    """One wrk run of `target` at concurrency `c` for `s` seconds, with the proxy's CPU time and the gateway's own
    overhead histogram read around it."""
    for proxy in proxies:  # the proxy under test alone on its core: the other one is stopped, not just idle
        if proxy is target.server:
            proxy.resume()
        else:
            proxy.pause()
    mode = target.metric_mode
    if mode and target.server is not None:
        gateway = target.server  # the gateway under test (this tree's or --compare-tree's): the other is paused
    histogram_before = overhead_buckets(gateway.url).get(mode, []) if mode else []
    cpu_before, cores_before = (target.server.cpu_seconds() if target.server else 0.0), cpu_ticks()
    wrk = run_wrk(target.url, script, c, s, LOAD_CPU)
    cpu = (target.server.cpu_seconds() - cpu_before) if target.server else None
    cores = busy_fractions(cores_before, cpu_ticks())
    if target.server is not None:
        target.server.wait_idle()  # before anyone pauses it
    seconds = wrk["duration_us"] / 1e6
    done = wrk["requests"] - wrk["non_2xx"]
    metric: list[float | None] = [None, None]
    if mode:
        histogram_after = overhead_buckets(gateway.url).get(mode, [])
        metric = [histogram_quantile(q, histogram_before, histogram_after) for q in (0.5, 0.99)]
    return Cell(
        target=target.name,
        concurrency=c,
        round=rnd,
        requests=done,
        errors=wrk["non_2xx"] + wrk["socket_errors"],
        seconds=round(seconds, 3),
        requests_per_s=round(done / seconds, 1),
        p50_ms=wrk["p50_us"] / 1000,
        p90_ms=wrk["p90_us"] / 1000,
        p99_ms=wrk["p99_us"] / 1000,
        max_ms=wrk["max_us"] / 1000,
        cpu_ms_per_request=round(cpu * 1000 / done, 4) if cpu is not None and done else None,
        proxy_core_busy=round(cpu / seconds, 3) if cpu is not None else None,
        core_busy=cores,
        metric_overhead_p50_ms=None if metric[0] is None else round(metric[0] * 1000, 4),
        metric_overhead_p99_ms=None if metric[1] is None else round(metric[1] * 1000, 4),
    )


def check(target: Target) -> None:
    """One request per path before any measurement: a path that errors would measure its error path."""
    reply = http_json(target.url, target.body, target.headers)
    if target.name == "scorer":
        assert len(reply["data"]) == N, reply
        return
    assert reply["choices"][0]["message"]["content"], reply
    if target.name.startswith("best_of_n"):
        assert len(reply["choices"]) == N, reply
        for choice in reply["choices"]:  # really scored by the trivial scorer, not an error result
            assert choice["rewardgate"]["score"] is not None and not choice["rewardgate"]["criteria_errors"], choice


# ---------------------------------------------------------------- summary and report

LABELS = {
    "direct": "direct, n=1",
    "gateway": "rewardgate passthrough",
    "litellm": "LiteLLM proxy 1.110.2",
    "direct_n4": "direct, n=4",
    "scorer": "direct scorer call",
    "best_of_n": "rewardgate best-of-4",
    "gateway_base": "--compare-tree passthrough",
    "best_of_n_base": "--compare-tree best-of-4",
}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(cells: list[Cell], levels: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Medians over rounds per (path, concurrency); added latencies from same-round differences; the verdicts."""
    summary: dict[str, Any] = {}
    for c in levels:
        at = {(x.target, x.round): x for x in cells if x.concurrency == c}
        rounds = sorted({r for _, r in at})
        names = sorted({t for t, _ in at}, key=list(LABELS).index)
        level: dict[str, Any] = {}
        for name in names:
            runs = [at[name, r] for r in rounds if (name, r) in at]
            fields = ("requests_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request", "proxy_core_busy")
            level[name] = {f: _median([getattr(x, f) for x in runs]) for f in fields}
            level[name]["errors"] = sum(x.errors for x in runs)
            # what other processes (not this bench's) took of the proxy's core: the run's noise
            level[name]["others_on_proxy_core"] = _median(
                [max(0.0, x.core_busy[PROXY_CPU] - (x.proxy_core_busy or 0.0)) for x in runs]
            )
            if name in ("best_of_n", "gateway", "best_of_n_base", "gateway_base"):
                for f in ("metric_overhead_p50_ms", "metric_overhead_p99_ms"):
                    level[name][f] = _median([getattr(x, f) for x in runs])
        for proxy in ("gateway", "litellm", "gateway_base"):
            if proxy in level and "direct" in level:
                for q in ("p50_ms", "p99_ms"):
                    level[proxy]["added_" + q] = _median(
                        [getattr(at[proxy, r], q) - getattr(at["direct", r], q) for r in rounds]
                    )
        for bon in ("best_of_n", "best_of_n_base"):
            if {bon, "direct_n4", "scorer"} <= set(level):
                for q in ("p50_ms", "p99_ms"):  # a p99 difference of sums is rough: the tails need not coincide
                    level[bon]["beyond_upstream_scoring_" + q] = _median(
                        [
                            getattr(at[bon, r], q) - getattr(at["direct_n4", r], q) - getattr(at["scorer", r], q)
                            for r in rounds
                        ]
                    )
        for new, base in (("gateway", "gateway_base"), ("best_of_n", "best_of_n_base")):
            if {new, base} <= set(level) and level[new]["cpu_ms_per_request"] and level[base]["cpu_ms_per_request"]:
                level[f"ratio_cpu_{new}_vs_base"] = round(
                    level[new]["cpu_ms_per_request"] / level[base]["cpu_ms_per_request"], 3
                )
                level[f"ratio_throughput_{new}_vs_base"] = round(
                    level[new]["requests_per_s"] / level[base]["requests_per_s"], 3
                )
        if "litellm" in level:
            gw, lt = level["gateway"], level["litellm"]
            level["ratio_throughput_gateway_vs_litellm"] = round(gw["requests_per_s"] / lt["requests_per_s"], 2)
            if gw["cpu_ms_per_request"] and lt["cpu_ms_per_request"]:
                level["ratio_cpu_litellm_vs_gateway"] = round(lt["cpu_ms_per_request"] / gw["cpu_ms_per_request"], 2)
        summary[f"C={c}"] = level
    return summary, verdicts(summary)


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4's targets, each PASS (True), MISS (False) or not measured (None)."""

    def get(level: str, name: str, field: str) -> float | None:
        value = summary.get(level, {}).get(name, {}).get(field)
        return None if value is None else float(value)

    def row(target: str, value: float | None, limit: float, at_most: bool = True) -> dict[str, Any]:
        passed = None if value is None else value <= limit if at_most else value >= limit
        return {"target": target, "value": value, "limit": f"{'<=' if at_most else '>='} {limit:g}", "pass": passed}

    beyond = "beyond_upstream_scoring_p50_ms"
    # saturation: each proxy's best throughput over the levels from 32 clients up
    saturated = [k for k in summary if int(k.removeprefix("C=")) >= 32 and "litellm" in summary[k]]
    best = {
        p: max((float(summary[k][p]["requests_per_s"]) for k in saturated), default=0.0) for p in ("gateway", "litellm")
    }
    return [
        row("gateway CPU per passthrough request at C=32 (ms)", get("C=32", "gateway", "cpu_ms_per_request"), 0.5),
        row("added latency p50 at C=1 (ms)", get("C=1", "gateway", "added_p50_ms"), 1.5),
        row("added latency p99 at C=1 (ms)", get("C=1", "gateway", "added_p99_ms"), 3.0),
        row("passthrough req/s at C=32", get("C=32", "gateway", "requests_per_s"), 1000, at_most=False),
        row("added latency p50 at C=32 (ms)", get("C=32", "gateway", "added_p50_ms"), 5.0),
        row("best-of-4 p50 beyond upstream + scoring at C=1 (ms)", get("C=1", "best_of_n", beyond), 5.0),
        row("best-of-4 p50 beyond upstream + scoring at C=32 (ms)", get("C=32", "best_of_n", beyond), 5.0),
        row("passthrough CPU per request at C=32 (ms, issue 17)", get("C=32", "gateway", "cpu_ms_per_request"), 0.35),
        row("best-of-4 CPU per request at C=32 (ms, was 0.96)", get("C=32", "best_of_n", "cpu_ms_per_request"), 0.96),
        row("best-of-4 req/s at C=128 (issue 17)", get("C=128", "best_of_n", "requests_per_s"), 1500, at_most=False),
        row(
            "saturation throughput (best of C>=32), gateway / LiteLLM proxy",
            round(best["gateway"] / best["litellm"], 2) if best["litellm"] else None,
            20,
            at_most=False,
        ),
    ]


def _fmt(value: Any, spec: str = ".2f", sign: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if sign else "") + spec)


def print_report(summary: dict[str, Any], verdict_rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"\ngateway interpreter {meta['gateway_interpreter']}; LiteLLM interpreter {meta['litellm_interpreter']}")
    print(
        f"{'C':>4} {'path':<24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50/p99 ms':>18} "
        f"{'CPU ms/req':>10} {'core busy':>9} {'others':>6}  gateway's own overhead metric p50/p99 ms"
    )
    for level, rows in summary.items():
        for name, row in rows.items():
            if not isinstance(row, dict):
                continue
            added = "-"
            if "added_p50_ms" in row:
                added = f"{_fmt(row['added_p50_ms'], sign=True)} / {_fmt(row['added_p99_ms'], sign=True)}"
            if "beyond_upstream_scoring_p50_ms" in row:
                p50, p99 = row["beyond_upstream_scoring_p50_ms"], row["beyond_upstream_scoring_p99_ms"]
                added = f"{_fmt(p50, sign=True)} / {_fmt(p99, sign=True)}*"
            metric = ""
            if "metric_overhead_p50_ms" in row:
                p50, p99 = row["metric_overhead_p50_ms"], row["metric_overhead_p99_ms"]
                metric = f"  {_fmt(p50, '.3f')} / {_fmt(p99, '.3f')}"
            print(
                f"{level.removeprefix('C='):>4} {LABELS[name]:<24} {_fmt(row['requests_per_s'], '.1f'):>8} "
                f"{_fmt(row['p50_ms']):>8} {_fmt(row['p99_ms']):>8} {added:>18} "
                f"{_fmt(row['cpu_ms_per_request'], '.3f'):>10} {_fmt(row['proxy_core_busy']):>9} "
                f"{_fmt(row['others_on_proxy_core']):>6}"
                f"{metric}{'  ERRORS ' + str(row['errors']) if row['errors'] else ''}"
            )
        for new in ("gateway", "best_of_n"):
            if f"ratio_cpu_{new}_vs_base" in rows:
                print(
                    f"{'':>4} {LABELS[new]} / --compare-tree: CPU per request {rows[f'ratio_cpu_{new}_vs_base']}x, "
                    f"throughput {rows[f'ratio_throughput_{new}_vs_base']}x"
                )
        if "ratio_throughput_gateway_vs_litellm" in rows:
            print(
                f"{'':>4} gateway / LiteLLM: throughput {rows['ratio_throughput_gateway_vs_litellm']}x, "
                f"LiteLLM's CPU per request {rows.get('ratio_cpu_litellm_vs_gateway', '-')}x the gateway's"
            )
    print(
        "* best-of-4: beyond (direct n=4 + direct scorer call), same round. core busy: the proxy's CPU / wall time; "
        f"others: CPU {PROXY_CPU}'s busy share taken by processes outside this bench (noise)"
    )
    top = max(summary, key=lambda level: int(level.removeprefix("C=")))
    if "direct" in summary[top] and "gateway" in summary[top]:
        direct, gateway = summary[top]["direct"]["requests_per_s"], summary[top]["gateway"]["requests_per_s"]
        ceiling = int(top.removeprefix("C=")) / (meta["settings"]["latency_ms"] / 1000)
        print(
            f"load generator check: wrk + fake upstream on one core reach {direct:.0f} req/s direct at {top} (the "
            f"{meta['settings']['latency_ms']:g} ms upstream's ceiling: {ceiling:.0f}), {direct / gateway:.1f}x the "
            "gateway's"
        )
    print("\ntargets (issue 4):")
    for row in verdict_rows:
        mark = "n/a " if row["pass"] is None else "PASS" if row["pass"] else "MISS"
        print(f"  {mark}  {row['target']}: {_fmt(row['value'], '.3f')} (target {row['limit']})")
    load = meta["loadavg_start"]
    print(
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end {meta['loadavg_end'][0]:.2f}; "
        f"total {meta['seconds_total']} s"
    )
    if meta["criterion_errors"]:
        print("criterion errors reported by the gateway:", *meta["criterion_errors"], sep="\n  ")


def start_servers(args: argparse.Namespace, work: Path, litellm: Path | None) -> tuple[list[Server], dict[str, str]]:
    """The fake upstream (CPU 1), the gateway and LiteLLM's proxy (CPU 0); their keys. Ready when it returns."""
    keys = {"gateway": "sk-gw-" + secrets.token_hex(16), "litellm": "sk-" + secrets.token_hex(32)}
    up = f"http://127.0.0.1:{free_port()}"
    fake = [sys.executable, str(ROOT / "bench" / "overhead_harness.py"), "--port", up.rsplit(":", 1)[1]]
    servers = [start("upstream", [*fake, "--latency-ms", str(args.latency_ms)], LOAD_CPU, up, {}, work)]
    try:
        port = free_port()
        gateway = [args.gateway_python, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
        gateway += ["--store-url", f"sqlite:///{work / 'logs.db'}", "--reward-server-url", up]
        gateway += ["--upstream-models", "openai:fake", "--log-level", args.gateway_log_level]
        gateway += ["--workers", str(args.workers)]
        env = {"OPENAI_BASE_URL": up + "/v1", "OPENAI_API_KEY": "sk-fake", "REWARDGATE_API_KEYS": keys["gateway"]}
        # this checkout's gateway, whatever the interpreter has installed
        python_path = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        # one worker: alone on its core; several: on every core, as `--workers` runs on a machine (beside the load)
        cpus = str(PROXY_CPU) if args.workers == 1 else f"{PROXY_CPU},{LOAD_CPU}"
        servers.append(start("gateway", gateway, cpus, f"http://127.0.0.1:{port}", env | python_path, work))
        if args.compare_tree:  # the same gateway command from another checkout (one worker), measured alternately
            port = free_port()
            base = list(gateway[: gateway.index("--workers")])
            base[base.index("--port") + 1] = str(port)
            base_env = env | {
                "PYTHONPATH": os.pathsep.join(filter(None, [args.compare_tree, os.environ.get("PYTHONPATH")]))
            }
            base[base.index("--store-url") + 1] = f"sqlite:///{work / 'logs-base.db'}"
            servers.append(start("gateway_base", base, PROXY_CPU, f"http://127.0.0.1:{port}", base_env, work))
        if litellm is not None:
            config = work / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
                f"      api_base: {up}/v1\n      api_key: sk-fake\ngeneral_settings:\n"
                f"  master_key: {keys['litellm']}\n"
            )
            port = free_port()
            proxy = [str(litellm), str(litellm.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
            proxy += ["--port", str(port), "--num_workers", "1"]
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING"}  # no cost-map fetch, no access log
            servers.append(start("litellm", proxy, PROXY_CPU, f"http://127.0.0.1:{port}", env, work))
        for server in servers:
            server.wait_ready("/health/liveliness" if server.name == "litellm" else "/health", timeout_s=180)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, keys


def build_targets(servers: dict[str, Server], keys: dict[str, str]) -> list[Target]:
    """Every path, in measuring order: each proxied path right after its direct counterpart."""
    up, gateway = servers["upstream"], servers["gateway"]
    chat = {"messages": MESSAGES, "max_tokens": 16}
    auth = {"Authorization": f"Bearer {keys['gateway']}"}
    completions = "/v1/chat/completions"
    targets = [
        Target("direct", up.url + completions, {"model": "fake", **chat}, {}, None),
        Target("gateway", gateway.url + completions, {"model": "openai:fake", **chat, "store": False}, auth, gateway,
               "passthrough"),
        Target("direct_n4", up.url + completions, {"model": "fake", **chat, "n": N}, {}, None),
        Target("scorer", up.url + "/v1/score", {"model": "bench-trivial@v1", "conversations": [
            [*MESSAGES, ANSWER] for _ in range(N)]}, {}, None),
        Target("best_of_n", gateway.url + completions, {"model": "openai:fake", **chat, "n": N, "store": False},
               {**auth, "op-criteria": '["bench-trivial"]'}, gateway, "best_of_n"),
    ]  # fmt: skip
    if "gateway_base" in servers:
        base = servers["gateway_base"]
        at = [t.name for t in targets]
        targets.insert(
            at.index("gateway") + 1,
            Target(
                "gateway_base", base.url + completions, targets[at.index("gateway")].body, auth, base, "passthrough"
            ),
        )
        targets.append(
            Target("best_of_n_base", base.url + completions, targets[-1].body, targets[-1].headers, base, "best_of_n")
        )
    if "litellm" in servers:
        litellm_auth = {"Authorization": f"Bearer {keys['litellm']}"}
        proxy = servers["litellm"]
        targets.insert(2, Target("litellm", proxy.url + completions, {"model": "fake", **chat}, litellm_auth, proxy))
    return targets


def main(args: argparse.Namespace) -> int:
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install -y {package}", file=sys.stderr)
            return 2
    if not {PROXY_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        print(
            f"needs CPUs {PROXY_CPU} and {LOAD_CPU}: the proxy on one, upstream and wrk on the other", file=sys.stderr
        )
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})  # this script (and so wrk and the fake upstream) off the proxy's core
    started, load_start = time.perf_counter(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="rewardgate-overhead-"))
    litellm: Path | None = Path(args.litellm_python)
    cli = Path(args.litellm_python).parent / "litellm"
    if not cli.exists():
        print(f"LiteLLM's proxy comparison SKIPPED: no {cli} (see --litellm-python)")
        litellm = None
    print(
        f"gateway overhead: upstream latency {args.latency_ms:g} ms, {args.rounds} round(s) x {args.seconds} s per "
        f"cell, concurrency {args.concurrency}, load average {' '.join(f'{x:.2f}' for x in load_start)}",
        flush=True,
    )
    servers, keys = start_servers(args, work, litellm)
    try:
        by_name = {server.name: server for server in servers}
        gateway = by_name["gateway"]
        proxies = [s for s in servers if s.name != "upstream"]
        targets = build_targets(by_name, keys)
        scripts = {t.name: lua_script(t.body, t.headers, work / f"{t.name}.lua") for t in targets}
        for target in targets:
            check(target)
        for target in targets:  # warm-up: connection pools, caches, the reward-model listing
            measure(target, proxies, gateway, scripts[target.name], 32, 0, args.warmup_seconds)
        cells: list[Cell] = []
        for rnd in range(1, args.rounds + 1):
            for c in args.concurrency:
                for target in targets if rnd % 2 else targets[::-1]:
                    cells.append(measure(target, proxies, gateway, scripts[target.name], c, rnd, args.seconds))
                    print(progress(cells[-1]), flush=True)
        gateway.resume()
        metrics = gateway.get_text("/metrics").splitlines()
    finally:
        for server in reversed(servers):
            server.stop()

    summary, verdict_rows = summarize(cells, args.concurrency)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu_count": os.cpu_count(), "kernel": platform.release(), "cpu": _cpu_model()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "seconds_total": round(time.perf_counter() - started, 1),
        "settings": vars(args),
        "gateway_interpreter": interpreter_info(args.gateway_python),
        "litellm_interpreter": None if litellm is None else interpreter_info(str(litellm)),
        "criterion_errors": [line for line in metrics if line.startswith("rewardgate_criterion_errors_total{")],
        "pinning": {"proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU},
    }
    print_report(summary, verdict_rows, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "summary": summary, "targets": verdict_rows, "cells": [asdict(c) for c in cells]}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw results: {out}", flush=True)
    if meta["criterion_errors"] or any(c.errors for c in cells):
        print(f"errors: the servers' logs are in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def progress(cell: Cell) -> str:
    cpu = "-" if cell.cpu_ms_per_request is None else f"{cell.cpu_ms_per_request:.3f}"
    return (
        f"  round {cell.round} C={cell.concurrency:<3} {cell.target:<10} {cell.requests_per_s:8.1f} req/s  p50 "
        f"{cell.p50_ms:7.2f}  p99 {cell.p99_ms:7.2f} ms  errors {cell.errors}  CPU/req {cpu} ms  "
        f"cores busy {cell.core_busy}"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the defaults become 1 round of 1 s per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration per (path, concurrency, round)")
    parser.add_argument("--warmup-seconds", type=int, default=2)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32, 128])
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake upstream's fixed latency")
    parser.add_argument("--gateway-python", default=sys.executable, help="the interpreter that runs the gateway")
    parser.add_argument(
        "--workers", type=int, default=1, help="rewardgate serve --workers: above 1 the gateway runs on both CPUs"
    )
    parser.add_argument(
        "--compare-tree", help="another checkout of this repository: its gateway (one worker) measured in the same run"
    )
    parser.add_argument("--gateway-log-level", default="warning", help="info also writes uvicorn's access log")
    parser.add_argument("--litellm-python", default=DEFAULT_LITELLM_PYTHON, help="a venv with litellm's proxy")
    parser.add_argument("--out", default=str(ROOT / "docs" / "gateway_overhead.json"))
    if parser.parse_known_args(argv)[0].quick:  # flags given explicitly still win
        quick_out = str(Path(tempfile.gettempdir()) / "gateway_overhead_quick.json")
        parser.set_defaults(rounds=1, seconds=1, warmup_seconds=1, out=quick_out)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
