"""Forward-pass variants over the same traffic, in one run (issue 17 parts 1 and 2): right-padded, packed with no pads
(attention row by row, or gathered), length-bucketed, and (decoders) shared prompts computed once, several requests'
at a time.

Traffic: best-of-4 requests as bench/score_cpu.py sends them (`minilm`, the MiniLM encoder) or with ~300-word
prompts as bench/prompt_reuse_cpu.py sends them (`smollm2`, the SmolLM2-135M decoder), rendered by the engine; or,
with no model package (the GPU machine), random weights from a config: `bert-random` (MiniLM's shape) and
`qwen-random` (Qwen2.5-0.5B's shape, bench/score_gpu.py's), rows of random ids, best-of-4 groups sharing a
--prompt-len prompt with answers of --min-len to --max-len tokens (--prompt-len 0: independent rows of that length).
Requests are taken --window at a time (what one dispatch of the batcher sees) and planned by `plan_batches` under
--max-batch-tokens. Variants, each over the same traffic (planned the same way but for `shared`):
  padded    the engine's right-padded pass (`formats.pool_rewards`), pads computed
  packed    `packing.score_packed`: rows concatenated, projections and MLPs on real tokens, attention on each row
            apart (what the engine runs with packing on: on a CPU one SDPA call per row, `row_attention`; on CUDA
            one call over the rows gathered into a padded block)
  gathered  (CPU) the same with the gathered block's attention, the CPU's packed pass until 2026-12-07
  bucketed  length-bucketed micro-batches: each planned batch split where a row is over --bucket-slack longer
            than the shortest row of its micro-batch, each micro-batch a padded pass
  shared    (decoders) the engine's prompt sharing: each request's prompt once, the prompts of a pass together,
            then all answers on their prompts' KV caches; planned with the budget in computed tokens (BatchCost)
  trees     (decoders) `packing.score_packed` with each request's rows as one prompt tree (its prompt once, then
            its answers; what the engine runs by default for a plainly causal decoder); planned as the batcher
            plans it, the budget in computed tokens with no pads
  compiled_packed  (--compiled) `packed` on a model set up by `packing.pin` and compiled by `engine.compile_model`,
            as the server's `--compile --packing` loads it; `compiled_gathered` (CPU) the same for `gathered`;
            `compiled_trees` (decoders) the same for `trees`
Rounds alternate the variants' order; the rate is the rows' real tokens (prompts counted in every row, as a
padded pass computes them) per second; printed per round and as the median, with each variant's ratio to `padded`
and the share of pads the padded passes compute.

Run: python bench/pass_variants.py [--model minilm|smollm2|bert-random|qwen-random] [--device cpu|cuda]
     [--dtype float32,bfloat16] [--window 32] [--max-batch-tokens 2048] [--rounds 3] [--seconds 4] [--compiled]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.reward_serving.engine import TorchRewardEngine

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


def random_requests(args: argparse.Namespace, device: str) -> tuple[Callable[[str], TorchRewardEngine], list[Rows]]:
    """A random-weight model from a config (no download) and best-of-4 requests of random ids."""
    import random

    import torch
    from score_gpu import qwen_config
    from transformers import BertConfig, BertForSequenceClassification, Qwen2ForSequenceClassification

    from gateway.reward_serving.engine import TorchRewardEngine, resolve_dtype

    rng = random.Random(0)
    requests: list[Rows] = []
    for _ in range(args.requests):
        prompt = tuple(rng.randint(10, 900) for _ in range(args.prompt_len))
        requests.append(
            [
                prompt + tuple(rng.randint(10, 900) for _ in range(rng.randint(args.min_len, args.max_len)))
                for _ in range(4)
            ]
        )

    def build(dtype: str) -> TorchRewardEngine:
        torch.manual_seed(0)
        if args.model == "bert-random":
            config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                                max_position_embeddings=4096, num_labels=1)  # fmt: skip
            config._attn_implementation = "sdpa"
            model: Any = BertForSequenceClassification(config)
        else:
            config = qwen_config(os.environ.get("TINY") == "1")  # TINY=1: a 2-layer smoke run
            config._attn_implementation = "sdpa"
            model = Qwen2ForSequenceClassification(config)
        model = model.to(device=device, dtype=resolve_dtype(dtype, torch.device(device))).eval()
        return TorchRewardEngine(model, None, max_length=4096, pad_token_id=0)

    return build, requests


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
    from gateway.reward_serving.batcher import common_prefix, plan_batches
    from gateway.reward_serving.engine import MIN_SHARED_PREFIX, TorchRewardEngine, compile_model, shared_prefix_groups

    packing.register()
    store = Path(tempfile.mkdtemp(prefix="rewardgate-passes-"))
    if args.model in ("minilm", "smollm2"):
        model_dir, requests = (encoder_requests if args.model == "minilm" else decoder_requests)(store)

        def build(dtype: str) -> TorchRewardEngine:
            return TorchRewardEngine.load(model_dir, device=args.device, dtype=dtype)
    else:
        build, requests = random_requests(args, args.device)

    print(
        f"forward-pass variants: {args.model} on {args.device}, best-of-4, {args.window} requests per dispatch, "
        f"budget {args.max_batch_tokens} tokens, torch threads {torch.get_num_threads()}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    for dtype in args.dtype:
        engine = build(dtype)
        decoder = getattr(engine.model, "score", None) is not None
        sharing = engine.shares_prefixes
        engine.shares_prefixes = False  # every row whole, but in `shared`
        passes: list[Rows] = []
        shared_passes: list[Rows] = []
        tree_passes: list[Rows] = []
        for start in range(0, len(requests), args.window):
            window = requests[start : start + args.window]
            rows = [row for request in window for row in request]
            lengths = [len(r) for r in rows]
            passes += [[rows[i] for i in b] for b in plan_batches(lengths, args.max_batch_tokens, 256)]
            groups = [k for k, request in enumerate(window) for _ in request]
            prefixes = [common_prefix(request) for request in window for _ in request]
            prefixes = [p if p >= MIN_SHARED_PREFIX else 0 for p in prefixes]
            plan = plan_batches(lengths, args.max_batch_tokens, 256, groups, prefixes)
            shared_passes += [[rows[i] for i in b] for b in plan]
            plan = plan_batches(lengths, args.max_batch_tokens, 256, groups, prefixes, packed=True)
            tree_passes += [[rows[i] for i in b] for b in plan]
        real = sum(len(r) for p in passes for r in p)
        padded_tokens = sum(len(p) * max(len(r) for r in p) for p in passes)

        def run_padded(batch: Rows, engine: TorchRewardEngine = engine) -> None:
            engine.score_batch(batch)

        def run_packed(batch: Rows, apart: bool | None = None, engine: TorchRewardEngine = engine) -> None:
            with torch.inference_mode():
                packing.score_packed(engine.model, batch, engine.device, rows_apart=apart).float().tolist()

        def run_trees(batch: Rows, engine: TorchRewardEngine = engine, pinned: bool = False) -> None:
            groups = shared_prefix_groups(batch)
            with torch.inference_mode():
                packing.score_packed(engine.model, batch, engine.device, groups=groups, pinned=pinned).float().tolist()

        def run_bucketed(batch: Rows, engine: TorchRewardEngine = engine) -> None:
            lengths = [len(r) for r in batch]
            for micro in bucketed(lengths, range(len(batch)), args.bucket_slack):
                engine.score_batch([batch[i] for i in micro])

        def run_shared(batch: Rows, engine: TorchRewardEngine = engine) -> None:
            engine.shares_prefixes = True
            try:
                engine.score_batch(batch)
            finally:
                engine.shares_prefixes = False

        variants: dict[str, tuple[Callable[[Rows], None], list[Rows]]] = {
            "padded": (run_padded, passes),
            "packed": (run_packed, passes),
        }
        if args.device == "cpu":
            variants["gathered"] = (functools.partial(run_packed, apart=False), passes)
        variants["bucketed"] = (run_bucketed, passes)
        if decoder and sharing and any(len(b) > 1 for b in shared_passes):
            variants["shared"] = (run_shared, shared_passes)
            variants["trees"] = (run_trees, tree_passes)
        if args.compiled:  # a second copy of the model, packed for good and compiled (compiled at its warm-up)
            compiled = build(dtype)
            packing.pin(compiled.model)
            compiled.model = compile_model(compiled.model, compiled.device)

            def run_compiled(batch: Rows, apart: bool | None = None, engine: TorchRewardEngine = compiled) -> None:
                with torch.inference_mode():
                    scores = packing.score_packed(engine.model, batch, engine.device, pinned=True, rows_apart=apart)
                    scores.float().tolist()

            variants["compiled_packed"] = (run_compiled, passes)
            if args.device == "cpu":
                variants["compiled_gathered"] = (functools.partial(run_compiled, apart=False), passes)
            if "trees" in variants:
                variants["compiled_trees"] = (functools.partial(run_trees, engine=compiled, pinned=True), tree_passes)
        for run, planned in variants.values():  # warm-up, and a check that each runs
            run(planned[0])
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for number in range(args.rounds):
            order = list(variants.items())[:: 1 if number % 2 == 0 else -1]
            for name, (run, planned) in order:
                tokens, started = 0, time.perf_counter()
                while time.perf_counter() - started < args.seconds:
                    for batch in planned:
                        run(batch)
                        tokens += sum(len(r) for r in batch)
                        if time.perf_counter() - started >= args.seconds:
                            break
                rates[name].append(tokens / (time.perf_counter() - started))
        base = statistics.median(rates["padded"])
        print(
            f"{dtype}: {len(passes)} passes ({len(shared_passes)} planned for `shared`), {real} real tokens, the "
            f"padded passes compute {100 * (1 - real / padded_tokens):.1f} % pads",
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
    parser.add_argument("--model", choices=("minilm", "smollm2", "bert-random", "qwen-random"), default="minilm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=128, help="random models: best-of-4 requests")
    parser.add_argument("--prompt-len", type=int, default=0, help="random models: tokens of each shared prompt")
    parser.add_argument("--min-len", type=int, default=22, help="random models: shortest answer (tokens)")
    parser.add_argument("--max-len", type=int, default=107, help="random models: longest answer (tokens)")
    parser.add_argument("--dtype", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--window", type=int, default=32, help="requests per dispatch (about the clients)")
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--bucket-slack", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per variant and round")
    parser.add_argument("--compiled", action="store_true", help="add compiled_packed (compiles at the warm-up)")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
