"""DESIGN contract 2's one conversation -> tokens render function and the reward pooling rule, shared by the trainer,
the reward server and the importer of published reward models; and the histogram of a model card's reward stats.
Tokenizers and models are passed in and used through their methods only: no torch or transformers import here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .messages import Message


def reward_histogram(scores: Sequence[float], bins: int = 20) -> dict[str, list[float] | list[int]] | None:
    """`reward_stats.histogram` of rewardgate.json, which the console draws: {"edges": bins + 1 values, "counts":
    bins}; None without scores. Written by the trainer and by the importer of published models."""
    if not scores:
        return None
    low, high = min(scores), max(scores)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, int((score - low) / width))] += 1
    return {"edges": [round(low + i * width, 6) for i in range(bins + 1)], "counts": counts}


@dataclass(frozen=True)
class Rendered:
    """Token ids of one conversation; the reward is read at the last id (see pool_rewards)."""

    input_ids: tuple[int, ...]
    prompt_tokens_trimmed: int  # prompt tokens cut from the left to fit max_length
    response_tokens_truncated: int  # response tokens cut from the right (the response alone did not fit)


def _plain_text(messages: Sequence[Message]) -> str:
    # For tokenizers without a chat template (BERT-style encoders): a fixed, readable layout.
    return "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in messages)


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def render_responses(
    tokenizer: Any,
    prompt: Sequence[Message],
    responses: Sequence[Message],
    max_length: int,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[Rendered]:
    """Render `prompt` + each response to token ids: THE rendering shared by trainer and server.

    Text: the tokenizer's chat template when it has one (its own markers, no extra special
    tokens), else a plain "Role: content" layout wrapped in [CLS] ... [SEP] (or BOS) when the
    tokenizer defines them. The prompt part is rendered once for all responses.
    Truncation policy (max_length): the response is kept whole and the prompt is trimmed from
    the left; only a response that alone exceeds the budget is cut, from the right, and flagged.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    template = getattr(tokenizer, "chat_template", None)
    extra: dict[str, Any] = {"tools": [dict(t) for t in tools]} if tools else {}
    prompt_dicts = [m.to_dict() for m in prompt]
    head_special: list[int] = []
    tail_special: list[int] = []
    if template:
        head_text = (
            tokenizer.apply_chat_template(prompt_dicts, tokenize=False, add_generation_prompt=True, **extra)
            if prompt
            else ""
        )
    else:
        head_text = _plain_text(prompt) + "Assistant: "
        for name in ("cls_token_id", "bos_token_id"):
            if getattr(tokenizer, name, None) is not None:
                head_special = [int(getattr(tokenizer, name))]
                break
        if getattr(tokenizer, "sep_token_id", None) is not None:
            tail_special = [int(tokenizer.sep_token_id)]
    budget = max_length - len(head_special) - len(tail_special)
    head_ids_cache: dict[str, list[int]] = {}
    out = []
    for response in responses:
        if template:
            full = tokenizer.apply_chat_template([*prompt_dicts, response.to_dict()], tokenize=False, **extra)
            # Templates normally extend the generation prompt; if one rewrites earlier turns,
            # the shared prefix still marks where the prompt ends.
            cut = len(head_text) if full.startswith(head_text) else _common_prefix_length(full, head_text)
            head, tail = full[:cut], full[cut:]
        else:
            head, tail = head_text, response.content
        if head not in head_ids_cache:
            head_ids_cache[head] = list(tokenizer.encode(head, add_special_tokens=False)) if head else []
        prompt_ids = head_ids_cache[head]
        response_ids = list(tokenizer.encode(tail, add_special_tokens=False))
        truncated = max(0, len(response_ids) - budget)
        if truncated:
            response_ids = response_ids[:budget]
        keep = budget - len(response_ids)
        trimmed = max(0, len(prompt_ids) - keep)
        ids = head_special + prompt_ids[trimmed:] + response_ids + tail_special
        out.append(Rendered(tuple(ids), trimmed, truncated))
    return out


def render_conversation(
    tokenizer: Any,
    conversation: Sequence[Message],
    max_length: int,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Rendered:
    """Render a whole conversation whose last message is the response to score."""
    if not conversation:
        raise ValueError("conversation is empty")
    return render_responses(tokenizer, conversation[:-1], [conversation[-1]], max_length, tools)[0]


def group_by_prompt(conversations: Sequence[Sequence[Message]]) -> list[list[int]]:
    """Indices of the conversations grouped by prompt (every message but the last), groups in first-seen order:
    the N candidates of one best-of-N request form one group."""
    groups: dict[str, list[int]] = {}
    for i, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"conversation {i} is empty")
        key = json.dumps([m.to_dict() for m in conversation[:-1]], sort_keys=True, ensure_ascii=False, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def render_many(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    max_length: int,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[tuple[int, ...]]:
    """Token ids per conversation, in order (each as `render_conversation` would give); a prompt shared by
    several conversations is rendered once."""
    out: list[tuple[int, ...]] = [()] * len(conversations)
    for indices in group_by_prompt(conversations):
        prompt = conversations[indices[0]][:-1]
        responses = [conversations[i][-1] for i in indices]
        for i, item in zip(indices, render_responses(tokenizer, prompt, responses, max_length, tools), strict=True):
            out[i] = item.input_ids
    return out


def pool_rewards(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """One scalar reward per row of a right-padded batch: THE pooling rule of trainer and server.

    Decoder classifiers (a `score` head: Llama, Qwen2, Mistral, GPT-2...) are read at the last
    real token, found from the attention mask, never from `pad_token_id`, so pad == eos is safe
    (TRL #937, transformers #35352). Their backbone runs WITHOUT the mask: with right padding a
    real token never attends to the pads after it under the causal mask, so the result is the
    same, and SDPA can take its flash/causal path instead of materialising a padded mask
    (measured: docs/BENCHMARKS.md). Encoder classifiers (BERT family) attend both ways, so they get
    the mask and pool at [CLS], position 0, which right padding never moves. Returns (batch,): the
    head's first output.
    """
    return pool_logits(model, input_ids, attention_mask)[:, 0]


def pool_logits(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """`pool_rewards` with every output of the head: (batch, num_labels). The trainer's length-debiased objective
    trains a second (length) output beside the reward; a served model has one."""
    if hasattr(model, "get_base_model"):  # a peft wrapper: work on the model it wraps
        model = model.get_base_model()
    head = getattr(model, "score", None)
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # no KV cache: one pass only
    last = attention_mask.sum(dim=1) - 1
    index = last.view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
    return head(hidden.gather(1, index).squeeze(1))
