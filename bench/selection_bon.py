"""Selection quality of best-of-N with a trained reward model, through the product's own commands.

Replays ../shared/data rewardbench_bon candidates 0-10 of half the prompts (split by prompt hash) with a reward
model that `rewardgate-train` trains on the vs_gpt35_TRAIN pairs of the OTHER half, picking with
`rewardgate eval replay`; win rate = mean of judge_preference[pick] - 1. Beside it: random, longest, oracle, and
the published reward models' picks in the file (over the prompts where their pick is among candidates 0-10).
Then the same model's pairwise accuracy on PandaLM with `rewardgate eval pairs`. Results: docs/BENCHMARKS.md,
"Best-of-N selection quality".

    python bench/selection_bon.py [--base-model minilm] [--epochs 1] [--out docs/selection_bon.json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
BON = SHARED / "rewardbench_bon" / "bon_candidates_TRAIN.jsonl.gz"
PAIRS = SHARED / "rewardbench_bon" / "vs_gpt35_TRAIN.jsonl.gz"
PANDALM = SHARED / "pandalm" / "testset_v1.jsonl"
CANDIDATES = 11  # judge_preference is known for candidates 0-10 only
# The CPU recipe of bench/base_models_cpu.py (bf16 on AMX, frozen embeddings, top layers trained).
RECIPES: dict[str, list[str]] = {
    "minilm": ["--batch-size", "16", "--learning-rate", "5e-5", "--freeze-layers", "2", "--freeze-embeddings"],
    "smollm2": ["--batch-size", "8", "--learning-rate", "2e-5", "--freeze-layers", "24", "--freeze-embeddings"],
}


def replayed(key: str) -> bool:
    """Half the prompts, by a hash that is independent of the trainer's own 90/10 TRAIN/TEST hash."""
    return hashlib.sha256(("bon-replay:" + key).encode()).digest()[0] % 2 == 0


def prepare(tmp: Path) -> tuple[Path, Path, list[dict[str, Any]], dict[str, int]]:
    with gzip.open(BON, "rt") as fh:
        bon = [json.loads(line) for line in fh]
    replay_rows, kept = [], []
    replay_keys = set()
    for row in bon:
        key = json.dumps([(m["role"], m["content"]) for m in row["messages"]])
        if replayed(key):
            replay_keys.add(key)
            labels = [None if v is None else v - 1 for v in row["judge_preference"]]
            replay_rows.append({"id": row["id"], "messages": row["messages"], "candidates": row["candidates"],
                                "labels": labels})  # fmt: skip
            kept.append(row)
    replay_file = tmp / "replay.jsonl"
    replay_file.write_text("".join(json.dumps(r) + "\n" for r in replay_rows))
    train_file = tmp / "train_pairs.jsonl"
    counts = {"replayed_prompts": len(replay_rows), "train_pairs": 0, "dropped_pairs_of_replayed_prompts": 0}
    with train_file.open("w") as out, gzip.open(PAIRS, "rt") as pairs:
        for line in pairs:
            pair = json.loads(line)
            key = json.dumps([(m["role"], m["content"]) for m in pair["messages"][:-1]])
            if key in replay_keys:
                counts["dropped_pairs_of_replayed_prompts"] += 1
                continue
            pair.pop("split", None)  # the trainer's prompt-hash split: 90 % TRAIN, 10 % TEST
            out.write(json.dumps(pair) + "\n")
            counts["train_pairs"] += 1
    return replay_file, train_file, kept, counts


def run(command: list[str]) -> str:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="minilm", choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--time-budget-s", type=float, default=900.0)
    parser.add_argument("--out", default="docs/selection_bon.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: dict[str, Any] = {"base_model": args.base_model, "epochs": args.epochs, "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        replay_file, train_file, rows, counts = prepare(tmp)
        results["data"] = counts
        models, slug = tmp / "models", "bon-rm"
        started = time.perf_counter()
        run([sys.executable, "-m", "trainer", "train", "--data", str(train_file), "--models-dir", str(models),
             "--slug", slug, "--base-model", args.base_model, "--epochs", str(args.epochs),
             "--max-length", str(args.max_length), "--time-budget-s", str(args.time_budget_s), "--no-progress",
             "--save-steps", "100000", *RECIPES[args.base_model]])  # fmt: skip
        results["train_seconds"] = round(time.perf_counter() - started, 1)
        meta = json.loads((models / slug / "v1" / "rewardgate.json").read_text())
        results["held_out"] = meta["metrics"]["test"]
        common = ["--criterion", slug, "--models-dir", str(models), "--store-url", str(tmp / "eval.db"),
                  "--device", "cpu"]  # fmt: skip
        picks = tmp / "picks.jsonl"
        replay = json.loads(run([sys.executable, "-m", "gateway", "eval", "replay", "--data", str(replay_file),
                                 "--max-candidates", str(CANDIDATES), "--out", str(picks), *common]))  # fmt: skip
        results["replay"] = replay
        from gateway.criteria.evaluation import published_picks_report

        labelled = [{**r, "labels": [None if v is None else v - 1 for v in r["judge_preference"]]} for r in rows]
        results["published"] = published_picks_report(labelled, labels_field="labels", max_candidates=CANDIDATES)
        pandalm = json.loads(run([sys.executable, "-m", "gateway", "eval", "pairs", "--data", str(PANDALM),
                                  *common]))  # fmt: skip
        results["pandalm"] = pandalm
    results["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    means = results["replay"]["mean_label"]
    print(f"\nreplayed prompts: {results['replay']['labelled_rows']} (candidates 0-{CANDIDATES - 1})")
    for name in ("criterion", "random", "longest", "oracle"):
        label = f"reward model ({args.base_model})" if name == "criterion" else name
        print(f"  {label:40} win rate {100 * means[name]:5.1f} %")
    for name, entry in results["published"].items():
        print(f"  {name:40} win rate {100 * entry['mean_label']:5.1f} %  ({entry['rows']} prompts)")
    p = results["pandalm"]
    print(f"PandaLM: accuracy {100 * p['accuracy']:.1f} %, longer-answer baseline {100 * p['length_baseline']:.1f} %")


if __name__ == "__main__":
    main()
