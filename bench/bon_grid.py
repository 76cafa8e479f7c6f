"""bench/budgeted_bon.py's step 4: the strategies run through the gateway app on every prompt of a candidate pool,
against plain best-of-N on the same prompts, judged by each scorer's final scores (`run_grid`, `summarize`), and the
op-bon header of each strategy (`strategies`). Imports the replay upstream's type only; no reward model is loaded
here (the gateway app scores).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from bon_inputs import POOL_N, ReplayProvider, log


def strategies(
    threshold: float, names: Sequence[str] | None = None, chosen: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """name -> (the gateway that runs it: "raw" trusts every reward model, "calibrated" reads the calibration
    file, its op-bon header); `chosen`: settings picked on the calibration prompts, run as early_rejection_<name>."""
    early = {"strategy": "early_rejection"}
    every: dict[str, tuple[str, dict[str, Any] | None]] = {
        "best_of_n": ("raw", None),
        "early_rejection": ("raw", early),
        "early_rejection_late": ("raw", {"strategy": "early_rejection", "checkpoints": [64, 128]}),
        "early_rejection_aggressive": ("raw", {"strategy": "early_rejection", "checkpoints": [16, 32], "keep": 0.25}),
        "early_rejection_calibrated": ("calibrated", early),
        "adaptive": ("raw", {"strategy": "adaptive", "per_round": 2, "threshold": round(threshold, 3)}),
    } | {f"early_rejection_{name}": ("raw", policy) for name, policy in (chosen or {}).items()}
    return {name: config for name, config in every.items() if names is None or name in names}


async def run_one(
    client: httpx.AsyncClient,
    replay: ReplayProvider,
    source: str,
    messages: list[Any],
    scorer: str,
    n: int,
    policy: Any,
    tag: str,
) -> dict[str, Any]:
    headers = {"op-criteria": json.dumps([scorer])}
    if policy is not None:
        headers["op-bon"] = json.dumps(policy)
    body = {"model": f"replay:{source}", "messages": messages, "n": n, "seed": 0, "user": tag}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body, headers=headers, timeout=600)
    wall = time.perf_counter() - started
    response.raise_for_status()
    completion = response.json()
    best = completion["choices"][0]
    budget = completion["usage"].get("rewardgate") or {}
    return {
        "pick": best["rewardgate"]["candidate_index"] % POOL_N,
        "pick_finish": best["finish_reason"],
        "generated": replay.sent[tag],
        "reported_generated": budget.get("generated_tokens", completion["usage"]["completion_tokens"]),
        "plain_estimate": budget.get("plain_tokens"),
        "rejected": budget.get("rejected", 0),
        "checkpoints": budget.get("checkpoints"),
        "rounds": budget.get("rounds"),
        "fallback": budget.get("fallback"),
        "wall_s": wall,
    }


def summarize(
    runs: list[dict[str, Any]], plain: list[dict[str, Any]], judges: Mapping[str, list[list[float | None]]]
) -> dict[str, Any]:
    """One strategy's runs against plain best-of-N's (same prompts, same order), by each judge."""

    def mean(values: Sequence[float]) -> float:
        return round(statistics.mean(values), 4)

    out: dict[str, Any] = {}
    for role, values in judges.items():
        pairs = [
            (values[r["prompt"]][r["pick"]], values[b["prompt"]][b["pick"]]) for r, b in zip(runs, plain, strict=True)
        ]
        known = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not known:
            continue
        picks, base = [a for a, _ in known], [b for _, b in known]
        wins, ties = sum(a > b for a, b in known), sum(a == b for a, b in known)
        out[role] = {
            "mean": mean(picks),
            "plain_mean": mean(base),
            "relative_to_plain_pct": round(100 * (statistics.mean(picks) / statistics.mean(base) - 1), 2),
            "win_tie_loss_vs_plain": [wins, ties, len(known) - wins - ties],
            "prompts": len(known),
        }
    tokens, plain_tokens = sum(r["generated"] for r in runs), sum(r["generated"] for r in plain)
    estimates = [r["plain_estimate"] for r in runs if r["plain_estimate"] is not None]
    out |= {
        "generated_tokens_mean": round(tokens / len(runs), 1),
        "plain_tokens_mean": round(plain_tokens / len(plain), 1),
        "token_reduction_x": round(plain_tokens / tokens, 2),
        "plain_estimate_vs_true": round(sum(estimates) / plain_tokens, 3) if len(estimates) == len(runs) else None,
        "wall_s_mean": mean([r["wall_s"] for r in runs]),
        "rejected_mean": mean([r["rejected"] for r in runs]),
        "rounds_mean": mean([r["rounds"] or 1 for r in runs]),
        "checkpoints_used": sorted({tuple(r["checkpoints"] or ()) for r in runs}),
        "fallbacks": sum(1 for r in runs if r["fallback"]),
        "reported_vs_counted_tokens": round(sum(r["reported_generated"] for r in runs) / tokens, 3),
    }
    return out


async def run_grid(
    clients: Mapping[str, httpx.AsyncClient],
    replay: ReplayProvider,
    source: str,
    pool: Mapping[str, Any],
    scorer: str,
    n: int,
    threshold: float,
    judges: Mapping[str, list[list[float | None]]],
    concurrency: int,
    names: Sequence[str] | None = None,
    chosen: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every strategy on every prompt of the pool at one N; prompts run `concurrency` at a time, each prompt's
    strategies one after another (so every strategy meets the same load)."""
    configs = strategies(threshold, names, chosen)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    limit = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def prompt_runs(p: int) -> None:
        async with limit:
            for name, (gateway, policy) in configs.items():
                tag = f"{source}/{scorer}/{n}/{name}/{p}"
                messages = pool["entries"][p]["messages"]
                run = await run_one(clients[gateway], replay, source, messages, scorer, n, policy, tag)
                runs[name].append({"prompt": p, **run})

    await asyncio.gather(*(prompt_runs(p) for p in range(len(pool["entries"]))))
    for name in configs:
        runs[name].sort(key=lambda r: r["prompt"])
    result: dict[str, Any] = {name: summarize(runs[name], runs["best_of_n"], judges) for name in configs}
    settings = {name: policy for name, (_, policy) in configs.items()}
    return result | {"adaptive_threshold": round(threshold, 3), "op_bon": settings,
                     "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def show(key: str, grid: Mapping[str, Any]) -> None:
    for name, r in grid.items():
        if not isinstance(r, dict) or "generated_tokens_mean" not in r:
            continue
        judged = " ".join(
            f"{role} {v['mean']:.4f} ({v['relative_to_plain_pct']:+.2f}%, w/t/l {v['win_tie_loss_vs_plain']})"
            for role, v in r.items()
            if isinstance(v, dict)
        )
        log(f"{key} {name:27s} tokens {r['generated_tokens_mean']:7.1f} (x{r['token_reduction_x']:.2f}) {judged}"
            f" wall {r['wall_s_mean']:.2f}s")  # fmt: skip
