"""Preference pairs (DESIGN contract 1): the seed format and the public shapes it also accepts (prompt / chosen /
rejected; two conversations), each record normalised to one PreferencePair with its split fixed. Imports only the
stdlib and gateway.formats.messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .messages import (
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


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    split: Split
    tools: tuple[Mapping[str, Any], ...] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    margin: float = 0.0  # optional per-pair margin for the Bradley-Terry loss (top-level "margin")

    @property
    def chosen_conversation(self) -> tuple[Message, ...]:
        return (*self.prompt, self.chosen)

    @property
    def rejected_conversation(self) -> tuple[Message, ...]:
        return (*self.prompt, self.rejected)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.chosen_conversation],
            "rejected_message": self.rejected.to_dict(),
            "split": self.split,
        }
        if self.tools is not None:
            out["tools"] = [dict(t) for t in self.tools]
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.margin:
            out["margin"] = self.margin
        return out


def _seed_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    messages = message_list(obj.get("messages"), "messages")
    if messages[-1].role != "assistant":
        raise PairError(f"messages[{len(messages) - 1}]: last message must be the assistant's preferred answer")
    if "rejected_message" not in obj:
        raise PairError("rejected_message: missing")
    return messages[:-1], messages[-1], final_response(obj["rejected_message"], "rejected_message")


def _prompt_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    prompt_value = obj["prompt"]
    if isinstance(prompt_value, str):
        prompt_value = [{"role": "user", "content": prompt_value}]
    prompt = message_list(prompt_value, "prompt")
    return prompt, final_response(obj.get("chosen"), "chosen"), final_response(obj.get("rejected"), "rejected")


def _two_conversations_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    chosen = message_list(obj["chosen"], "chosen")
    rejected = message_list(obj.get("rejected"), "rejected")
    for where, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1].role != "assistant":
            raise PairError(f"{where}[{len(conv) - 1}]: last message must be an assistant answer")
    if chosen[:-1] != rejected[:-1]:
        raise PairError("chosen/rejected: the two conversations must share the same prompt turns")
    return chosen[:-1], chosen[-1], rejected[-1]


def parse_pair(obj: object) -> PreferencePair:
    """Validate one decoded JSON record in any accepted shape; raises PairError naming the field."""
    if not isinstance(obj, dict):
        raise PairError(f"record must be a JSON object, got {type(obj).__name__}")
    if is_rated(obj):
        raise PairError(
            "a rated response (`reward` or `label`) among preference pairs: a file holds one kind of record"
        )
    if "messages" in obj or "rejected_message" in obj:
        prompt, chosen, rejected = _seed_shape(obj)
    elif "prompt" in obj:
        prompt, chosen, rejected = _prompt_shape(obj)
    elif isinstance(obj.get("chosen"), list) and obj["chosen"] and isinstance(obj["chosen"][0], dict):
        prompt, chosen, rejected = _two_conversations_shape(obj)
    else:
        raise PairError("missing messages: expected `messages` + `rejected_message` (or prompt/chosen/rejected)")
    if (chosen.content, chosen.tool_calls) == (rejected.content, rejected.tool_calls):
        raise PairError("chosen and rejected answers are identical")
    split, tools, tool_choice, metadata = record_fields(obj, prompt)
    margin = number_field(obj, "margin", 0.0)
    return PreferencePair(
        prompt=tuple(prompt),
        chosen=chosen,
        rejected=rejected,
        split=split,
        tools=tools,
        tool_choice=tool_choice,
        metadata=metadata,
        margin=margin,
    )


def parse_line(text: str) -> PreferencePair:
    obj = json_record(text)
    try:
        return parse_pair(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None
