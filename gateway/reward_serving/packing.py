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
1e-5 in float32).

Which models pack: `suits` (`--packing auto`: BERT-shaped encoders), and only after `scores_as_padded`, a probe at
load. An encoder's last layer computes each row's first token alone in packed passes (`first_tokens_out`).

Compiled (`--compile --packing`): `pin` sets `PACKED` on the model for good and sets up its last layer once, before
`torch.compile`, so the compiled graph sees the same modules on every call (no per-call switch to recompile on), and
every batch, a single row too, is scored packed. The attention indexes the block with integer positions (`flat`),
not a boolean mask, so nothing in a pass has a data-dependent shape. Must not import the web layer; imports torch
and transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
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
    flat: torch.Tensor  # (tokens,): where each packed token lies in the (rows x longest) block, in packed order
    causal: bool
    jagged: bool = False  # attention on nested (jagged) tensors instead of the gathered padded block

    @classmethod
    def of(cls, lengths: Sequence[int], device: torch.device, causal: bool, jagged: bool = False) -> Packing:
        sizes = torch.tensor(lengths, device=device)
        starts = torch.cumsum(sizes, 0) - sizes
        positions = torch.arange(int(sizes.max()), device=device).unsqueeze(0)
        valid = positions < sizes.unsqueeze(1)
        gather = torch.where(valid, starts.unsqueeze(1) + positions, torch.zeros_like(positions))
        return cls(starts, sizes, gather, valid, valid.reshape(-1).nonzero()[:, 0], causal, jagged)


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
    out = out.transpose(1, 2).reshape(rows * width, out.shape[1], out.shape[-1])
    return out.index_select(0, packing.flat).unsqueeze(0), None


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
        configs = _configs(model)
        saved = {key: config._attn_implementation for key, config in configs.items()}
        for config in configs.values():
            config._attn_implementation = PACKED
        try:
            yield
        finally:
            for key, config in configs.items():
                config._attn_implementation = saved[key]


def suits(model: Any) -> bool:
    """`--packing auto`: packing is on for an encoder whose last layer is BERT-shaped (`_bert_shaped`: full
    bidirectional attention through transformers' attention interface, no local windows, soft-capping or relative
    positions that `PACKED` would leave out). Decoders stay padded: their best-of-N rows share a prompt, computed
    once (engine._score_shared_prefixes), and some (sliding windows, soft-capped logits) attend in ways `PACKED`
    does not reproduce."""
    if getattr(model, "score", None) is not None:
        return False
    try:
        return _bert_shaped(last_layer(model))
    except TypeError:  # no stack of layers
        return False


def scores_as_padded(model: Any, device: torch.device) -> bool:
    """A probe at load: rows of uneven length scored packed and in one right-padded pass agree (to 1e-4 of the
    scores' size in float32, 2e-2 in half precision). It fails for a model whose attention ignores `PACKED` and
    lets rows see each other, which would otherwise score wrong without an error."""
    from gateway.formats import pool_rewards

    vocab = int(getattr(model.config, "vocab_size", 0) or 1000)
    rows = [[(101 + 37 * i + 11 * j) % vocab for j in range(length)] for i, length in enumerate((5, 23, 12))]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[*row, *([0] * (width - len(row)))] for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    with torch.inference_mode():
        padded = pool_rewards(model, ids, mask).float()
        packed = score_packed(model, rows, device).float()
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return bool(torch.allclose(packed, padded, rtol=tolerance, atol=tolerance * (1 + float(padded.abs().max()))))


def pin(model: Any) -> None:
    """`model` scored packed for good, ready for torch.compile: `PACKED` attention and, for an encoder, its last
    layer's first-token output (`first_tokens_out`), both set once (score_packed with `pinned=True` scores it)."""
    register()
    for config in _configs(model).values():
        config._attn_implementation = PACKED
    if getattr(model, "score", None) is None:
        first_tokens_out(model)


def _configs(model: Any) -> dict[int, Any]:
    return {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}


def score_packed(
    model: Any, rows: Sequence[Sequence[int]], device: torch.device, *, jagged: bool = False, pinned: bool = False
) -> torch.Tensor:
    """One scalar reward per row, `formats.pool_rewards`' rule, computed on the packed rows. Returns (rows,).
    `pinned`: the model went through `pin` (possibly compiled since); else packing is switched on for this pass."""
    head = getattr(model, "score", None)
    lengths = [len(row) for row in rows]
    packing = Packing.of(lengths, device, causal=head is not None, jagged=jagged)
    ids = torch.tensor([token for row in rows for token in row], device=device).unsqueeze(0)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    with nullcontext() if pinned else packed_attention(model):
        if head is not None:  # a decoder: its score head at each row's last token
            backbone = getattr(model, model.base_model_prefix)
            hidden = backbone(input_ids=ids, position_ids=positions, use_cache=False, rewardgate_packing=packing)
            last = packing.starts + packing.lengths - 1
            scores: torch.Tensor = head(hidden.last_hidden_state[0, last])[:, 0]
            return scores
        # An encoder: its own head on each row's [CLS]. The last layer hands on (rows, 1, hidden), each row's first
        # token, so whatever the head reads at position 0 (a pooler, a classifier) is that row's.
        if not pinned:
            first_tokens_out(model)
        logits: torch.Tensor = model(
            input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids), rewardgate_packing=packing
        ).logits
        return logits[:, 0]


def first_tokens_out(model: Any) -> None:
    """In packed passes, an encoder's last layer hands on each row's first token ([CLS]) alone, as (rows, 1, hidden):
    its head reads nothing else. A BERT-shaped layer (BERT, RoBERTa, MiniLM, XLM-R, ELECTRA: `_bert_shaped`) then
    computes only those tokens' queries, attention, output projection and feed-forward, its keys and values still
    over every token of its row: of a 6-layer MiniLM's projection and MLP work, 14 % is skipped. Any other layer
    computes every token and a forward hook keeps the first ones. Passes without packing are untouched. Idempotent."""
    layer = last_layer(model)
    if getattr(layer, "rewardgate_first_tokens", False):
        return
    if _bert_shaped(layer):
        whole = layer.forward

        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            packing: Packing | None = kwargs.get("rewardgate_packing")
            if packing is None:
                return whole(hidden_states, *args, **kwargs)
            return _first_token_layer(layer, hidden_states, packing)

        layer.forward = forward
    else:
        layer.register_forward_hook(_first_tokens, with_kwargs=True)
    setattr(layer, "rewardgate_first_tokens", True)  # noqa: B010 (a plain attribute; Module's typing wants a Tensor)


def _bert_shaped(layer: torch.nn.Module) -> bool:
    """A post-norm encoder layer as transformers' BERT writes it, with nothing that `_first_token_layer` leaves out."""
    attention = getattr(layer, "attention", None)
    heads = getattr(attention, "self", None)
    return (
        all(hasattr(heads, name) for name in ("query", "key", "value", "num_attention_heads", "attention_head_size"))
        and hasattr(heads, "scaling")
        and not getattr(heads, "is_decoder", False)
        and hasattr(attention, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
        and not hasattr(layer, "crossattention")
    )


def _first_token_layer(layer: Any, hidden: torch.Tensor, packing: Packing) -> torch.Tensor:
    """A BERT-shaped layer's output at each row's first token, from the packed (1, tokens, hidden) input."""
    heads = layer.attention.self
    rows, width = packing.gather.shape
    count, size = heads.num_attention_heads, heads.attention_head_size
    states = hidden[0]
    first = states.index_select(0, packing.starts)  # (rows, hidden)

    def block(x: torch.Tensor) -> torch.Tensor:  # (tokens, count * size) -> (rows, count, longest, size)
        return x[packing.gather.reshape(-1)].view(rows, width, count, size).transpose(1, 2)

    query = heads.query(first).view(rows, 1, count, size).transpose(1, 2)
    mask = packing.valid[:, None, None, :]
    out = F.scaled_dot_product_attention(
        query, block(heads.key(states)), block(heads.value(states)), attn_mask=mask, scale=heads.scaling
    )
    attended = layer.attention.output(out.transpose(1, 2).reshape(rows, count * size), first)
    result: torch.Tensor = layer.output(layer.intermediate(attended), attended).unsqueeze(1)
    return result


def _first_tokens(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook on an encoder's last layer: in a packed pass, each row's first token as a (rows, 1, hidden)
    block; in any other pass the output unchanged."""
    packing: Packing | None = kwargs.get("rewardgate_packing")
    if packing is None:
        return output
    if isinstance(output, tuple):
        return (output[0][0, packing.starts].unsqueeze(1), *output[1:])
    return output[0, packing.starts].unsqueeze(1)


def last_layer(model: Any) -> torch.nn.Module:
    """The last block of the model's largest stack of identical layers."""
    stacks = [
        m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len({type(b) for b in m}) == 1 and len(m)
    ]
    if not stacks:
        raise TypeError("packed scoring: found no stack of layers")
    last: torch.nn.Module = max(stacks, key=len)[-1]
    return last
