"""Where a CPU forward pass spends its time: the torch engine's passes over score_cpu.py's traffic, profiled by op.

Issue 17 asks, where the encoder target against vLLM is missed, for the profile that says why. This runs the
engine as the server would (windows of --window best-of-4 requests, planned by `batcher.plan_batches` under
--max-batch-tokens, packed passes budgeted in real tokens) for each engine setting, under torch.profiler with
FLOP counting, and prints per setting: real tokens/s, the share of self CPU time of the top ops, and the
matrix multiplications' achieved GFLOP/s (FLOPs the profiler counts for addmm/mm/bmm over their self time).
When matmuls hold most of the time at a rate near what the machine's cores can do, a faster pass needs less
arithmetic, not less overhead.

Run: python bench/profile_engine_cpu.py [--dtype float32] [--modes padded,packed,compiled_packed] [--passes 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `gateway`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # score_cpu's model store and traffic
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = {  # name: (packing, compiled)
    "padded": (False, False),
    "packed": (True, False),
    "compiled": (False, True),
    "compiled_packed": (True, True),
}
MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "mkldnn::_linear_pointwise")


def main(args: argparse.Namespace) -> int:
    import torch
    from score_cpu import build_store, make_bodies
    from torch.profiler import ProfilerActivity, profile

    from gateway.formats import parse_message
    from gateway.reward_serving.batcher import plan_batches
    from gateway.reward_serving.engine import TorchRewardEngine

    model_dir = build_store(Path(tempfile.mkdtemp(prefix="rewardgate-profile-"))) / "minilm-rm" / "v1"
    bodies = make_bodies(256, 4)
    print(
        f"engine profile: MiniLM-L6, {args.dtype}, torch threads {torch.get_num_threads()}, "
        f"windows of {args.window} requests, budget {args.max_batch_tokens} tokens, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for mode in args.modes:
        packing, compiled = MODES[mode]
        engine = TorchRewardEngine.load(
            model_dir, device="cpu", dtype=args.dtype, compile_blocks=compiled, packing=packing
        )
        try:
            requests = [
                engine.render([[parse_message(m, "bench") for m in conv] for conv in body["conversations"]])
                for body in bodies
            ]
            passes = []
            for start in range(0, len(requests), args.window):
                rows = [row for request in requests[start : start + args.window] for row in request]
                plan = plan_batches([len(r) for r in rows], args.max_batch_tokens, 256, packed=engine.packing)
                passes += [[rows[i] for i in batch] for batch in plan]
            passes = passes[: args.passes]
            for rows in passes[:4]:  # warm-up (compiles a compiled model's graphs)
                engine.score_batch(rows)
            with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                started = time.perf_counter()
                for rows in passes:
                    engine.score_batch(rows)
                elapsed = time.perf_counter() - started
        finally:
            engine.close()
        tokens = sum(len(row) for rows in passes for row in rows)
        self_us: dict[str, float] = defaultdict(float)
        flops = 0.0
        matmul_us = 0.0
        for event in prof.key_averages():
            self_us[event.key] += event.self_cpu_time_total
            if event.key in MATMULS:
                flops += event.flops
                matmul_us += event.self_cpu_time_total
        total = sum(self_us.values())
        top = sorted(self_us.items(), key=lambda kv: -kv[1])[: args.top]
        print(f"{mode:>16}: {tokens / elapsed:,.0f} real tokens/s over {len(passes)} passes (profiled)", flush=True)
        for name, us in top:
            print(f"{'':>18}{100 * us / total:5.1f} %  {name[:90]}")
        if matmul_us:
            print(
                f"{'':>18}matmuls: {100 * matmul_us / total:.1f} % of self CPU time, "
                f"{flops / matmul_us / 1e3:,.0f} GFLOP/s on {torch.get_num_threads()} threads",
                flush=True,
            )
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["padded", "packed", "compiled_packed"])
    parser.add_argument("--window", type=int, default=32, help="requests one dispatch of the batcher plans")
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--top", type=int, default=6, help="ops listed per setting")
    args = parser.parse_args()
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))} (expected {', '.join(MODES)})")
    return args


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
