"""Which offline base makes the better reward model on a 2-core CPU, under the same time budget?

Trains each PyPI-installable base (MiniLM-L6 BERT encoder, SmolLM2-135M Llama decoder) on
../shared/data vs_gpt35_TRAIN with 10 % of its prompts held out (by prompt hash, so no prompt is on
both sides), stops at the budget, then reports held-out and PandaLM accuracy beside the "longer
answer wins" baseline. Results: docs/BENCHMARKS.md, "Default base model".

    python bench/base_models_cpu.py [--budget-s 900] [--bases minilm smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
TRAIN_FILE = SHARED / "rewardbench_bon" / "vs_gpt35_TRAIN.jsonl.gz"
PANDALM = SHARED / "pandalm" / "testset_v1.jsonl"

# Per-base CPU recipes: bf16 on AMX, frozen embeddings, the top layers trained.
RECIPES = {
    "minilm": {"batch_size": "16", "learning_rate": 5e-5, "freeze_layers": 2},
    "smollm2": {"batch_size": "8", "learning_rate": 2e-5, "freeze_layers": 24},
}


def held_out_copy(directory: Path) -> Path:
    from gateway.formats import load_pairs, split_for_prompt

    out = directory / "vs_gpt35_split.jsonl"
    with out.open("w") as fh:
        for pair in load_pairs(TRAIN_FILE).pairs:
            row = pair.to_json() | {"split": split_for_prompt(pair.prompt)}
            fh.write(json.dumps(row) + "\n")
    return out


def matmul_gflops(dtype: object, n: int = 2048, reps: int = 5) -> float:
    """The CPU's matmul rate in this dtype: why bf16 training pays on AMX CPUs."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)  # type: ignore[call-overload]
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return round(2 * n**3 * reps / (time.perf_counter() - start) / 1e9, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=900.0, help="training time budget per base")
    parser.add_argument("--bases", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=".bench/base_models_cpu.json")
    args = parser.parse_args()

    import torch

    from gateway.formats import load_pairs
    from trainer.config import TrainConfig
    from trainer.evaluate import evaluate_pairs, load_reward_model
    from trainer.train import train

    results: dict[str, object] = {
        "torch_threads": torch.get_num_threads(),
        "budget_s": args.budget_s,
        "matmul_gflops": {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)},
        "loadavg_start": os.getloadavg(),
    }
    print(json.dumps(results), flush=True)
    pandalm = load_pairs(PANDALM).pairs
    with tempfile.TemporaryDirectory() as tmp:
        data = held_out_copy(Path(tmp))
        for base in args.bases:
            cfg = TrainConfig(
                data=str(data),
                output=f"{tmp}/{base}",
                base_model=base,
                epochs=1,
                max_length=args.max_length,
                freeze_embeddings=True,
                time_budget_s=args.budget_s,
                progress=False,
                save_steps=10_000,
                **RECIPES[base],
            )  # type: ignore[arg-type]
            started = time.perf_counter()
            result = train(cfg)
            meta = json.loads((result.output / "rewardgate.json").read_text())
            model, tokenizer, _ = load_reward_model(result.output, "cpu")
            t_eval = time.perf_counter()
            ood = evaluate_pairs(model, tokenizer, pandalm, args.max_length, bf16=True)
            results[base] = {
                "recipe": RECIPES[base],
                "train_seconds": round(result.train_seconds, 1),
                "pairs_trained": meta["training"]["pairs_per_second"] * result.train_seconds,
                "pairs_per_second": round(result.pairs_per_second, 2),
                "stopped_early": meta["training"]["stopped_early"],
                "held_out": result.test.to_dict(),
                "pandalm": ood.to_dict(),
                "pandalm_eval_seconds": round(time.perf_counter() - t_eval, 1),
                "total_seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps({base: results[base]}, indent=1), flush=True)
            del model
    results["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    header = ("base", "pairs", "pairs/s", "held-out acc", "(longer)", "PandaLM acc", "(longer)")
    print("{:10} {:>6} {:>8} {:>13} {:>9} {:>12} {:>9}".format(*header))
    for base in args.bases:
        r = results[base]
        h, p = r["held_out"], r["pandalm"]  # type: ignore[index]
        print(
            f"{base:10} {r['pairs_trained']:6.0f} {r['pairs_per_second']:8.2f} {h['accuracy']:13.3f} "  # type: ignore[index]
            f"{h['length_baseline_accuracy']:9.3f} {p['accuracy']:12.3f} {p['length_baseline_accuracy']:9.3f}"
        )


if __name__ == "__main__":
    main()
