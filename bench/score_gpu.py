"""GPU scoring throughput: plain transformers batching vs our engine path, measured in the same run.

Model: a Qwen2.5-0.5B-shaped Qwen2ForSequenceClassification (num_labels=1) with random weights, bf16.
Traffic: conversations of uniform random length 64-512 tokens (plus a fixed-512 reference).
Variants, each timed on the same token lists:
  hf_fixed512       plain transformers, batch 64, every row 512 tokens (the padding-free reference)
  hf_naive          plain transformers, batch 64, arrival order, left padding, the model's own forward
  hf_sorted         the same, rows sorted by length first
  engine_<budget>   OUR path: batcher.plan_batches (length-sorted, padded-token budget) +
                    TorchRewardEngine.score_batch (right padding, formats.pool_rewards, inference_mode)
  engine_<budget>_compiled   the same after engine.compile_repeated_blocks (torch.compile per layer, the
                    server's --compile)
  exp_nomask_*      EXPERIMENT, not the engine: right-padded causal decoders without an attention mask (see
                    nomask_forward); what a decoder fast path in formats.pool_rewards would gain
  hf_fixed512_compiled  the fixed-512 reference after compilation (and with the KV cache off): a ceiling
The hf_* variants run the model's own forward as plain transformers users do (KV cache on, the default);
the engine turns it off (config.use_cache=False), which also lets the compiled layers share one graph.
Reports useful (unpadded) tokens/s and MFU = 2 * non-embedding params * tokens/s / peak, where the peak
is a measured bf16 8192^3 matmul. Every variant runs in try/except and prints as it goes; results go to
$OUT/score_gpu.json when OUT is set (rewritten after each variant). TINY=1: toy shape on CPU, seconds.

Run: python bench/score_gpu.py        (from the repository root; needs only torch and transformers)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `gateway`

import torch

TINY = os.environ.get("TINY") == "1"
TIME_LIMIT_S = 200.0  # stop starting new variants after this (the whole run stays under ~4 minutes)
SEED = 0
Rows = Sequence[tuple[int, ...]]
Scorer = Callable[[Rows], list[float]]  # token-id rows -> one score per row, in order


def qwen_config(tiny: bool) -> Any:
    from transformers import Qwen2Config

    shape: dict[str, Any] = (
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=1000,
        )
        if tiny
        else dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
        )
    )
    return Qwen2Config(
        **shape,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        num_labels=1,
        pad_token_id=0,
    )


def build_model(device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen2ForSequenceClassification

    cfg = qwen_config(TINY)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    with torch.device(device):
        model = Qwen2ForSequenceClassification(cfg)
    return model.to(dtype).eval()


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    n = 1024 if TINY else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 3 if TINY else 20
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_rows(count: int, low: int, high: int, vocab: int) -> list[tuple[int, ...]]:
    rng = random.Random(SEED)
    return [tuple(rng.randrange(1, vocab) for _ in range(rng.randint(low, high))) for _ in range(count)]


# ---------------------------------------------------------------- the variants: rows -> scores


def hf_forward(model: Any, device: torch.device, batch_size: int, sort: bool) -> Scorer:
    """Plain transformers: fixed batch size, left padding, the model's own forward (pad-id pooling)."""

    def run(rows: Rows) -> list[float]:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i])) if sort else list(range(len(rows)))
        scores = [0.0] * len(rows)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(rows[i]) for i in chunk)
                ids = torch.tensor([[0] * (width - len(rows[i])) + list(rows[i]) for i in chunk])
                mask = (ids != 0).long()
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for i, s in zip(chunk, logits[:, 0].float().cpu().tolist(), strict=True):
                    scores[i] = s
        return scores

    return run


def engine_forward(engine: Any, budget: int) -> Scorer:
    """Our path: length-sorted batches under a padded-token budget, then the engine's batch scoring."""
    from gateway.reward_serving.batcher import plan_batches

    def run(rows: Rows) -> list[float]:
        scores = [0.0] * len(rows)
        for batch in plan_batches([len(r) for r in rows], budget, max_batch_size=4096):
            for i, s in zip(batch, engine.score_batch([rows[i] for i in batch]), strict=True):
                scores[i] = s
        return scores

    return run


def nomask_forward(model: Any, device: torch.device, budget: int) -> Scorer:
    """EXPERIMENT, not our engine: a causal decoder with right padding needs no attention mask (a real token
    never sees the pads after it), so the backbone can take the fast unmasked (flash) SDPA path and the score
    is read at length - 1. Measures what a `pool_rewards` fast path for decoders would gain."""
    from gateway.reward_serving.batcher import plan_batches

    backbone = getattr(model, model.base_model_prefix)

    def run(rows: Rows) -> list[float]:
        scores = [0.0] * len(rows)
        with torch.inference_mode():
            for batch in plan_batches([len(r) for r in rows], budget, max_batch_size=4096):
                width = max(len(rows[i]) for i in batch)
                ids = torch.tensor([[*rows[i], *([0] * (width - len(rows[i])))] for i in batch]).to(device)
                last = torch.tensor([len(rows[i]) - 1 for i in batch], device=device)
                hidden = backbone(input_ids=ids).last_hidden_state
                out = model.score(hidden[torch.arange(len(batch), device=device), last])[:, 0]
                for i, s in zip(batch, out.float().cpu().tolist(), strict=True):
                    scores[i] = s
        return scores

    return run


def padded_tokens_hf(rows: Rows, batch_size: int, sort: bool) -> int:
    lengths = sorted(len(r) for r in rows) if sort else [len(r) for r in rows]
    chunks = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    return sum(len(chunk) * max(chunk) for chunk in chunks)


def padded_tokens_engine(rows: Rows, budget: int) -> int:
    from gateway.reward_serving.batcher import plan_batches

    lengths = [len(r) for r in rows]
    return sum(len(b) * max(lengths[i] for i in b) for b in plan_batches(lengths, budget, 4096))


def timed(
    run: Scorer, rows: Rows, device: torch.device, warm_rows: Rows, repeats: int
) -> tuple[float, float, list[float]]:
    """(warm-up seconds, best pass seconds, scores of the last pass)."""
    start = time.perf_counter()
    run(warm_rows)
    sync(device)
    warm = time.perf_counter() - start
    best, scores = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = run(rows)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return warm, best, scores


def main() -> int:
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not TINY else "cpu")
    if TINY:  # a functional check: one thread keeps toy-sized ops from fighting over a shared CPU
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out_dir = os.environ.get("OUT")
    import transformers

    from gateway.reward_serving.engine import TorchRewardEngine, compile_repeated_blocks

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "tiny": TINY,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "variants": {},
    }

    def save() -> None:
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "score_gpu.json").write_text(json.dumps(results, indent=2))

    peak = measured_peak_flops(device, dtype)
    results["peak_flops"] = peak
    print(f"device {results['device']} {dtype}; measured matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    model = build_model(device, dtype)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    results["non_embedding_params"] = params
    cfg = model.config
    print(
        f"model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}; {params / 1e6:.1f}M non-embedding "
        f"params; built in {time.perf_counter() - started:.1f}s",
        flush=True,
    )

    low, high, count, fixed_count = (16, 64, 96, 64) if TINY else (64, 512, 3072, 1024)
    budgets = (1024, 2048) if TINY else (16384, 32768, 65536)
    varlen = make_rows(count, low, high, cfg.vocab_size)
    fixed = make_rows(fixed_count, high, high, cfg.vocab_size)
    useful = sum(map(len, varlen))
    results["traffic"] = {"conversations": count, "lengths": [low, high], "useful_tokens": useful}
    repeats = 1 if TINY else 2
    reference: list[float] | None = None

    def variant(name: str, run: Scorer, rows: Rows, padded: int) -> None:
        nonlocal reference
        if time.perf_counter() - started > TIME_LIMIT_S:
            print(f"{name:28s} skipped (time limit)", flush=True)
            results["variants"][name] = {"skipped": "time limit"}
            return
        try:
            warm, seconds, scores = timed(run, rows, device, rows[: max(8, len(rows) // 8)], repeats)
            tokens = sum(map(len, rows))
            rate = tokens / seconds
            mfu = 2 * params * rate / peak
            entry: dict[str, Any] = {
                "tokens_per_s": rate,
                "mfu": mfu,
                "seconds": seconds,
                "warmup_s": warm,
                "useful_tokens": tokens,
                "padded_tokens": padded,
                "padding_efficiency": tokens / padded,
            }
            if rows is varlen:
                if reference is None:
                    reference = scores
                entry["max_abs_diff_vs_hf_naive"] = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
            results["variants"][name] = entry
            print(
                f"{name:28s} {rate / 1e3:9.1f}K tok/s  MFU {mfu:5.3f}  pad-eff {tokens / padded:5.3f}  "
                f"({seconds:.2f}s/pass, warm-up {warm:.1f}s)",
                flush=True,
            )
        except Exception as exc:  # a failed variant is reported, the others still run
            traceback.print_exc()
            results["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()

    batch = 64 if not TINY else 16
    variant(
        "hf_fixed512" if not TINY else "hf_fixed",
        hf_forward(model, device, batch, sort=False),
        fixed,
        padded_tokens_hf(fixed, batch, False),
    )
    variant("hf_naive", hf_forward(model, device, batch, sort=False), varlen, padded_tokens_hf(varlen, batch, False))
    variant("hf_sorted", hf_forward(model, device, batch, sort=True), varlen, padded_tokens_hf(varlen, batch, True))
    # Built only now: the engine turns the KV cache off (config.use_cache=False), which plain transformers
    # users scoring with the model's own forward do not do, so the hf_* variants above run with it on.
    engine = TorchRewardEngine(model, None, max_length=high, pad_token_id=0, name="bench")
    for budget in budgets:
        variant(
            f"engine_{budget // 1024}k", engine_forward(engine, budget), varlen, padded_tokens_engine(varlen, budget)
        )
    best = max(budgets)
    variant(
        f"exp_nomask_{best // 1024}k", nomask_forward(model, device, best), varlen, padded_tokens_engine(varlen, best)
    )
    if device.type == "cuda" or os.environ.get("COMPILE") == "1":
        compile_start = time.perf_counter()
        try:
            compile_repeated_blocks(model)
            variant(
                f"engine_{best // 1024}k_compiled",
                engine_forward(engine, best),
                varlen,
                padded_tokens_engine(varlen, best),
            )
            variant(
                f"exp_nomask_{best // 1024}k_compiled",
                nomask_forward(model, device, best),
                varlen,
                padded_tokens_engine(varlen, best),
            )
            if device.type == "cuda":
                variant(
                    "hf_fixed512_compiled",
                    hf_forward(model, device, batch, sort=False),
                    fixed,
                    padded_tokens_hf(fixed, batch, False),
                )
        except Exception as exc:  # compilation is optional: report and go on
            traceback.print_exc()
            results["variants"]["compiled"] = {"error": f"{type(exc).__name__}: {exc}"}
        results["compile_section_s"] = time.perf_counter() - compile_start

    v = results["variants"]
    naive, sorted_ = v.get("hf_naive", {}).get("tokens_per_s"), v.get("hf_sorted", {}).get("tokens_per_s")
    ours = [(k, e["tokens_per_s"], e["mfu"]) for k, e in v.items() if k.startswith("engine") and "mfu" in e]
    if ours and naive and sorted_:
        name, rate, mfu = max(ours, key=lambda x: x[1])
        results["summary"] = {
            "best_engine_variant": name,
            "best_engine_mfu": mfu,
            "speedup_vs_hf_naive": rate / naive,
            "speedup_vs_hf_sorted": rate / sorted_,
        }
        print(
            f"best engine variant {name}: MFU {mfu:.3f}; {rate / naive:.2f}x hf_naive, {rate / sorted_:.2f}x hf_sorted",
            flush=True,
        )
    results["total_s"] = time.perf_counter() - started
    print(f"total {results['total_s']:.1f}s", flush=True)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
