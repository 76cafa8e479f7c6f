"""Reward-model quality as it is used: train with `rewardgate-train` on a mix of real preference sources, then
measure through the product's own commands on data the trainer never saw, each result beside its baselines.

Sources (../shared/data/external, never copied into the project), split by prompt so no eval prompt is trained on:

- `vs_gpt35`: GPT-4-judged pairs, a Tulu-2-13B answer vs the GPT-3.5 reference. Pairs of the prompts replayed
  below are held out (`gpt4_pairs` eval); the others train.
- `bon_pairs`: pairs of two judged Tulu candidates of the same prompt (candidates 0-10 of bon_candidates_TRAIN,
  the one with the higher P(beats the reference) chosen when the two differ by at least --bon-gap), from the
  prompts that are NOT replayed.
- `hh`: Anthropic HH-RLHF harmless-base human pairs, split by prompt hash: a quarter held out (`hh` eval).

Half the bon_candidates prompts (by a prompt hash) are replayed with `rewardgate eval replay`: best-of-11 win rate
(mean of judge_preference[pick] - 1) beside random, longest and oracle; and, for scale, what the six published reward
models whose picks the file records win on the same prompts (`published_picks`). Pairwise accuracy (`rewardgate eval
pairs`, the served fp32 path) on each held-out set beside "longer answer wins", and on the pairs of each set
where the chosen answer is the SHORTER one ("length misleads": longer-wins scores 0 % there, from the same
scores). PandaLM (human labels, out of distribution) too.

    python bench/selection_bon.py [--preset default] [--mix vs_gpt35=1,bon_pairs=1,hh=1] [--train-args "..."]
        [--out docs/selection_bon.json]

Results: docs/BENCHMARKS.md, "Reward-model quality".
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
BON = SHARED / "rewardbench_bon" / "bon_candidates_TRAIN.jsonl.gz"
PAIRS = SHARED / "rewardbench_bon" / "vs_gpt35_TRAIN.jsonl.gz"
HH = SHARED / "hh_harmless" / "harmless_base_DEV.jsonl.gz"
PANDALM = SHARED / "pandalm" / "testset_v1.jsonl"
CANDIDATES = 11  # judge_preference is known for candidates 0-10 only
SOURCES = ("vs_gpt35", "bon_pairs", "hh")


def prompt_key(messages: list[dict[str, Any]]) -> str:
    return json.dumps([(m["role"], m["content"]) for m in messages])


def in_half(salt: str, key: str, denominator: int = 2) -> bool:
    """A prompt-hash split, independent of the trainer's own 90/10 TRAIN/TEST hash."""
    return hashlib.sha256((salt + key).encode()).digest()[0] % denominator == 0


def read_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def bon_pairs(row: dict[str, Any], gap: float) -> list[dict[str, Any]]:
    """Every pair of judged candidates 0-10 of one prompt whose P(beats the reference) differ by >= gap."""
    p = [None if v is None else v - 1 for v in row["judge_preference"][:CANDIDATES]]
    out = []
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            a, b = p[i], p[j]
            if a is None or b is None or abs(a - b) < gap:
                continue
            win, lose = (i, j) if a > b else (j, i)
            out.append({"messages": [*row["messages"], {"role": "assistant", "content": row["candidates"][win]}],
                        "rejected_message": {"role": "assistant", "content": row["candidates"][lose]}})  # fmt: skip
    return out


def mixed(pairs: list[dict[str, Any]], weight: float, seed: int) -> list[dict[str, Any]]:
    """weight < 1: a seeded sample of that fraction; an integer part > 1: whole repeats, then the fraction."""
    whole, frac = int(weight), weight - int(weight)
    sample = random.Random(seed).sample(pairs, round(frac * len(pairs)))
    return pairs * whole + sample


def published_picks(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The scale a best-of-11 win rate here is read on: each published reward model of the file (`rm_picks`, its pick
    of the 16 candidates) on the given prompts where that pick is a judged candidate (0-10), beside random, the
    longest and the oracle pick among candidates 0-10 of those same prompts (so each model has its own baselines)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({name for row in rows for name in row.get("rm_picks") or {}}):
        picked, rand, longest, oracle = [], [], [], []
        for row in rows:
            labels = [None if v is None else v - 1 for v in row["judge_preference"][:CANDIDATES]]
            pick = (row.get("rm_picks") or {}).get(name)
            if pick is None or pick >= CANDIDATES or labels[pick] is None:
                continue
            judged = [i for i, v in enumerate(labels) if v is not None]
            picked.append(labels[pick])
            rand.append(sum(labels[i] for i in judged) / len(judged))
            longest.append(labels[max(judged, key=lambda i: len(row["candidates"][i]))])
            oracle.append(max(labels[i] for i in judged))
        if picked:
            mean = {"pick": picked, "random": rand, "longest": longest, "oracle": oracle}
            out[name] = {"prompts": len(picked), **{k: round(sum(v) / len(v), 4) for k, v in mean.items()}}
    return out


def shorter_chosen(pair: dict[str, Any]) -> bool:
    return len(pair["messages"][-1]["content"]) < len(pair["rejected_message"]["content"])


def misleads_accuracy(rows: list[dict[str, Any]], scores_file: Path) -> dict[str, Any]:
    """Accuracy over the pairs whose chosen answer is the shorter one (where "longer wins" is always wrong)."""
    scores = [json.loads(line) for line in scores_file.read_text().splitlines()]
    kept = [s for row, s in zip(rows, scores, strict=True) if shorter_chosen(row) and s["chosen"] is not None]
    wins = [1.0 if s["chosen"] > s["rejected"] else 0.5 if s["chosen"] == s["rejected"] else 0.0 for s in kept]
    return {"pairs": len(wins), "accuracy": sum(wins) / len(wins) if wins else None, "length_baseline": 0.0}


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(tmp: Path, mix: dict[str, float], bon_gap: float, seed: int, eval_limit: int = 0) -> dict[str, Any]:
    bon = read_gz(BON)
    replay_rows, replay_keys, train_prompts, replayed = [], set(), [], []
    for row in bon:
        key = prompt_key(row["messages"])
        if in_half("bon-replay:", key):
            replay_keys.add(key)
            replayed.append(row)
            labels = [None if v is None else v - 1 for v in row["judge_preference"]]
            replay_rows.append({"id": row["id"], "messages": row["messages"], "candidates": row["candidates"],
                                "labels": labels})  # fmt: skip
        else:
            train_prompts.append(row)
    sources: dict[str, list[dict[str, Any]]] = {name: [] for name in SOURCES}
    evals: dict[str, list[dict[str, Any]]] = {"gpt4_pairs": [], "hh": []}
    for pair in read_gz(PAIRS):
        pair.pop("split", None)
        held_out = prompt_key(pair["messages"][:-1]) in replay_keys
        (evals["gpt4_pairs"] if held_out else sources["vs_gpt35"]).append(pair)
    for row in train_prompts:
        sources["bon_pairs"].extend(bon_pairs(row, bon_gap))
    for pair in read_gz(HH):
        pair.pop("split", None)
        held_out = in_half("hh-eval:", prompt_key(pair["messages"][:-1]), 4)
        (evals["hh"] if held_out else sources["hh"]).append(pair)
    train: list[dict[str, Any]] = []
    for name, weight in mix.items():
        train.extend(mixed(sources[name], weight, seed))
    random.Random(seed).shuffle(train)  # the trainer's own 90/10 prompt-hash TRAIN/TEST split applies inside
    files: dict[str, Any] = {
        "replay": write(tmp / "replay.jsonl", replay_rows),
        "train": write(tmp / "train.jsonl", train),
    }
    evals["pandalm"] = [json.loads(line) for line in PANDALM.read_text().splitlines() if line.strip()]
    if eval_limit:
        evals = {name: random.Random(seed).sample(rows, min(eval_limit, len(rows))) for name, rows in evals.items()}
    files["evals"] = {name: (write(tmp / f"{name}.jsonl", rows), rows) for name, rows in evals.items()}
    files["published"] = published_picks(replayed)
    files["counts"] = {
        "replayed_prompts": len(replay_rows),
        "available": {name: len(rows) for name, rows in sources.items()},
        "train_records": len(train),
        "mix": mix,
        "eval_pairs": {name: len(rows) for name, rows in evals.items()},
        "eval_pairs_chosen_shorter": {name: sum(map(shorter_chosen, rows)) for name, rows in evals.items()},
    }
    return files


def run(command: list[str]) -> str:
    print("$", " ".join(shlex.quote(c) for c in command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in SOURCES:
            raise SystemExit(f"--mix: unknown source {name!r}; expected one of {SOURCES}")
        mix[name] = float(weight or 1)
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="rewardgate-train's --preset")
    parser.add_argument("--mix", default="vs_gpt35=1,bon_pairs=1,hh=1", help="source=weight,... (see mixed())")
    parser.add_argument("--bon-gap", type=float, default=0.1, help="bon_pairs: least P(beats reference) difference")
    parser.add_argument("--train-args", default="", help="more rewardgate-train flags, e.g. '--base-model smollm2'")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-dtype", default="float32", help="the reward server's dtype (bfloat16: faster on AMX)")
    parser.add_argument("--criteria-timeout-s", type=float, default=600.0, help="eval's timeout per criterion call")
    parser.add_argument("--eval-limit", type=int, default=0, help="score at most this many pairs of each set (0 = all)")
    parser.add_argument("--evaluate", default="", help="evaluate this model directory instead of training one")
    parser.add_argument("--keep-model", default="", help="copy the trained model directory here")
    parser.add_argument("--out", default="docs/selection_bon.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, Any] = {"preset": args.preset, "train_args": args.train_args, "bon_gap": args.bon_gap,
                               "loadavg_start": os.getloadavg(), "started": started}  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        files = prepare(tmp, parse_mix(args.mix), args.bon_gap, args.seed, args.eval_limit)
        results["data"] = files["counts"]
        results["published_reward_models"] = files["published"]
        models, slug = tmp / "models", "bon-rm"
        if args.evaluate:
            (models / slug).mkdir(parents=True)
            (models / slug / "v1").symlink_to(Path(args.evaluate).resolve())
        else:
            started = time.perf_counter()
            run([sys.executable, "-m", "trainer", "train", "--data", str(files["train"]), "--models-dir", str(models),
                 "--slug", slug, *(["--preset", args.preset] if args.preset else []), "--no-progress",
                 "--seed", str(args.seed), *shlex.split(args.train_args)])  # fmt: skip
            results["train_wall_seconds"] = round(time.perf_counter() - started, 1)
            results["train_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)
        meta = json.loads((models / slug / "v1" / "rewardgate.json").read_text())
        results["model_card"] = {k: meta.get(k) for k in ("config", "data", "training", "metrics", "objective")}
        if args.keep_model:
            run(["cp", "-r", str(models / slug / "v1"), args.keep_model])
        # A slow scorer (a decoder on a busy CPU) must not time out: a failed criterion leaves its prompt unpicked.
        common = ["--criterion", slug, "--models-dir", str(models), "--store-url", str(tmp / "eval.db"),
                  "--device", "cpu", "--reward-dtype", args.eval_dtype,
                  "--criteria-timeout-s", str(args.criteria_timeout_s)]  # fmt: skip
        replay = ["--data", str(files["replay"]), "--max-candidates", str(CANDIDATES)]
        results["replay"] = json.loads(run([sys.executable, "-m", "gateway", "eval", "replay", *replay, *common]))
        results["pairs"] = {}
        for name, (path, rows) in files["evals"].items():
            scores = tmp / f"{name}.scores.jsonl"
            results["pairs"][name] = json.loads(run([sys.executable, "-m", "gateway", "eval", "pairs", "--data",
                                                     str(path), "--out", str(scores), *common]))  # fmt: skip
            results["pairs"][name + " (length misleads)"] = misleads_accuracy(rows, scores)
    results["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def report(results: dict[str, Any]) -> None:
    training = results["model_card"]["training"] or {}
    print(f"\ntrained {json.dumps(training)}; peak RSS {results.get('train_peak_rss_gib')} GiB")
    means = results["replay"]["mean_label"]
    replay = results["replay"]
    print(f"best-of-{CANDIDATES} on {replay['labelled_rows']} unseen prompts (win rate vs GPT-3.5):")
    if replay.get("unpicked"):
        print(f"  WARNING: {replay['unpicked']} of {replay['rows']} prompts unpicked (their scoring failed)")
    for name in ("criterion", "random", "longest", "oracle"):
        print(f"  {'reward model' if name == 'criterion' else name:14} {100 * means[name]:5.1f} %")
    print("published reward models on the same best-of-11 (their pick of 16, where it is among candidates 0-10):")
    for name, entry in results.get("published_reward_models", {}).items():
        cells = "  ".join(f"{k} {100 * entry[k]:4.1f}" for k in ("pick", "random", "longest", "oracle"))
        print(f"  {name:50} {entry['prompts']:4} prompts  {cells} %")
    print("pairwise accuracy (reward model | longer wins | random 50 %):")
    for name, entry in results["pairs"].items():
        acc, base = entry["accuracy"], entry["length_baseline"]
        print(f"  {name:28} {entry['pairs']:5} pairs  {100 * acc:5.1f} % | {100 * base:5.1f} %")


if __name__ == "__main__":
    main()
