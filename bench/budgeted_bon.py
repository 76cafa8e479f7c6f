"""Budgeted best-of-N (op-bon, issue 20) against plain best-of-N, offline, through the gateway's own pipeline.

1. Reward models: `support-rm` (the offline default: MiniLM trained on the bundled support sample) and `smol-rm`
   (SmolLM2-135M trained on the same sample with the CPU recipe of bench/base_models_cpu.py and a 300 s budget);
   trained once into .bench/budgeted_bon/models and reused. With --tulu-rm NAME=DIR (repeatable) more reward
   models score the Tulu source, e.g. `mix-rm`: the trainer's default preset on bench/selection_bon.py's training
   mix (`selection_bon.py --preset default --keep-model DIR`), the product's recipe for general answers, and
   `partial-rm`: the same with `--partial-prefixes 32,64,128` (trained on the answers' heads as well, so that its
   partial scores predict its final ones).
2. Candidates, two sources, 16 per prompt, kept token by token (SmolLM2's tokenizer), so that a candidate's first
   t tokens are exactly what a stream of it would have sent by then:
   - `smollm2`: SmolLM2-135M-Instruct (the `local:smollm2` model) samples them here (temperature 0.8, top_p 0.95,
     --smol-max-tokens) for --smol-prompts prompts, half the bundled support sample's, half AlpacaEval's
     (../shared/data/external/prompts). Slow on this CPU: its scale is small.
   - `tulu`: RewardBench's best-of-N set (../shared/data/external/rewardbench_bon: 16 Tulu-2-13B answers per
     AlpacaEval prompt, whole, ~450 tokens) of the prompts selection_bon.py replays (so mix-rm never trained on
     them), with its GPT-4-turbo judge's preference (P(candidate beats GPT-3.5's answer), candidates 0-10): a
     held-apart judge no reward model here saw. --calibration-prompts of them calibrate, --tulu-prompts others
     are what the strategies run on.
3. Calibration: every candidate's score at 16, 32, 64 (and 128 for tulu) tokens and whole by the reward models;
   per model and checkpoint, the mean per-prompt Spearman correlation of partial with final scores, written to
   --calibration-out: the file the gateway reads (setting bon_calibration_file), and the bench's gateway does.
   On the tulu calibration prompts, early rejection is also replayed offline over a grid of checkpoints x keep
   fractions (`simulate`, the gateway's rule without scoring delay) and two settings are chosen per reward model:
   `chosen`, the most token reduction within 2 % simulated reward loss (the target's bound), and
   `chosen_trades_more`, within 5 %.
   (SmolLM2: 8 prompts, calibrated and run on the same prompts.)
4. Strategies: the gateway app (gateway.cli.build_app, the embedded reward server) answers real POST
   /v1/chat/completions requests with op-criteria and op-bon. Its upstream is a replay provider serving step 2's
   candidates: candidate i of a request is candidate i of its prompt (the router sends seed s + i); a stream
   sends one token per chunk at --tokens-per-s (an API-like pace; the tokens a stream sends while its partial
   answer is being scored, slowly on this CPU, are counted); a native-n call answers after its longest candidate
   would have taken. Tokens generated are what the replay provider sent before it was closed.
   Per N: plain best-of-N; early rejection, the default op-bon (checkpoints 16, 32, 64; keep 0.5), with every
   checkpoint trusted (a gateway without a calibration file) and as the gateway with step 3's calibration file
   runs it (`_calibrated`: checkpoints dropped, or plain best-of-N, where partial scores do not predict); later
   checkpoints (64, 128; keep 0.5); the setting that trades more (checkpoints 16, 32; keep 0.25); step 3's chosen
   settings (tulu); adaptive N (rounds of 2; threshold: the 75th percentile of the scorer's normalized scores over
   the calibration candidates).
   smol-rm, slow on this CPU, scores only plain, default and calibrated early rejection, adaptive. Reported: the
   pick's final reward by the scorer and by held-apart evaluators (tulu: the GPT-4-turbo judge and the other reward
   model; smollm2: the other reward model), win/tie/loss against plain best-of-N's pick, generated tokens, wall time.

    python bench/budgeted_bon.py [--tulu-rm NAME=DIR ...] [--tulu-prompts 24] [--calibration-prompts 24]
        [--smol-prompts 8] [--smol-max-tokens 64] [--tokens-per-s 100] [--concurrency 3] [--ns 4,8,16] [--no-grids]
        [--out docs/budgeted_bon.json] [--calibration-out docs/bon_calibration.json]

Steps 1 and 2 (the reward models, the candidate pools, the replay upstream) are bench/bon_inputs.py; the offline
replay of early rejection is bench/bon_replay.py.

Results: docs/BENCHMARKS.md, "Budgeted best-of-N".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from bon_inputs import (  # noqa: E402
    POOL_N,
    WORK,
    ReplayProvider,
    ensure_models,
    generate_pool,
    load_prompts,
    log,
    reward_stats,
    tulu_pool,
)
from bon_replay import choose, sigmoid, simulate, sweep  # noqa: E402

from gateway.cli import build_app  # noqa: E402
from gateway.config import GatewaySettings  # noqa: E402
from gateway.formats import spearman  # noqa: E402
from gateway.upstream.router import Router  # noqa: E402

CHECKPOINTS = (16, 32, 64)
SMOL_RM_GRID = ("best_of_n", "early_rejection", "early_rejection_calibrated", "adaptive")
SCORERS = ("support-rm", "smol-rm")
TULU_CHECKPOINTS = (16, 32, 64, 128)


# ---------------------------------------------------------------- 3. calibration


async def score(reward: httpx.AsyncClient, model: str, messages: list[Any], texts: Sequence[str]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(texts), 32):
        conversations = [[*messages, {"role": "assistant", "content": t}] for t in texts[start : start + 32]]
        response = await reward.post("/v1/score", json={"model": model, "conversations": conversations}, timeout=600)
        response.raise_for_status()
        out += [d["score"] for d in sorted(response.json()["data"], key=lambda d: d["index"])]
    return out


async def calibrate(
    reward: httpx.AsyncClient, pool: Mapping[str, Any], slugs: Sequence[str], checkpoints: Sequence[int]
) -> dict[str, Any]:
    """Per reward model: raw final scores [prompt][candidate], partial scores per checkpoint and every prompt's
    Spearman correlation of the partial scores with the final ones. Kept in WORK per pool, model directory and
    checkpoints (a model retrained into a new version is scored again)."""
    result: dict[str, Any] = {}
    for slug in slugs:
        model_card = max((WORK / "models").glob(f"{slug}/v*/rewardgate.json"), key=lambda p: int(p.parent.name[1:]))
        key = [[e["messages"], e["rows"]] for e in pool["entries"]], str(model_card), model_card.stat().st_mtime
        digest = hashlib.sha256(json.dumps([key, list(checkpoints)]).encode()).hexdigest()[:16]
        cached = WORK / f"scores-{slug}-{digest}.json"
        if cached.exists():
            found = json.loads(cached.read_text())
            found["partials"] = [{int(c): v for c, v in row.items()} for row in found["partials"]]
            found["rhos"] = {int(c): v for c, v in found["rhos"].items()}
            result[slug] = found
            continue
        finals, partials = [], []
        rhos: dict[int, list[float]] = {c: [] for c in checkpoints}
        for entry in pool["entries"]:
            texts = ["".join(pieces) for pieces in entry["rows"]]
            prefixes = [["".join(pieces[:c]) for pieces in entry["rows"]] for c in checkpoints]
            scores = await score(reward, slug, entry["messages"], [*texts, *(t for p in prefixes for t in p)])
            finals.append(scores[:POOL_N])
            partials.append({c: scores[POOL_N * (k + 1) : POOL_N * (k + 2)] for k, c in enumerate(checkpoints)})
            for c in checkpoints:
                rho = spearman(partials[-1][c], scores[:POOL_N])
                if rho is not None:
                    rhos[c].append(rho)
        result[slug] = {"finals": finals, "partials": partials, "rhos": rhos}
        cached.write_text(json.dumps(result[slug]))
        means = {c: round(statistics.mean(v), 3) if v else None for c, v in rhos.items()}
        log(f"{slug}: partial-vs-final rank correlation by checkpoint {means}")
    return result


# ---------------------------------------------------------------- 4. strategies


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
    client: httpx.AsyncClient, replay: ReplayProvider, messages: list[Any], scorer: str, n: int, policy: Any, tag: str
) -> dict[str, Any]:
    headers = {"op-criteria": json.dumps([scorer])}
    if policy is not None:
        headers["op-bon"] = json.dumps(policy)
    body = {"model": "replay:smollm2", "messages": messages, "n": n, "seed": 0, "user": tag}
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
                tag = f"{id(pool)}/{scorer}/{n}/{name}/{p}"
                messages = pool["entries"][p]["messages"]
                run = await run_one(clients[gateway], replay, messages, scorer, n, policy, tag)
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


def add_tulu_rms(models: Path, specs: Sequence[str]) -> list[str]:
    """--tulu-rm NAME=DIR: reward-model directories copied in as NAME/v1 (once), to score the Tulu source too."""
    names = []
    for spec in specs:
        name, _, source = spec.partition("=")
        target = models / name / "v1"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-r", source, str(target)], check=True)
        names.append(name)
    return names


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    models = WORK / "models"
    ensure_models(models)
    tulu_scorers = ("support-rm", *add_tulu_rms(models, args.tulu_rm))
    log(f"SmolLM2 samples: {POOL_N} per prompt for {args.smol_prompts} prompts (max_tokens {args.smol_max_tokens})")
    smol = generate_pool(load_prompts(args.smol_prompts), args.smol_max_tokens)
    log(f"SmolLM2 on this CPU: {smol['decode_steps_per_s']:.2f} decode steps/s at batch {smol['rows']}")
    tulu_cal = tulu_pool(args.calibration_prompts)
    tulu = tulu_pool(args.tulu_prompts, skip=args.calibration_prompts)
    pools = {"tulu": tulu, "smollm2": smol}
    replay = ReplayProvider({"entries": [*tulu["entries"], *smol["entries"]]}, args.tokens_per_s)
    stats = {slug: reward_stats(models, slug) for slug in (*SCORERS, *tulu_scorers[1:])}

    def normalized(slug: str, finals: list[list[float]]) -> list[list[float | None]]:
        _, mu, sd, _ = stats[slug]
        return [[sigmoid((raw - mu) / sd) for raw in final] for final in finals]

    # calibration and every candidate's final score, with the gateway's own reward server. Tulu: the correlations,
    # the calibration file and the chosen settings come from the calibration prompts, the strategies run on others;
    # SmolLM2 (8 prompts, too few to split): both on the same prompts.
    smol_checkpoints = tuple(c for c in CHECKPOINTS if c < args.smol_max_tokens)
    settings = GatewaySettings(models_dir=str(models), store_url=str(WORK / "bench.db"), device="cpu")
    app = build_app(settings, router=Router({"replay": replay}, default_provider="replay"))
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        reward = app.state.services.reward.client  # embedded: an HttpxReward around the in-process server
        cal_tulu = await calibrate(reward, tulu_cal, tulu_scorers, TULU_CHECKPOINTS)
        eval_tulu = await calibrate(reward, tulu, tulu_scorers, TULU_CHECKPOINTS)
        cal_smol = await calibrate(reward, smol, SCORERS, smol_checkpoints)
    calibration_s = time.perf_counter() - started

    def merged_rhos(*cals: Mapping[str, Any]) -> dict[str, dict[int, list[float]]]:
        merged: dict[str, dict[int, list[float]]] = {}
        for cal in cals:
            for slug, found in cal.items():
                for c, values in found["rhos"].items():
                    merged.setdefault(slug, {}).setdefault(c, []).extend(values)
        return merged

    def mean_rhos(*cals: Mapping[str, Any]) -> dict[str, dict[int, float]]:
        return {slug: {c: round(statistics.mean(v), 3) for c, v in sorted(by.items()) if v}
                for slug, by in merged_rhos(*cals).items()}  # fmt: skip

    rank_correlation = mean_rhos(cal_tulu, cal_smol)
    counted = {slug: {c: len(v) for c, v in by.items()} for slug, by in merged_rhos(cal_tulu, cal_smol).items()}
    Path(args.calibration_out).write_text(json.dumps({"criteria": {
        f"{slug}@{stats[slug][0]}": {
            "checkpoints": {str(c): rho for c, rho in by.items()},
            "prompts": {str(c): counted[slug][c] for c in by},
            "measured_by": "bench/budgeted_bon.py: mean per-prompt Spearman of the score at t tokens with the final",
        }
        for slug, by in rank_correlation.items()
    }}, indent=2) + "\n")  # fmt: skip
    simulated = {slug: {n: sweep(tulu_cal, cal_tulu[slug], n) for n in args.ns} for slug in tulu_scorers}
    chosen = {slug: choose(simulated[slug][8 if 8 in args.ns else args.ns[0]]) for slug in tulu_scorers}
    for slug, picks in chosen.items():
        log(f"{slug}: settings chosen on the calibration prompts {picks}")

    def p75(values: list[list[float | None]]) -> float:
        return statistics.quantiles([v for row in values for v in row if v is not None], n=4)[2]

    judges_tulu = {slug: {"scorer": normalized(slug, eval_tulu[slug]["finals"]),
                          "gpt4_judge": [e["judge"] for e in tulu["entries"]]}
                   for slug in tulu_scorers}  # fmt: skip
    for slug, other in itertools.permutations(tulu_scorers, 2):
        judges_tulu[slug][f"held_apart_{other}"] = normalized(other, eval_tulu[other]["finals"])
    thresholds_tulu = {slug: p75(normalized(slug, cal_tulu[slug]["finals"])) for slug in tulu_scorers}
    smol_norm = {slug: normalized(slug, cal_smol[slug]["finals"]) for slug in SCORERS}
    # For scale, on the evaluated prompts: a random candidate's and plain best-of-N's mean normalized score per
    # scorer (the GPT-4 judge's random candidate too), and the offline replay of the chosen settings there.
    baselines: dict[str, Any] = {
        slug: {n: {"random_mean": round(statistics.mean(v for row in judges_tulu[slug]["scorer"] for v in row[:n]), 4),
                   "best_of_n_mean": round(statistics.mean(max(row[:n]) for row in judges_tulu[slug]["scorer"]), 4)}
               for n in args.ns}
        for slug in tulu_scorers
    }  # fmt: skip
    baselines["gpt4_judge_random_candidate"] = round(
        statistics.mean(v for e in tulu["entries"] for v in e["judge"][:11] if v is not None), 4
    )
    replay_evaluated = {
        slug: {n: {name: [round(x, 3) for x in simulate(tulu, eval_tulu[slug], n, p["checkpoints"], p["keep"])]
                   for name, p in chosen[slug].items()} for n in args.ns}
        for slug in tulu_scorers
    }  # fmt: skip

    calibrated = settings.replace(bon_calibration_file=str(Path(args.calibration_out).resolve()))
    apps = {
        "raw": build_app(settings, router=Router({"replay": replay}, default_provider="replay")),
        "calibrated": build_app(calibrated, router=Router({"replay": replay}, default_provider="replay")),
    }
    results: dict[str, Any] = {}

    def report() -> dict[str, Any]:
        return {
            "command": " ".join(["python", *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_end": os.getloadavg()},
            "settings": {"tokens_per_s": args.tokens_per_s, "concurrency": args.concurrency, "candidates": POOL_N,
                         "tulu_prompts": len(tulu["entries"]), "calibration_prompts": len(tulu_cal["entries"]),
                         "smol_prompts": len(smol["entries"]), "smol_max_tokens": args.smol_max_tokens},
            "smollm2_decode_steps_per_s": round(smol["decode_steps_per_s"], 3),
            "smollm2_sampled_rows_per_call": smol["rows"],
            "reward_models": {slug: {"version": v, "test_reward_mean": mu, "test_reward_std": sd,
                                     "test_accuracy": accuracy}
                              for slug, (v, mu, sd, accuracy) in stats.items()},
            "rank_correlation": rank_correlation,
            "rank_correlation_eval_prompts": mean_rhos(eval_tulu),
            "simulated_on_calibration_prompts": simulated,
            "chosen_settings": chosen,
            "replay_of_chosen_on_evaluated_prompts": replay_evaluated,  # [token reduction x, reward vs plain %]
            "baselines_evaluated_prompts": baselines,
            "calibration_seconds": round(calibration_s, 1),
            "candidate_tokens_mean": {name: round(statistics.mean(len(r) for e in pl["entries"] for r in e["rows"]), 1)
                                      for name, pl in pools.items()},
            "results": results,
            "replay_streams_closed_early": replay.closed_early,
        }  # fmt: skip

    write(args.out, report())  # the calibration, before any grid
    if args.no_grids:
        return report()
    async with AsyncExitStack() as stack:
        clients = {}
        for name, app in apps.items():
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://gateway")
            )
        # N = 8 (the target) first, each grid written out as it ends: on a shared machine a run may be cut short
        smol_judges = {scorer: {"scorer": smol_norm[scorer], f"held_apart_{other}": smol_norm[other]}
                       for scorer, other in (SCORERS, SCORERS[::-1])}  # fmt: skip
        plan = [("tulu", scorer, 8) for scorer in tulu_scorers[::-1]]  # the reward models given first
        plan += [("smollm2", "support-rm", 8), ("smollm2", "smol-rm", 8)]
        plan += [("tulu", scorer, n) for n in args.ns if n != 8 for scorer in tulu_scorers[::-1]]
        plan += [("smollm2", "support-rm", n) for n in args.ns if n != 8]
        for source, scorer, n in plan:
            if n not in args.ns:
                continue
            key = f"{source}/{scorer}/N={n}"
            if source == "tulu":
                grid = await run_grid(clients, replay, tulu, scorer, n, thresholds_tulu[scorer], judges_tulu[scorer],
                                      args.concurrency, chosen=chosen[scorer])  # fmt: skip
            else:  # smol-rm scores slowly on this CPU: its grid is the default early rejection, calibrated or not
                names = None if scorer == SCORERS[0] else SMOL_RM_GRID
                grid = await run_grid(clients, replay, smol, scorer, n, p75(smol_norm[scorer]), smol_judges[scorer],
                                      args.concurrency, names)  # fmt: skip
            results[key] = grid
            show(key, grid)
            write(args.out, report())
    return report()


def write(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tulu-prompts", type=int, default=24, help="prompts the strategies run on")
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=24,
        help="other prompts: rank correlations, the calibration file, the chosen settings",
    )
    parser.add_argument(
        "--tulu-rm",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also score the Tulu source with this reward-model directory (repeatable)",
    )
    parser.add_argument("--smol-prompts", type=int, default=8)
    parser.add_argument("--smol-max-tokens", type=int, default=64)
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16])
    parser.add_argument(
        "--no-grids",
        action="store_true",
        help="calibration, simulations and baselines only: no strategy runs through the gateway",
    )
    parser.add_argument("--tokens-per-s", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "budgeted_bon.json"))
    parser.add_argument("--calibration-out", default=str(ROOT / "docs" / "bon_calibration.json"))
    arguments = parser.parse_args()
    begun = time.perf_counter()
    final = asyncio.run(main(arguments))
    final["total_seconds"] = round(time.perf_counter() - begun, 1)
    write(arguments.out, final)
    log(f"wrote {arguments.out} ({final['total_seconds']} s)")
