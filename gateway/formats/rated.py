"""Rated responses, the pointwise sibling of the pairs: one conversation ending in an assistant answer with a scalar
`reward` (optionally `split`, `weight`; TRL's prompt/completion/label is read as reward 1/0), validated like the
pairs; and telling the two kinds apart record by record. Imports only the stdlib and its sibling modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .messages import (
    PAIR_KEYS,
    Message,
    PairError,
    Split,
    final_response,
    is_rated,
    json_record,
    message_list,
    number_field,
    record_fields,
)
from .pairs import PreferencePair, parse_pair


@dataclass(frozen=True)
class RatedResponse:
    """One response with a scalar reward (a rating, thumbs up/down as 1/0, a judge's score): the pointwise
    sibling of PreferencePair. `weight` multiplies the record's loss."""

    prompt: tuple[Message, ...]
    response: Message
    reward: float
    split: Split
    weight: float = 1.0
    tools: tuple[Mapping[str, Any], ...] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def conversation(self) -> tuple[Message, ...]:
        return (*self.prompt, self.response)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.conversation],
            "reward": self.reward,
            "split": self.split,
        }
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.tools is not None:
            out["tools"] = [dict(t) for t in self.tools]
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


def parse_rated(obj: object) -> RatedResponse:
    """Validate one rated response: `{"messages": [..., assistant], "reward": number, "split"?, "weight"?}` (plus
    `tools`, `tool_choice`, `metadata`), or TRL's unpaired shape `{"prompt", "completion", "label": bool}`
    (label true = reward 1, false = 0). Raises PairError naming the field."""
    if not isinstance(obj, dict):
        raise PairError(f"record must be a JSON object, got {type(obj).__name__}")
    if PAIR_KEYS & set(obj):
        raise PairError("a preference pair among rated responses: a file holds one kind of record")
    if "messages" in obj:
        messages = message_list(obj.get("messages"), "messages")
        if messages[-1].role != "assistant":
            raise PairError(f"messages[{len(messages) - 1}]: last message must be the assistant's rated answer")
        prompt, response = messages[:-1], messages[-1]
        reward = number_field(obj, "reward")
    elif "prompt" in obj or "completion" in obj:
        prompt_value = obj.get("prompt")
        prompt = message_list([{"role": "user", "content": prompt_value}] if isinstance(prompt_value, str)
                           else prompt_value, "prompt")  # fmt: skip
        response = final_response(obj.get("completion"), "completion")
        label = obj.get("label")
        if not isinstance(label, bool):
            raise PairError(f"label: expected true or false, got {label!r}")
        reward = 1.0 if label else 0.0
    else:
        raise PairError("missing messages: expected `messages` ending with the rated answer, and `reward`")
    weight = number_field(obj, "weight", 1.0)
    if weight <= 0:
        raise PairError("weight: must be positive")
    split, tools, tool_choice, metadata = record_fields(obj, prompt)
    return RatedResponse(tuple(prompt), response, reward, split, weight, tools, tool_choice, metadata)


def parse_record(obj: object) -> PreferencePair | RatedResponse:
    """A record of either kind, as `is_rated` tells them apart (a dataset's upload, where each entry says what it
    is); PairError naming the field."""
    return parse_rated(obj) if is_rated(obj) else parse_pair(obj)


def parse_record_line(text: str) -> PreferencePair | RatedResponse:
    obj = json_record(text)
    try:
        return parse_record(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None


def parse_rated_line(text: str) -> RatedResponse:
    obj = json_record(text)
    try:
        return parse_rated(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None
