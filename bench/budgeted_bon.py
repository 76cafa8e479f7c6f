"""Budgeted best-of-N (op-bon, issue 20) against plain best-of-N, offline, through the gateway's own pipeline.

1. Reward models (bench/bon_inputs.py TRAIN, trained once into .bench/budgeted_bon/models and reused): `support-rm`,
   the offline default (MiniLM trained on the bundled support sample); `support-partial-rm`, the same recipe with
   the trainer's `--partial-prefixes 16,32,64,128` (every pair also trained with both answers cut to a drawn head,
   so that partial scores predict final ones); `smol-rm`, SmolLM2-135M trained on the same sample (the CPU recipe
   of bench/base_models_cpu.py, 300 s). With --tulu-rm NAME=DIR (repeatable) more reward models score the Tulu
   source, e.g. `mix-rm` (`selection_bon.py --preset default --keep-model DIR`: the product's recipe for general
   answers) or the support models above (`support-partial-rm=.bench/budgeted_bon/models/support-partial-rm/v1`).
2. Candidates, 16 per prompt, kept token by token (SmolLM2's tokenizer), so that a candidate's first t tokens are
   exactly what a stream of it would have sent by then. Each source has calibration prompts and other, evaluated
   prompts:
   - `smollm2`: SmolLM2-135M-Instruct (the `local:smollm2` model) samples them here (temperature 0.8, top_p 0.95,
     --smol-max-tokens) for 2 x --smol-prompts prompts, half the bundled support sample's, half AlpacaEval's
     (../shared/data/external/prompts), evenly spaced; the calibration prompts sit halfway between the evaluated
     ones (bon_inputs.load_prompts' phase). Slow on this CPU (minutes per 24 prompts), cached.
   - `tulu`: RewardBench's best-of-N set (../shared/data/external/rewardbench_bon: 16 Tulu-2-13B answers per
     AlpacaEval prompt, whole, ~450 tokens) of the prompts selection_bon.py replays (so mix-rm never trained on
     them), with its GPT-4-turbo judge's preference (P(candidate beats GPT-3.5's answer), candidates 0-10): a
     held-apart judge no reward model here saw. --calibration-prompts of them calibrate, --tulu-prompts others
     are what the strategies run on.
3. Calibration, on the calibration prompts only: every candidate's score at each checkpoint (tulu: 16, 32, 64,
   128 tokens; smollm2: 16, 32, 48, 64, 96, 128) and whole; per model and checkpoint, the mean per-prompt Spearman
   correlation of partial with final scores. Early rejection is replayed offline over a grid of checkpoints x keep
   fractions (bon_replay: `simulate`, the gateway's rule without scoring delay), per source: `chosen`, the most
   token reduction within 2 % simulated reward loss (the target's bound), and `chosen_trades_more`, within 5 %.
   --calibration-out gets the file the gateway reads (setting bon_calibration_file): per model, the correlations
   and the setting chosen within 2 % over all its sources' calibration prompts at N=8 (null where none kept it),
   which an op-bon early rejection that leaves checkpoints and keep out runs.
4. Strategies (bench/bon_grid.py): the gateway app (gateway.cli.build_app, the embedded reward server) answers
   real POST /v1/chat/completions requests with op-criteria and op-bon. Its upstream is a replay provider serving
   step 2's candidates: candidate i of a request is candidate i of its prompt (the router sends seed s + i); a
   stream sends one token per chunk at --tokens-per-s (an API-like pace; the tokens a stream sends while its
   partial answer is being scored, slowly on this CPU, are counted); a native-n call answers after its longest
   candidate would have taken. Tokens generated are what the replay provider sent before it was closed.
   Per N, on the evaluated prompts: plain best-of-N; early rejection, the built-in default (checkpoints 16, 32, 64;
   keep 0.5) with every checkpoint trusted (a gateway without a calibration file), and `{"strategy":
   "early_rejection"}` on the gateway with step 3's file (`_calibrated`: the measured setting, or plain best-of-N
   where none was found); later checkpoints (64, 128; keep 0.5); the setting that trades more (16, 32; keep 0.25);
   step 3's chosen settings; adaptive N (rounds of 2; threshold: the 75th percentile of the scorer's normalized
   scores over the calibration candidates). smol-rm, slow on this CPU, runs plain, default, calibrated, adaptive
   and its chosen settings. Reported: the pick's final reward by the scorer and by held-apart evaluators (the
   source's other reward models; tulu: also the GPT-4-turbo judge), win/tie/loss against plain best-of-N's pick,
   generated tokens, wall time.

    python bench/budgeted_bon.py [--sources tulu,smollm2] [--tulu-rm NAME=DIR ...] [--tulu-prompts 24]
        [--calibration-prompts 24] [--smol-prompts 24] [--smol-max-tokens 256] [--tokens-per-s 100]
        [--concurrency 3] [--ns 4,8,16] [--grid-ns 4,16] [--no-grids] [--out docs/budgeted_bon.json]
        [--calibration-out docs/bon_calibration.json]

Steps 1 and 2 (the reward models, the candidate pools, the replay upstream) are bench/bon_inputs.py; the offline
replay of early rejection is bench/bon_replay.py; step 4's requests are bench/bon_grid.py.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from bon_grid import run_grid, show  # noqa: E402
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
from bon_replay import CHOSEN_LOSS_PCT, choose, sigmoid, simulate, sweep  # noqa: E402

from gateway.cli import build_app  # noqa: E402
from gateway.config import GatewaySettings  # noqa: E402
from gateway.formats import spearman  # noqa: E402
from gateway.upstream.router import Router  # noqa: E402

SMOL_CHECKPOINTS = (16, 32, 48, 64, 96, 128)
SMOL_SCORERS = ("support-rm", "support-partial-rm", "smol-rm")
SLOW = {"smol-rm"}  # scores slowly on this CPU: it runs SLOW_GRID and its chosen settings only
SLOW_GRID = ("best_of_n", "early_rejection", "early_rejection_calibrated", "adaptive")
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


@dataclass(frozen=True)
class Source:
    """One candidate source: the prompts that calibrate (rank correlations, chosen settings, adaptive threshold) and
    the other prompts the strategies run on, the reward models that score it, the checkpoints measured."""

    name: str
    calibration: Mapping[str, Any]
    evaluated: Mapping[str, Any]
    scorers: tuple[str, ...]
    checkpoints: tuple[int, ...]


def build_sources(args: argparse.Namespace, tulu_scorers: tuple[str, ...]) -> list[Source]:
    sources = []
    if "tulu" in args.sources:
        calibration = tulu_pool(args.calibration_prompts)
        evaluated = tulu_pool(args.tulu_prompts, skip=args.calibration_prompts)
        sources.append(Source("tulu", calibration, evaluated, tulu_scorers, TULU_CHECKPOINTS))
    if "smollm2" in args.sources:
        log(f"SmolLM2 samples: {POOL_N} per prompt for 2 x {args.smol_prompts} prompts (max_tokens "
            f"{args.smol_max_tokens})")  # fmt: skip
        calibration = generate_pool(load_prompts(args.smol_prompts, phase=0.5), args.smol_max_tokens)
        evaluated = generate_pool(load_prompts(args.smol_prompts), args.smol_max_tokens)
        log(f"SmolLM2 on this CPU: {evaluated['decode_steps_per_s']:.2f} decode steps/s at batch {evaluated['rows']}")
        checkpoints = tuple(c for c in SMOL_CHECKPOINTS if c < args.smol_max_tokens)
        sources.append(Source("smollm2", calibration, evaluated, SMOL_SCORERS, checkpoints))
    return sources


def measured_setting(
    sources: Sequence[Source], cal: Mapping[str, Mapping[str, Any]], slug: str, n: int
) -> dict[str, Any]:
    """The calibration file's early-rejection entry of one reward model: the sweep over the calibration prompts of
    every source it scored (at the checkpoints they all measured), the setting with the most token reduction within
    CHOSEN_LOSS_PCT["chosen"] of plain best-of-N's reward, or null where none kept it."""
    scored = [(s.calibration, cal[s.name][slug]) for s in sources if slug in s.scorers]
    common = set.intersection(*(set(found["partials"][0]) for _, found in scored))
    pool = {"entries": [e for p, _ in scored for e in p["entries"]]}
    found = {"finals": [row for _, f in scored for row in f["finals"]],
             "partials": [{c: row[c] for c in common} for _, f in scored for row in f["partials"]]}  # fmt: skip
    picked = choose(sweep(pool, found, n)).get("chosen")
    entry: dict[str, Any] = {"within_pct": CHOSEN_LOSS_PCT["chosen"], "n": n, "prompts": len(pool["entries"])}
    if picked is None:
        return entry | {"setting": None}
    simulated = simulate(pool, found, n, picked["checkpoints"], picked["keep"])
    setting = {"checkpoints": picked["checkpoints"], "keep": picked["keep"]}
    return entry | {"setting": setting, "simulated": {"token_reduction_x": round(simulated[0], 3),
                                                      "reward_vs_plain_pct": round(simulated[1], 2)}}  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    models = WORK / "models"
    ensure_models(models)
    sources = build_sources(args, ("support-rm", *add_tulu_rms(models, args.tulu_rm)))
    replay = ReplayProvider({s.name: (s.calibration, s.evaluated) for s in sources}, args.tokens_per_s)
    stats = {slug: reward_stats(models, slug) for slug in sorted({x for s in sources for x in s.scorers})}

    def normalized(slug: str, finals: list[list[float]]) -> list[list[float | None]]:
        _, mu, sd, _ = stats[slug]
        return [[sigmoid((raw - mu) / sd) for raw in final] for final in finals]

    # every candidate's final and partial scores, by the gateway's own reward server
    settings = GatewaySettings(models_dir=str(models), store_url=str(WORK / "bench.db"), device="cpu")
    app = build_app(settings, router=Router({"replay": replay}, default_provider="replay"))
    started = time.perf_counter()
    cal: dict[str, dict[str, Any]] = {}
    ev: dict[str, dict[str, Any]] = {}
    async with app.router.lifespan_context(app):
        reward = app.state.services.reward.client  # embedded: an HttpxReward around the in-process server
        for s in sources:
            cal[s.name] = await calibrate(reward, s.calibration, s.scorers, s.checkpoints)
            ev[s.name] = await calibrate(reward, s.evaluated, s.scorers, s.checkpoints)
    calibration_s = time.perf_counter() - started

    def merged_rhos(*found: Mapping[str, Any]) -> dict[str, dict[int, list[float]]]:
        merged: dict[str, dict[int, list[float]]] = {}
        for by_slug in found:
            for slug, scores in by_slug.items():
                for c, values in scores["rhos"].items():
                    merged.setdefault(slug, {}).setdefault(c, []).extend(values)
        return merged

    def mean_rhos(*found: Mapping[str, Any]) -> dict[str, dict[int, float]]:
        return {slug: {c: round(statistics.mean(v), 3) for c, v in sorted(by.items()) if v}
                for slug, by in merged_rhos(*found).items()}  # fmt: skip

    def p75(values: list[list[float | None]]) -> float:
        return statistics.quantiles([v for row in values for v in row if v is not None], n=4)[2]

    target_n = 8 if 8 in args.ns else args.ns[0]
    simulated, chosen, thresholds, judges, baselines, replayed = {}, {}, {}, {}, {}, {}
    for s in sources:
        simulated[s.name] = {slug: {n: sweep(s.calibration, cal[s.name][slug], n) for n in args.ns}
                             for slug in s.scorers}  # fmt: skip
        chosen[s.name] = {slug: choose(simulated[s.name][slug][target_n]) for slug in s.scorers}
        thresholds[s.name] = {slug: p75(normalized(slug, cal[s.name][slug]["finals"])) for slug in s.scorers}
        for slug, picks in chosen[s.name].items():
            log(f"{s.name}/{slug}: settings chosen on the calibration prompts {picks}")
        judges[s.name] = {slug: {"scorer": normalized(slug, ev[s.name][slug]["finals"])} for slug in s.scorers}
        for slug, other in itertools.permutations(s.scorers, 2):
            judges[s.name][slug][f"held_apart_{other}"] = normalized(other, ev[s.name][other]["finals"])
        if s.evaluated["entries"][0]["judge"] is not None:
            for slug in s.scorers:
                judges[s.name][slug]["gpt4_judge"] = [e["judge"] for e in s.evaluated["entries"]]
        # for scale, on the evaluated prompts: a random candidate's and plain best-of-N's mean normalized score,
        # and the offline replay of the chosen settings there ([token reduction x, reward vs plain %])
        baselines[s.name] = {
            slug: {n: {"random_mean": round(statistics.mean(v for row in judges[s.name][slug]["scorer"]
                                                            for v in row[:n]), 4),
                       "best_of_n_mean": round(statistics.mean(max(row[:n]) for row in judges[s.name][slug]["scorer"]),
                                               4)}
                   for n in args.ns}
            for slug in s.scorers
        }  # fmt: skip
        replayed[s.name] = {
            slug: {n: {name: [round(x, 3) for x in simulate(s.evaluated, ev[s.name][slug], n, p["checkpoints"],
                                                            p["keep"])]
                       for name, p in chosen[s.name][slug].items()} for n in args.ns}
            for slug in s.scorers
        }  # fmt: skip

    # the gateway's calibration file, from every source's calibration prompts (never the evaluated ones): the rank
    # correlations, and the early-rejection setting chosen over all of them at the target N (`measured_setting`)
    rank_correlation = mean_rhos(*cal.values())
    counted = {slug: {c: len(v) for c, v in by.items()} for slug, by in merged_rhos(*cal.values()).items()}
    measured = {slug: measured_setting(sources, cal, slug, target_n) for slug in rank_correlation}
    Path(args.calibration_out).write_text(json.dumps({"criteria": {
        f"{slug}@{stats[slug][0]}": {
            "checkpoints": {str(c): rho for c, rho in by.items()},
            "prompts": {str(c): counted[slug][c] for c in by},
            "measured_by": "bench/budgeted_bon.py: mean per-prompt Spearman of the score at t tokens with the final",
            "early_rejection": measured[slug],
        }
        for slug, by in rank_correlation.items()
    }}, indent=2) + "\n")  # fmt: skip

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
                         "sources": {s.name: {"calibration_prompts": len(s.calibration["entries"]),
                                              "evaluated_prompts": len(s.evaluated["entries"]),
                                              "checkpoints": s.checkpoints, "scorers": s.scorers}
                                     for s in sources},
                         "smol_max_tokens": args.smol_max_tokens},
            "smollm2_decode_steps_per_s": {s.name: round(s.evaluated["decode_steps_per_s"], 3) for s in sources
                                           if "decode_steps_per_s" in s.evaluated},
            "reward_models": {slug: {"version": v, "test_reward_mean": mu, "test_reward_std": sd,
                                     "test_accuracy": accuracy}
                              for slug, (v, mu, sd, accuracy) in stats.items()},
            "rank_correlation": rank_correlation,
            "rank_correlation_by_source": {name: mean_rhos(found) for name, found in cal.items()},
            "rank_correlation_eval_prompts": {name: mean_rhos(found) for name, found in ev.items()},
            "simulated_on_calibration_prompts": simulated,
            "chosen_settings": chosen,
            "calibration_file_settings": measured,
            "replay_of_chosen_on_evaluated_prompts": replayed,
            "baselines_evaluated_prompts": baselines,
            "calibration_seconds": round(calibration_s, 1),
            "candidate_tokens_mean": {s.name: round(statistics.mean(len(r) for e in s.evaluated["entries"]
                                                                    for r in e["rows"]), 1) for s in sources},
            "results": results,
            "replay_streams_closed_early": replay.closed_early,
        }  # fmt: skip

    write(args.out, report())  # the calibration, before any grid
    if args.no_grids:
        return report()
    async with AsyncExitStack() as stack:
        clients = {}
        for name, gateway_app in apps.items():
            await stack.enter_async_context(gateway_app.router.lifespan_context(gateway_app))
            transport = httpx.ASGITransport(app=gateway_app)
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://gateway")
            )
        # N = 8 (the target) first, each grid written out as it ends: on a shared machine a run may be cut short
        plan = [(s, scorer, n) for n in sorted(args.grid_ns or args.ns, key=lambda n: n != target_n) for s in sources
                for scorer in s.scorers[::-1]]  # fmt: skip
        for s, scorer, n in plan:
            key = f"{s.name}/{scorer}/N={n}"
            picked = tuple(f"early_rejection_{c}" for c in chosen[s.name][scorer])
            names = SLOW_GRID + picked if scorer in SLOW else None
            grid = await run_grid(clients, replay, s.name, s.evaluated, scorer, n, thresholds[s.name][scorer],
                                  judges[s.name][scorer], args.concurrency, names, chosen[s.name][scorer])  # fmt: skip
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
    parser.add_argument(
        "--sources",
        type=lambda s: s.split(","),
        default=["tulu", "smollm2"],
        help="candidate sources to run, comma-separated: tulu, smollm2",
    )
    parser.add_argument("--smol-prompts", type=int, default=24, help="SmolLM2 prompts calibrated, and as many run on")
    parser.add_argument("--smol-max-tokens", type=int, default=256)
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16])
    parser.add_argument(
        "--grid-ns",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="the Ns run through the gateway (default: --ns; the settings are still chosen at N=8 when --ns has it)",
    )
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
