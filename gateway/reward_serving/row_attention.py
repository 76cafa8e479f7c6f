"""Attention over packed rows, one row at a time, as a torch custom op (`rewardgate::row_attention`): the CPU path
of packed scoring (reward_serving.packing).

Why a loop: on a CPU, SDPA over a gathered (rows, heads, longest, dim) block runs its flash kernel on every pad of
every row, in many small tasks; for MiniLM's 32-dim heads over best-of-N rows of 25-110 tokens that block ran at a
quarter of the matmuls' rate and held 13 % (float32) and 28 % (bf16) of a compiled packed pass. One SDPA call per
row on views of the packed tensors computes no pads and copies nothing in: SDPA's share fell to 9 % and 18 %, and
the bf16 pass served 1.28x the tokens (`bench/profile_engine_cpu.py`, docs/BENCHMARKS.md). On CUDA a kernel launch
per row would cost more than one kernel over the block (not measured: no GPU was lent), so packing keeps the
gathered path there.

Why a custom op: the loop's length is data (the number of rows and each row's length), which `torch.compile` would
otherwise trace into a graph per batch; as an opaque op (its fake implementation only states the output's shape)
the compiled packed pass calls it like any kernel and recompiles for nothing. Must not import transformers or the
web layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("rewardgate::row_attention", mutates_args=())
def row_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_lengths: torch.Tensor,
    key_lengths: torch.Tensor,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Packed (1, heads, tokens, dim) queries, keys and values, row after row (`query_lengths` and `key_lengths`:
    each row's tokens, in order; a row's queries see its own keys only) -> (1, query tokens, heads, dim).

    Keys and values may have fewer heads than the queries (grouped-query attention). `causal` needs each row's
    queries and keys to be the same tokens."""
    rows = key_lengths.tolist()
    queries, keys, values = query.split(query_lengths.tolist(), dim=2), key.split(rows, dim=2), value.split(rows, dim=2)
    grouped = key.shape[1] != query.shape[1]
    # Each row's output, (1, heads, its tokens, dim), is laid out token-major (CPU SDPA's), so one copy, the
    # concatenation, makes the (1, tokens, heads, dim) result.
    return torch.cat(
        [
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=grouped).transpose(1, 2)
            for q, k, v in zip(queries, keys, values, strict=True)
        ],
        dim=1,
    )


@row_attention.register_fake
def _(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_lengths: torch.Tensor,
    key_lengths: torch.Tensor,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    return query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
