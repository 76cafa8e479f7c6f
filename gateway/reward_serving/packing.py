"""Packed scoring: the rows of a batch concatenated into one sequence with no pads, so the model's projections,
feed-forward layers and norms (most of a pass's work) compute real tokens only; attention alone sees each row
apart. Issue 17 part 1: a right-padded pass of rows of uneven length computes 10-25 % pads on best-of-N traffic.

How: positions restart at 0 for each row (and token types are 0), and attention runs through an attention function
registered with transformers under `PACKED` (`AttentionInterface`), which the model uses while `packed_attention`
is entered: it gathers each row's queries, keys and values into a padded (rows, heads, longest, dim) block, runs
SDPA with each row's key mask (bidirectional for encoders; causal for decoders, where right padding needs no mask,
as in `formats.pool_rewards`) and scatters the outputs back. The pooling rule is `formats.pool_rewards`' (a
decoder's `score` head at each row's last token; an encoder's own head at each row's first token, [CLS], by
handing the head one (rows, 1, hidden) block), so scores equal the padded pass's up to rounding (tested within
1e-5 in float32). Must not import the web layer; imports torch and transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

PACKED = "rewardgate_packed"
_LOCK = threading.Lock()  # the attention implementation is a config field: one packed pass at a time per process


@dataclass(frozen=True)
class Packing:
    """Where each row lies in the packed sequence, and the padded block attention gathers them into."""

    starts: torch.Tensor  # (rows,) offset of each row's first token
    lengths: torch.Tensor  # (rows,)
    gather: torch.Tensor  # (rows, longest): the packed index of each (row, position), 0 beyond a row's end
    valid: torch.Tensor  # (rows, longest) bool: real positions
    causal: bool
    jagged: bool = False  # attention on nested (jagged) tensors instead of the gathered padded block

    @classmethod
    def of(cls, lengths: Sequence[int], device: torch.device, causal: bool, jagged: bool = False) -> Packing:
        sizes = torch.tensor(lengths, device=device)
        starts = torch.cumsum(sizes, 0) - sizes
        positions = torch.arange(int(sizes.max()), device=device).unsqueeze(0)
        valid = positions < sizes.unsqueeze(1)
        gather = torch.where(valid, starts.unsqueeze(1) + positions, torch.zeros_like(positions))
        return cls(starts, sizes, gather, valid, causal, jagged)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: (1, heads, tokens, dim) packed in, (1, tokens, heads, dim) out."""
    packing: Packing = kwargs["rewardgate_packing"]
    rows, width = packing.gather.shape
    if packing.jagged:
        return _jagged_attention(packing, query, key, value, scaling), None

    def block(x: torch.Tensor) -> torch.Tensor:  # (1, heads, tokens, dim) -> (rows, heads, longest, dim)
        return x[0][:, packing.gather.reshape(-1)].reshape(x.shape[1], rows, width, x.shape[-1]).transpose(0, 1)

    q, k, v = block(query), block(key), block(value)
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key/value head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    mask = None if packing.causal else packing.valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, is_causal=packing.causal)
    # (rows, heads, longest, dim) -> the real positions, in packed order: (1, tokens, heads, dim)
    return out.transpose(1, 2)[packing.valid].unsqueeze(0), None


def _jagged_attention(
    packing: Packing, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """The same attention on nested jagged tensors over the packed values (no gathered copy). On a CPU torch 2.13
    has only SDPA's math backend for them (it splits them into per-row tensors), and none with `is_causal`: encoders
    only, measured in bench/padding_cpu.py, not used by the engine."""
    if packing.causal:
        raise ValueError("jagged attention: torch 2.13 has no CPU SDPA backend for causal nested tensors")
    offsets = torch.cat([packing.starts, (packing.starts[-1:] + packing.lengths[-1:])])
    heads = query.shape[1]

    def jagged(x: torch.Tensor) -> torch.Tensor:  # (1, heads, tokens, dim) -> (rows, heads, j, dim)
        values = x[0].transpose(0, 1)
        if values.shape[1] != heads:
            values = values.repeat_interleave(heads // values.shape[1], dim=1)
        return torch.nested.nested_tensor_from_jagged(values.contiguous(), offsets).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        jagged(query), jagged(key), jagged(value), scale=scaling, is_causal=packing.causal
    )
    return out.transpose(1, 2).values().unsqueeze(0)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # packed_attention_forward masks by itself


def register() -> None:
    """Make `PACKED` an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED, packed_attention_forward)
    AttentionMaskInterface.register(PACKED, _no_mask)


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """`model` (and every submodule sharing its config) attends with `PACKED` inside the block."""
    with _LOCK:
        configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
        saved = {key: config._attn_implementation for key, config in configs.items()}
        for config in configs.values():
            config._attn_implementation = PACKED
        try:
            yield
        finally:
            for key, config in configs.items():
                config._attn_implementation = saved[key]


def score_packed(
    model: Any, rows: Sequence[Sequence[int]], device: torch.device, *, jagged: bool = False
) -> torch.Tensor:
    """One scalar reward per row, `formats.pool_rewards`' rule, computed on the packed rows. Returns (rows,)."""
    head = getattr(model, "score", None)
    lengths = [len(row) for row in rows]
    packing = Packing.of(lengths, device, causal=head is not None, jagged=jagged)
    ids = torch.tensor([token for row in rows for token in row], device=device).unsqueeze(0)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    with packed_attention(model):
        if head is not None:  # a decoder: its score head at each row's last token
            backbone = getattr(model, model.base_model_prefix)
            hidden = backbone(input_ids=ids, position_ids=positions, use_cache=False, rewardgate_packing=packing)
            last = packing.starts + packing.lengths - 1
            scores: torch.Tensor = head(hidden.last_hidden_state[0, last])[:, 0]
            return scores
        # An encoder: its own head on each row's [CLS]. The last layer hands on (rows, 1, hidden), each row's first
        # token, so whatever the head reads at position 0 (a pooler, a classifier) is that row's.
        layer = last_layer(model)
        handle = layer.register_forward_hook(lambda _m, _a, out: _first_tokens(out, packing.starts))
        try:
            logits: torch.Tensor = model(
                input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids), rewardgate_packing=packing
            ).logits
        finally:
            handle.remove()
        return logits[:, 0]


def _first_tokens(output: Any, starts: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (output[0][0, starts].unsqueeze(1), *output[1:])
    return output[0, starts].unsqueeze(1)


def last_layer(model: Any) -> torch.nn.Module:
    """The last block of the model's largest stack of identical layers."""
    stacks = [
        m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len({type(b) for b in m}) == 1 and len(m)
    ]
    if not stacks:
        raise TypeError("packed scoring: found no stack of layers")
    last: torch.nn.Module = max(stacks, key=len)[-1]
    return last
