"""No padding (issue 17 part 1): forward passes over the same batches, right-padded vs without pads, in one run.

Traffic: best-of-4 requests as bench/score_cpu.py sends them (MiniLM encoder) or with ~300-word prompts as
bench/prompt_reuse_cpu.py sends them (SmolLM2-135M decoder, its prompt sharing off, so that every row is scored
whole), rendered by the engine, taken --window requests at a time (what one dispatch of the batcher sees) and
planned by `plan_batches` under --max-batch-tokens. Variants, each over the same planned batches:
  padded    the engine's right-padded pass (`formats.pool_rewards`), pads computed
  packed    `packing.score_packed`: rows concatenated, projections and MLPs on real tokens, attention per row in a
            gathered block (what the engine runs with packing on)
  jagged    the same with attention on nested jagged tensors (encoders only: no CPU backend for causal ones)
  bucketed  length-bucketed micro-batches: each planned batch split where a row is over --bucket-slack longer
            than the shortest row of its micro-batch, each micro-batch a padded pass
Rounds alternate the variants' order; the rate is real (unpadded) tokens per second; printed per round and as the
median, with each variant's ratio to `padded` and the share of pads the padded passes compute.

Run: python bench/padding_cpu.py [--model minilm|smollm2] [--dtype float32,bfloat16] [--window 32] [--rounds 3]
     [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `gateway`
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Rows = list[tuple[int, ...]]


def encoder_requests(store: Path) -> tuple[Path, list[Rows]]:
    from score_cpu import build_store, make_bodies

    from gateway.formats import parse_message, render_many
    from gateway.reward_serving.engine import TorchRewardEngine

    model_dir = build_store(store) / "minilm-rm" / "v1"
    engine = TorchRewardEngine.load(model_dir, device="cpu")
    bodies = make_bodies(256, 4)
    rendered = [
        render_many(engine.tokenizer, [[parse_message(m, "b") for m in c] for c in b["conversations"]], 256)
        for b in bodies
    ]
    engine.close()
    return model_dir, [list(r) for r in rendered]


def decoder_requests(store: Path) -> tuple[Path, list[Rows]]:
    from prompt_reuse_cpu import build_model, make_requests

    from gateway.reward_serving.engine import TorchRewardEngine

    model_dir = build_model(store, 1024)
    engine = TorchRewardEngine.load(model_dir, device="cpu")
    requests = [list(engine.render(r)) for r in make_requests(64, 300, 4, "padding")]
    engine.close()
    return model_dir, requests


def bucketed(lengths: Sequence[int], batch: Sequence[int], slack: float) -> list[list[int]]:
    """A length-sorted batch cut where a row is more than `slack` longer than its micro-batch's shortest row."""
    ordered = sorted(batch, key=lambda i: lengths[i])
    out: list[list[int]] = [[ordered[0]]]
    for i in ordered[1:]:
        if lengths[i] > (1 + slack) * lengths[out[-1][0]]:
            out.append([])
        out[-1].append(i)
    return out


def main(args: argparse.Namespace) -> int:
    import torch

    from gateway.reward_serving import packing
    from gateway.reward_serving.batcher import plan_batches
    from gateway.reward_serving.engine import TorchRewardEngine

    packing.register()
    store = Path(tempfile.mkdtemp(prefix="rewardgate-padding-"))
    model_dir, requests = (encoder_requests if args.model == "minilm" else decoder_requests)(store)
    print(
        f"padding benchmark: {args.model}, best-of-4, {args.window} requests per dispatch, budget "
        f"{args.max_batch_tokens} tokens, torch threads {torch.get_num_threads()}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    for dtype in args.dtype:
        engine = TorchRewardEngine.load(model_dir, device="cpu", dtype=dtype)
        engine.shares_prefixes = False  # every row whole: this bench is about pads, not shared prompts
        passes: list[Rows] = []
        for start in range(0, len(requests), args.window):
            rows = [row for request in requests[start : start + args.window] for row in request]
            lengths = [len(r) for r in rows]
            passes += [[rows[i] for i in b] for b in plan_batches(lengths, args.max_batch_tokens, 256)]
        real = sum(len(r) for p in passes for r in p)
        padded_tokens = sum(len(p) * max(len(r) for r in p) for p in passes)

        def run_padded(batch: Rows, engine: TorchRewardEngine = engine) -> None:
            engine.score_batch(batch)

        def run_packed(batch: Rows, jagged: bool = False, engine: TorchRewardEngine = engine) -> None:
            with torch.inference_mode():
                packing.score_packed(engine.model, batch, engine.device, jagged=jagged).float().tolist()

        def run_bucketed(batch: Rows, engine: TorchRewardEngine = engine) -> None:
            lengths = [len(r) for r in batch]
            for micro in bucketed(lengths, range(len(batch)), args.bucket_slack):
                engine.score_batch([batch[i] for i in micro])

        variants: dict[str, Callable[[Rows], None]] = {"padded": run_padded, "packed": run_packed}
        if args.model == "minilm":
            variants["jagged"] = lambda batch: run_packed(batch, jagged=True)
        variants["bucketed"] = run_bucketed
        for run in variants.values():  # warm-up, and a check that each runs
            run(passes[0])
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for number in range(args.rounds):
            order = list(variants.items())[:: 1 if number % 2 == 0 else -1]
            for name, run in order:
                tokens, started = 0, time.perf_counter()
                while time.perf_counter() - started < args.seconds:
                    for batch in passes:
                        run(batch)
                        tokens += sum(len(r) for r in batch)
                        if time.perf_counter() - started >= args.seconds:
                            break
                rates[name].append(tokens / (time.perf_counter() - started))
        base = statistics.median(rates["padded"])
        print(
            f"{dtype}: {len(passes)} passes, {real} real tokens, the padded passes compute "
            f"{100 * (1 - real / padded_tokens):.1f} % pads",
            flush=True,
        )
        for name, values in rates.items():
            median = statistics.median(values)
            each = ", ".join(f"{v:,.0f}" for v in values)
            print(
                f"  {name:>9} {median:10,.0f} real tokens/s  {median / base:5.2f}x padded   (rounds: {each})",
                flush=True,
            )
        engine.close()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "smollm2"), default="minilm")
    parser.add_argument("--dtype", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--window", type=int, default=32, help="requests per dispatch (about the clients)")
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--bucket-slack", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per variant and round")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
