"""Packed scoring: the rows of a batch concatenated into one sequence with no pads, so the model's projections,
feed-forward layers and norms (most of a pass's work) compute real tokens only; attention alone sees each row
apart. Issue 17 part 1: a right-padded pass of rows of uneven length computes 10-25 % pads on best-of-N traffic.

How: positions restart at 0 for each row (and token types are 0), and attention runs through an attention function
registered with transformers under `PACKED` (`AttentionInterface`), which the model uses while `packed_attention` is
entered. On a CPU it attends row by row on views of the packed tensors (`row_attention`, a custom op, so a compiled
pass calls it as one kernel); elsewhere it gathers each row's queries, keys and values into a padded (rows, heads,
longest, dim) block, runs SDPA with each row's key mask (bidirectional for encoders; causal for decoders, where right
padding needs no mask, as in `formats.pool_rewards`) and scatters the outputs back. The pooling rule is
`formats.pool_rewards`' (a decoder's `score` head at each row's last token; an encoder's own head at each row's first
token, [CLS], by handing the head one (rows, 1, hidden) block), so scores equal the padded pass's up to rounding
(tested within 1e-5 in float32).

Prompt trees (decoders; issue 17 part 2): the candidates of a best-of-N request share their prompt, so a decoder's
pass packs each such group once as a tree, the prompt then every answer with positions continuing the prompt, and
attention (`Tree`) lets each answer see the prompt and itself, never another answer: each prompt is computed once,
in the same pass as everything else, with no KV cache and no pads.

Which models pack: `suits` (`--packing auto`: BERT-shaped encoders and plainly causal decoders), and only after
`scores_as_padded`, a probe at load. An encoder's last layer computes each row's first token alone in packed passes
(`first_tokens_out`).

Compiled (`--compile --packing`): `pin` sets `PACKED` on the model for good and sets up its last layer once, before
`torch.compile`, so the compiled graph sees the same modules on every call (no per-call switch to recompile on), and
every batch, a single row too, is scored packed. The gathered attention indexes the block with integer positions
(`flat`), not a boolean mask, and the row-by-row one is an opaque op, so nothing in a pass has a data-dependent
shape. Must not import the web layer; imports torch and transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .row_attention import row_attention

PACKED = "rewardgate_packed"
ANSWER_BLOCK = 1024  # answer tokens of a tree attended in one block row (`Tree`); longer trees are split
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
    # attention row by row on the packed tensors (`row_attention`: the CPU's), not on the gathered padded block
    rows_apart: bool = False
    tree: Tree | None = None  # the rows are prompt trees (`Tree`); None: plain causal or bidirectional rows

    @classmethod
    def of(
        cls,
        lengths: Sequence[int],
        device: torch.device,
        causal: bool,
        rows_apart: bool | None = None,
        trees: Sequence[tuple[int, Sequence[int]]] | None = None,
    ) -> Packing:
        """`trees`: per row, its prompt's length and its answers' (`Tree`); causal rows only. `rows_apart`: None is
        row by row on a CPU, gathered elsewhere (trees are always gathered)."""
        sizes = torch.tensor(lengths, device=device)
        starts = torch.cumsum(sizes, 0) - sizes
        positions = torch.arange(int(sizes.max()), device=device).unsqueeze(0)
        valid = positions < sizes.unsqueeze(1)
        gather = torch.where(valid, starts.unsqueeze(1) + positions, torch.zeros_like(positions))
        tree = None
        if trees is not None and any(answers for _, answers in trees):
            if not causal:
                raise ValueError("prompt trees are causal, not bidirectional")
            tree = Tree.of(trees, starts.tolist(), device)
        apart = device.type == "cpu" if rows_apart is None else rows_apart
        return cls(starts, sizes, gather, valid, valid.reshape(-1).nonzero()[:, 0], causal, apart, tree)


@dataclass(frozen=True)
class Tree:
    """Attention for packed rows that are prompt trees: a prompt followed by several answers, each answer continuing
    the prompt (positions too), none seeing another: what each answer would see alone after its prompt, with the
    prompt in the pass once. A row with no answers is a prompt alone (a row scored alone).

    Two attention calls, so a prompt's attention does not span its answers (one mask over a whole tree measured no
    faster than the KV-cache passes: CPU flash attention computes masked blocks too): every row's prompt, gathered
    into (rows, longest prompt), causal; then the answers, gathered into block rows of up to `ANSWER_BLOCK` answer
    tokens (a tree's answers together, or, where they are longer, split between several block rows), each over keys
    that are its tree's prompt then its own answers, with a mask letting an answer token see the whole prompt and
    the earlier tokens of its own answer. Keeping a tree's short answers in one block row copies its prompt's keys
    once, not once per answer (ad hoc, faster on best-of-4 and best-of-16 with short answers than a block row per
    answer); the cap bounds what the other answers' masked-out tokens cost a long tree, and the mask's size."""

    prompt_gather: torch.Tensor  # (rows, longest prompt): packed index of each prompt position, 0 past its end
    answer_gather: torch.Tensor  # (block rows, longest): packed index of each answer token in a block row
    answer_keys: torch.Tensor  # (block rows, their longest prompt + longest block): packed index of each key
    answer_mask: torch.Tensor  # (block rows, 1, longest block, keys) bool
    # the (prompt block, answer block) outputs, flattened and concatenated, indexed into packed order
    order: torch.Tensor

    @classmethod
    def of(cls, trees: Sequence[tuple[int, Sequence[int]]], starts: Sequence[int], device: torch.device) -> Tree:
        prompts = torch.tensor([prompt for prompt, _ in trees])
        column = torch.arange(int(prompts.max()))
        prompt_valid = column.unsqueeze(0) < prompts.unsqueeze(1)
        prompt_gather = torch.where(prompt_valid, torch.tensor(list(starts)).unsqueeze(1) + column, 0)
        owner: list[int] = []  # per block row: its tree, where its answers start, which answer each token is of
        block_starts: list[int] = []
        branches: list[list[int]] = []
        for row, (prompt, answers) in enumerate(trees):
            offset = starts[row] + prompt
            for number, size in enumerate(answers, 1):
                if not branches or owner[-1] != row or len(branches[-1]) + size > ANSWER_BLOCK:
                    owner.append(row)
                    block_starts.append(offset)
                    branches.append([])
                branches[-1] += [number] * size
                offset += size
        width = max(len(ids) for ids in branches)
        branch = torch.zeros(len(branches), width, dtype=torch.long)  # 0: past the block row's end
        for k, ids in enumerate(branches):
            branch[k, : len(ids)] = torch.tensor(ids)
        answer_column = torch.arange(width)
        answer_valid = branch > 0
        answer_gather = torch.where(answer_valid, torch.tensor(block_starts).unsqueeze(1) + answer_column, 0)
        prompt_width = int(prompts[owner].max())
        answer_keys = torch.cat([prompt_gather[owner, :prompt_width], answer_gather], dim=1)
        earlier = answer_column.unsqueeze(1) >= answer_column  # (query, key)
        own = earlier & (branch.unsqueeze(2) == branch.unsqueeze(1)) & answer_valid.unsqueeze(1)
        sees_prompt = prompt_valid[owner, :prompt_width].unsqueeze(1).expand(-1, width, -1)
        answer_mask = torch.cat([sees_prompt, own], dim=2).unsqueeze(1)
        # packed index of each flattened block position that holds a real token, then where each packed token is
        real = torch.cat(
            [prompt_gather.reshape(-1)[prompt_valid.reshape(-1)], answer_gather.reshape(-1)[answer_valid.reshape(-1)]]
        )
        where = torch.cat(
            [
                prompt_valid.reshape(-1).nonzero()[:, 0],
                prompt_valid.numel() + answer_valid.reshape(-1).nonzero()[:, 0],
            ]
        )
        order = torch.empty_like(where)
        order[real] = where
        return cls(*(t.to(device) for t in (prompt_gather, answer_gather, answer_keys, answer_mask, order)))


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
    if packing.tree is not None:
        return _tree_attention(packing.tree, query, key, value, scaling), None
    if packing.rows_apart:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return row_attention(query, key, value, packing.lengths, packing.lengths, packing.causal, scale), None

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


def _tree_attention(
    tree: Tree, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """`Tree`'s two attention calls: (1, heads, tokens, dim) packed in, (1, tokens, heads, dim) out."""

    def block(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:  # -> (rows, heads, columns, dim), GQA repeated
        rows, columns = at.shape
        out = x[0][:, at.reshape(-1)].reshape(x.shape[1], rows, columns, x.shape[-1]).transpose(0, 1)
        return out.repeat_interleave(query.shape[1] // x.shape[1], dim=1) if x.shape[1] != query.shape[1] else out

    def flat(out: torch.Tensor) -> torch.Tensor:  # (rows, heads, columns, dim) -> (rows x columns, heads, dim)
        return out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[-1])

    prompts = F.scaled_dot_product_attention(
        block(query, tree.prompt_gather),
        block(key, tree.prompt_gather),
        block(value, tree.prompt_gather),
        scale=scaling,
        is_causal=True,  # right-padded prompts: a real position never sees the pads after it
    )
    answers = F.scaled_dot_product_attention(
        block(query, tree.answer_gather),
        block(key, tree.answer_keys),
        block(value, tree.answer_keys),
        attn_mask=tree.answer_mask,
        scale=scaling,
    )
    return torch.cat([flat(prompts), flat(answers)]).index_select(0, tree.order).unsqueeze(0)


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
    positions that `PACKED` would leave out), and for a decoder whose every layer attends plainly causally
    (`_plain_causal`: no sliding windows, no soft-capped attention logits); a decoder's best-of-N rows are packed as
    prompt trees, each request's prompt computed once in the same pass as the rest."""
    if getattr(model, "score", None) is not None:
        return _plain_causal(model.config)
    try:
        return _bert_shaped(last_layer(model))
    except TypeError:  # no stack of layers
        return False


def _plain_causal(config: Any) -> bool:
    """A decoder config whose attention `PACKED` reproduces: full causal attention in every layer (a sliding window
    only where the config switches it off or no layer uses it) and no soft-capping of attention logits."""
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    if getattr(config, "sliding_window", None) in (None, 0):
        return True
    if getattr(config, "use_sliding_window", True) is False:
        return True
    layer_types: Sequence[str] = getattr(config, "layer_types", None) or ()
    return bool(layer_types) and all(kind == "full_attention" for kind in layer_types)


def scores_as_padded(model: Any, device: torch.device) -> bool:
    """A probe at load: rows of uneven length scored packed and in one right-padded pass agree (to 1e-4 of the
    scores' size in float32, 2e-2 in half precision); for a decoder two of the rows share a prompt and are packed as
    a prompt tree. It fails for a model whose attention ignores `PACKED` and lets rows (or a tree's answers) see each
    other, which would otherwise score wrong without an error."""
    from gateway.formats import pool_rewards

    vocab = int(getattr(model.config, "vocab_size", 0) or 1000)
    rows = [[(101 + 37 * i + 11 * j) % vocab for j in range(length)] for i, length in enumerate((5, 23, 12))]
    groups: list[tuple[list[int], int]] = []
    if getattr(model, "score", None) is not None:  # a decoder: a third row continues the second's first 9 tokens
        rows.append([*rows[1][:9], *((7 + 13 * j) % vocab for j in range(6))])
        groups = [([1, 3], 9)]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[*row, *([0] * (width - len(row)))] for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    with torch.inference_mode():
        padded = pool_rewards(model, ids, mask).float()
        packed = score_packed(model, rows, device, groups=groups).float()
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
    model: Any,
    rows: Sequence[Sequence[int]],
    device: torch.device,
    *,
    rows_apart: bool | None = None,
    pinned: bool = False,
    groups: Sequence[tuple[Sequence[int], int]] = (),
) -> torch.Tensor:
    """One scalar reward per row, `formats.pool_rewards`' rule, computed on the packed rows. Returns (rows,).
    `pinned`: the model went through `pin` (possibly compiled since); else packing is switched on for this pass.
    `groups` (a decoder's; `engine.shared_prefix_groups`: row indices and the prompt length they share): each group
    is packed as one prompt tree (`Tree`), its prompt once and then each row's own tokens, so the prompt is
    computed once for all its rows in the same pass as everything else. `rows_apart`: `Packing.of`'s."""
    head = getattr(model, "score", None)
    if groups and head is None:
        raise ValueError("prompt trees need a decoder: an encoder's prompt tokens would attend to the answers")
    ids_list, position_list, lengths, trees, last = _layout(rows, groups)
    packing = Packing.of(lengths, device, causal=head is not None, rows_apart=rows_apart, trees=trees)
    ids = torch.tensor(ids_list, device=device).unsqueeze(0)
    positions = torch.tensor(position_list, device=device).unsqueeze(0)
    with nullcontext() if pinned else packed_attention(model):
        if head is not None:  # a decoder: its score head at each row's last token
            backbone = getattr(model, model.base_model_prefix)
            hidden = backbone(input_ids=ids, position_ids=positions, use_cache=False, rewardgate_packing=packing)
            scores: torch.Tensor = head(hidden.last_hidden_state[0, torch.tensor(last, device=device)])[:, 0]
            return scores
        # An encoder: its own head on each row's [CLS]. The last layer hands on (rows, 1, hidden), each row's first
        # token, so whatever the head reads at position 0 (a pooler, a classifier) is that row's.
        if not pinned:
            first_tokens_out(model)
        logits: torch.Tensor = model(
            input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids), rewardgate_packing=packing
        ).logits
        return logits[:, 0]


def _layout(
    rows: Sequence[Sequence[int]], groups: Sequence[tuple[Sequence[int], int]]
) -> tuple[list[int], list[int], list[int], list[tuple[int, list[int]]] | None, list[int]]:
    """The packed sequence: each group's prompt once, then each of its rows' own tokens (positions continuing the
    prompt), then every other row alone, positions from 0. Returns the token ids, their positions, the packed rows'
    lengths (a group is one), each packed row's prompt and answer lengths (`Tree`; None without groups) and, in
    input order, where each input row's last token lies."""
    ids: list[int] = []
    positions: list[int] = []
    lengths: list[int] = []
    trees: list[tuple[int, list[int]]] = []
    last = [0] * len(rows)
    grouped: set[int] = set()
    for members, prefix in groups:
        start = len(ids)
        prompt = list(rows[members[0]][:prefix])
        ids += prompt
        positions += range(prefix)
        answers = []
        for i in members:
            tail = rows[i][prefix:]
            if not tail or list(rows[i][:prefix]) != prompt:
                raise ValueError(f"row {i} does not continue its group's {prefix}-token prompt")
            ids += tail
            positions += range(prefix, len(rows[i]))
            answers.append(len(tail))
            last[i] = len(ids) - 1
            grouped.add(i)
        lengths.append(len(ids) - start)
        trees.append((prefix, answers))
    for i, row in enumerate(rows):
        if i in grouped:
            continue
        ids += row
        positions += range(len(row))
        lengths.append(len(row))
        trees.append((len(row), []))
        last[i] = len(ids) - 1
    return ids, positions, lengths, trees if groups else None, last


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

    if packing.rows_apart:  # (1, count, rows, size) queries, one per row, against each row's keys
        query = heads.query(first).view(1, rows, count, size).transpose(1, 2)
        key, value = (x.view(1, -1, count, size).transpose(1, 2) for x in (heads.key(states), heads.value(states)))
        ones = torch.ones_like(packing.lengths)
        out = row_attention(query, key, value, ones, packing.lengths, False, float(heads.scaling))[0]
    else:
        query = heads.query(first).view(rows, 1, count, size).transpose(1, 2)
        mask = packing.valid[:, None, None, :]
        out = F.scaled_dot_product_attention(
            query, block(heads.key(states)), block(heads.value(states)), attn_mask=mask, scale=heads.scaling
        ).transpose(1, 2)
    attended = layer.attention.output(out.reshape(rows, count * size), first)
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
