"""Data-parallel training under `torchrun` / `accelerate launch`: the launch environment, the process
group, DDP/FSDP wrapping, batch shards, and the few collectives the loop needs.

In one process every `Distributed` method is the identity or a no-op, so `train(cfg)` reads the same
either way. Imports torch and gateway.formats (pool_rewards) only; nothing else from the project.

The rules (README, "Several GPUs"):
- `--batch-size N` is the GLOBAL micro-batch: every rank builds the same length-grouped batch order
  from the seed and takes every W-th pair of each batch (`shard`). Each rank's mean loss is scaled by
  W * n_rank / N, so DDP's gradient average is the mean over all N pairs: the optimizer sees the
  gradient a single process computes, and a run on W processes ends where a single-process run ends
  (up to float summation order). Checkpoints count global batches, so a run resumes on any W.
- Rank 0 alone prints, writes metrics.jsonl, checkpoints, the model directory and rewardgate.json.
- Every rank evaluates the whole split itself (DDP: its own replica; FSDP: the sharded forward needs
  every rank): no rank idles while rank 0 evaluates, and all agree on the result without a broadcast.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from gateway.formats import pool_rewards

# Ranks can wait on rank 0 while it writes a checkpoint or the model directory; NCCL's default of 10
# minutes is short for a large base on a slow disk.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=60)


@dataclass(frozen=True)
class LaunchEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1


def launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """torchrun's variables (which `accelerate launch --multi_gpu` also sets); absent = one process."""
    world = int(environ.get("WORLD_SIZE", "1"))
    rank = int(environ.get("RANK", "0"))
    local = int(environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad launch environment: RANK={rank} WORLD_SIZE={world}")
    return LaunchEnv(rank, local, world)


def resolve_device(name: str, env: LaunchEnv, cuda_available: bool) -> torch.device:
    """`auto` = CUDA when there is one; under a launcher each rank takes the GPU of its LOCAL_RANK."""
    device = torch.device(("cuda" if cuda_available else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None and env.world_size > 1:
        return torch.device("cuda", env.local_rank)
    return device


@dataclass(frozen=True)
class Shard:
    pairs: list[int]  # this rank's pairs of the global batch (indices into the examples)
    weight: float  # the factor on this rank's mean loss
    counted: int  # pairs that count in the batch metrics (0 for a stand-in)


def shard(batch: Sequence[int], rank: int, world_size: int) -> Shard:
    """This rank's pairs of a global batch (every W-th: the batch is sorted by length, so ranks get
    similar lengths) and the weight of its mean loss, W * n_rank / N, which makes the average over
    ranks the mean over the whole batch. A rank left without a pair (a short last batch) runs a
    stand-in pair with weight 0: every rank must take part in each gradient all-reduce."""
    mine = list(batch[rank::world_size])
    if not mine:
        return Shard([batch[0]], 0.0, 0)
    return Shard(mine, world_size * len(mine) / len(batch), len(mine))


def pooled_stats(sums: Sequence[float], keys: Sequence[str]) -> dict[str, float]:
    """Batch metrics of the whole batch from `stat_sums` added up over the ranks: pair-weighted means,
    and reward_std (bradley_terry_loss's sample std over 2n rewards) pooled from the rewards' sums."""
    pairs, squares = sums[-2], sums[-1]
    out = {k: sums[i] / pairs for i, k in enumerate(keys)}
    if "reward_std" in out:
        rewards = 2 * pairs
        variance = (squares - rewards * out["reward_mean"] ** 2) / max(rewards - 1, 1)
        out["reward_std"] = math.sqrt(max(variance, 0.0))
    return out


def stat_sums(stats: dict[str, float], pairs: int, keys: Sequence[str]) -> list[float]:
    """What adds up across ranks: each metric times the rank's pairs, the pairs, the rewards' squares."""
    squares = 0.0
    if pairs and "reward_std" in stats:
        rewards = 2 * pairs
        squares = (rewards - 1) * stats["reward_std"] ** 2 + rewards * stats["reward_mean"] ** 2
    return [pairs * stats[k] for k in keys] + [float(pairs), squares]


@dataclass(frozen=True)
class _Scores:
    logits: torch.Tensor


class PooledRewards(torch.nn.Module):
    """The reward model behind THE pooling rule, as one module whose forward DDP/FSDP can hook.

    It has no `score` head of its own, so `pool_rewards(wrapper, ...)` calls it and reads
    `.logits[:, 0]`: the trainer's forward and evaluate_pairs both go through the wrapper's hooks
    (gradient sync; FSDP's gathering of the shards) and still pool at the last real token."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Scores:
        return _Scores(pool_rewards(self.model, input_ids, attention_mask)[:, None])


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the launch, and the collectives the training loop calls."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.world_size > 1 and self.strategy == "fsdp"

    def print(self, *args: Any) -> None:
        if self.is_main:
            print(*args, flush=True)

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (it fills a cache they then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def wrap(self, model: Any, bf16: bool = False) -> Any:
        """The module the training forward runs through: the model itself in one process, else
        DDP or FSDP (fully_shard per transformer block, then the root) around PooledRewards.
        `bf16` under FSDP: fp32 shards, gathered in bf16 for compute, gradients reduced in fp32."""
        if self.world_size == 1:
            return model
        pooled = PooledRewards(model)
        if not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(pooled, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # FSDP2: torch >= 2.6

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        policy = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if bf16 else MixedPrecisionPolicy()
        blocks = set(getattr(model, "_no_split_modules", None) or ())  # HF's names for its transformer blocks
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh, mp_policy=policy)
        return fully_shard(pooled, mesh=mesh, mp_policy=policy)

    def gradient_sync(self, runner: Any, sync: bool) -> AbstractContextManager[Any]:
        """Skip the gradient all-reduce on micro-batches that only accumulate (grad_accum > 1)."""
        if self.world_size == 1 or sync:
            return nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(runner)
        no_sync: AbstractContextManager[Any] = runner.no_sync()
        return no_sync

    def reduce_stats(self, stats: dict[str, float], pairs: int) -> dict[str, float]:
        """One micro-batch's metrics over the global batch, as one process would log them."""
        if self.world_size == 1:
            return stats
        keys = sorted(stats)
        sums = torch.tensor(stat_sums(stats, pairs, keys), dtype=torch.float64, device=self.device)
        tdist.all_reduce(sums)
        return pooled_stats(sums.tolist(), keys)

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank: decisions taken from a clock (the time budget) must match."""
        if self.world_size == 1:
            return value
        box = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.broadcast(box, src=0)
        return float(box.item())

    def min_over_ranks(self, value: int) -> int:
        if self.world_size == 1:
            return value
        box = torch.tensor([value], dtype=torch.int64, device=self.device)
        tdist.all_reduce(box, op=tdist.ReduceOp.MIN)
        return int(box.item())

    def scorer(self, model: Any, runner: Any) -> Any:
        """What evaluation scores with: the plain model (each DDP rank holds all of it), or under
        FSDP the wrapped root, whose forward gathers the shards on every rank."""
        return runner if self.fsdp else model

    def gathered(self, tree: Any) -> Any:
        """A state (dicts/lists of tensors) with FSDP's shards gathered into whole CPU tensors.
        A collective under FSDP: every rank calls it, in the same order; else the state itself."""
        if not self.fsdp:
            return tree
        from torch.distributed.tensor import DTensor

        if isinstance(tree, DTensor):
            return tree.full_tensor().cpu()
        if isinstance(tree, Mapping):
            return {k: self.gathered(v) for k, v in tree.items()}
        if isinstance(tree, list | tuple):
            return type(tree)(self.gathered(v) for v in tree)
        return tree

    def sharded_like(self, saved: Any, like: Any) -> Any:
        """The inverse of `gathered` for loading: each whole tensor cut to the sharding of `like`."""
        if not self.fsdp:
            return saved
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(like, DTensor) and isinstance(saved, torch.Tensor):
            # Every rank read the same checkpoint, so each keeps its own slice: no broadcast.
            return distribute_tensor(saved.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
        if isinstance(like, Mapping) and isinstance(saved, Mapping):
            return {k: self.sharded_like(v, like[k]) if k in like else v for k, v in saved.items()}
        return saved

    def sharded_optimizer_state(self, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A gathered optimizer state_dict, its per-parameter tensors cut like their parameters."""
        if not self.fsdp:
            return saved
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {
            i: {k: self.sharded_like(v, params[i]) if v.shape == params[i].shape else v for k, v in s.items()}
            for i, s in saved["state"].items()
        }
        return {**saved, "state": state}


@contextmanager
def _fsdp_no_sync(runner: Any) -> Iterator[None]:
    runner.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        runner.set_requires_gradient_sync(True)


@contextmanager
def session(device: str, strategy: str, environ: Mapping[str, str] | None = None) -> Iterator[Distributed]:
    """The process group for the length of one training run: joined on entry (NCCL on CUDA, gloo on
    CPU) unless the caller already did, left on exit, errors included. On success every rank
    waits at a barrier first, so `train` returns only once rank 0 has written the model directory."""
    env = launch_env(os.environ if environ is None else environ)
    resolved = resolve_device(device, env, torch.cuda.is_available())
    if env.world_size == 1:
        yield Distributed(resolved)
        return
    owns = not tdist.is_initialized()
    if owns:
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        tdist.init_process_group(
            "nccl" if resolved.type == "cuda" else "gloo",
            timeout=COLLECTIVE_TIMEOUT,
            device_id=resolved if resolved.type == "cuda" else None,
        )
    try:
        ctx = Distributed(resolved, env.rank, env.world_size, strategy)
        yield ctx
        ctx.barrier()
    finally:
        if owns:
            tdist.destroy_process_group()
