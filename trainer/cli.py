"""`rewardgate-train`: validate | train | eval, on preference pairs or rated responses (the file's first record
decides). Parses flags, calls one function, prints the result.

Exit codes: 0 success, 1 invalid data (one `line N: reason` per bad line), 2 usage error.
Imports gateway.formats and trainer modules; torch only inside the commands that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway.formats import DatasetError, PairSet, load_data
from trainer.config import SAMPLE_DATA, add_arguments, from_namespace


def _offline_env() -> None:
    # The trainer never needs the hub; fail fast instead of waiting on a network that is not there.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # oneDNN (torch's CPU kernels) caches a primitive per tensor shape, and length-grouped batches bring hundreds of
    # shapes: with its default cache a CPU run's RSS grew to 7.7 GiB, without it the same recipe peaked at 3.2 GiB
    # (docs/BENCHMARKS.md, "Reward-model quality"). Read when torch first builds a primitive, so set before import.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        pairs = load_data(args.file, skip_invalid=args.skip_invalid)
    except DatasetError as exc:
        for error in exc.errors:
            print(str(error))
        print(f"{args.file}: {len(exc.errors)} invalid line(s)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for error in pairs.skipped:
        print(str(error))
    print(f"{args.file}: valid: {pairs.summary()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _offline_env()
    from trainer.train import train

    cfg = from_namespace(args)
    result = train(cfg)
    if result.rank != 0:  # under torchrun every process gets here; rank 0 reports for all
        return 0
    print(
        json.dumps(
            {
                "output": str(result.output),
                "steps": result.steps,
                "train_seconds": round(result.train_seconds, 1),
                "pairs_per_second": round(result.pairs_per_second, 2),
                "test": result.test.to_dict(),
            },
            indent=1,
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _offline_env()
    from trainer.evaluate import evaluate_pairs, evaluate_rated, load_reward_model, target_mapping

    data = load_data(args.data, skip_invalid=args.skip_invalid)
    model, tokenizer, meta = load_reward_model(args.model, args.device)
    max_length = args.max_length or int(meta.get("max_length", 512))
    bf16 = args.precision == "bf16"
    if isinstance(data, PairSet):
        pairs = list(data.pairs) if args.split == "all" else data.split(args.split)
        metrics: Any = evaluate_pairs(model, tokenizer, pairs, max_length, bf16=bf16)
    else:  # rated responses: correlations, AUC for 0/1 rewards, PASS/FAIL agreement at --threshold
        rows = list(data.rows) if args.split == "all" else data.split(args.split)
        metrics = evaluate_rated(
            model, tokenizer, rows, max_length, target_mapping(meta), bf16=bf16, threshold=args.threshold
        )
    out = {
        "model": meta.get("slug", str(args.model)),
        "version": meta.get("version"),
        "data": args.data,
        "kind": "pairs" if isinstance(data, PairSet) else "rated",
        "split": args.split,
        "precision": args.precision,
        **metrics.to_dict(),
        "skipped_lines": len(data.skipped),
    }
    print(json.dumps(out, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardgate-train", description="Train and evaluate reward models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a preference or rated-response JSONL; one line per bad line")
    p.add_argument("file")
    p.add_argument("--skip-invalid", action="store_true", help="report bad lines but accept the rest")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("train", help="train a reward model and evaluate it on TEST")
    add_arguments(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser(
        "eval",
        help="a reward model on preference pairs (pairwise accuracy) or rated responses (Pearson, Spearman, AUC), "
        "as JSON",
    )
    p.add_argument("--model", required=True, help="reward-model directory (trained, imported or distilled)")
    p.add_argument("--data", default=SAMPLE_DATA, help="preference pairs or rated responses (JSONL)")
    p.add_argument("--split", default="all", choices=("all", "TRAIN", "TEST"), help="which pairs to score")
    p.add_argument("--max-length", type=int, default=0, help="render budget (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="fp32 = the reward server's CPU numbers; bf16 = faster on GPUs and AMX CPUs",
    )
    p.add_argument("--skip-invalid", action="store_true", help="score the valid lines of a file with bad ones")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="rated responses: PASS/FAIL agreement at this reward (the model's score mapped onto the rewards' scale)",
    )
    p.set_defaults(run=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        if isinstance(exc, DatasetError):
            for error in exc.errors:
                print(str(error))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
