"""Messages and what every record of the shared format reads the same way: the errors (a bad record, a bad line,
a bad file), a message parsed strictly (parse_message) or loosely (loose_message), the TRAIN/TEST split by a hash
of the prompt, and the field readers the pair and rated-response parsers share. Imports only the stdlib.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

Split = Literal["TRAIN", "TEST"]


ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


SPLITS: frozenset[str] = frozenset({"TRAIN", "TEST"})


TEST_FRACTION_PER_MILLE = 100  # missing `split`: 10 % of prompts go to TEST, by prompt hash


class PairError(ValueError):
    """One preference record is invalid; the message says why."""


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class DatasetError(ValueError):
    """A dataset has invalid lines; `errors` lists every one of them, not only the first."""

    def __init__(self, source: str, errors: Sequence[LineError]) -> None:
        self.source = source
        self.errors = tuple(errors)
        super().__init__(f"{source}: {len(self.errors)} invalid line(s); first: {self.errors[0]}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    name: str | None = None
    tool_call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _valid_unicode(text: str, where: str) -> str:
    # JSON can carry unpaired surrogates ("\\ud800"); tokenizers and UTF-8 files cannot.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PairError(f"{where}.content: contains an unpaired surrogate (not valid Unicode text)") from None
    return text


def _text_content(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _valid_unicode(value, where)
    if isinstance(value, list):  # OpenAI content parts: only text parts carry meaning for a reward model
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PairError(f"{where}.content[{i}]: only text content parts are supported")
            texts.append(part["text"])
        return _valid_unicode("".join(texts), where)
    raise PairError(f"{where}.content: must be a string, a list of text parts or null")


def parse_message(value: object, where: str) -> Message:
    """One chat message in OpenAI's shape; `where` names it in error messages."""
    if not isinstance(value, dict):
        raise PairError(f"{where}: must be an object with role and content")
    role = value.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise PairError(f"{where}.role: unknown role {role!r} (expected one of {', '.join(sorted(ROLES))})")
    content = _text_content(value.get("content"), where)
    raw_calls = value.get("tool_calls") or []
    if not isinstance(raw_calls, list) or not all(isinstance(c, dict) for c in raw_calls):
        raise PairError(f"{where}.tool_calls: must be a list of objects")
    if raw_calls and role != "assistant":
        raise PairError(f"{where}.tool_calls: only assistant messages carry tool calls")
    if not content.strip() and not raw_calls:
        raise PairError(f"{where}.content: empty content and no tool calls")
    name, call_id = value.get("name"), value.get("tool_call_id")
    if name is not None and not isinstance(name, str):
        raise PairError(f"{where}.name: must be a string")
    if call_id is not None and not isinstance(call_id, str):
        raise PairError(f"{where}.tool_call_id: must be a string")
    return Message(role, content, tuple(raw_calls), name, call_id)


def loose_message(value: object, where: str = "message") -> Message:
    """`parse_message`, or for a message it rejects (e.g. empty content) the same message kept loosely, so that
    whoever scores it reports the problem for that message instead of failing the whole request."""
    try:
        return parse_message(value, where)
    except PairError:
        role = value.get("role") if isinstance(value, dict) else None
        content = value.get("content") if isinstance(value, dict) else None
        return Message(role if isinstance(role, str) else "assistant", content if isinstance(content, str) else "")


def message_list(value: object, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise PairError(f"{where}: missing or empty message list")
    return [parse_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def final_response(value: object, where: str) -> Message:
    """A response given as a string, one assistant message, or a one-element list of it."""
    if isinstance(value, str):
        value = {"role": "assistant", "content": value}
    elif isinstance(value, list) and len(value) == 1:
        value = value[0]
    message = parse_message(value, where)
    if message.role != "assistant":
        raise PairError(f"{where}: must be an assistant message, got role {message.role!r}")
    return message


def split_for_prompt(prompt: Sequence[Message]) -> Split:
    """Deterministic 90/10 TRAIN/TEST by a hash of the prompt, so all pairs of one prompt share a side."""
    canonical = json.dumps([[m.role, m.content] for m in prompt], ensure_ascii=False, separators=(",", ":"))
    bucket = int(hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8], 16) % 1000
    return "TEST" if bucket < TEST_FRACTION_PER_MILLE else "TRAIN"


def record_fields(
    obj: dict[str, Any], prompt: Sequence[Message]
) -> tuple[Split, tuple[Mapping[str, Any], ...] | None, str | Mapping[str, Any] | None, Mapping[str, Any]]:
    """split (the record's, else the prompt-hash split), tools, tool_choice and metadata: the fields a preference
    pair and a rated response share, checked the same way."""
    split = obj.get("split")
    if split is None:
        split = split_for_prompt(prompt)
    elif not isinstance(split, str) or split not in SPLITS:
        raise PairError(f"split: bad value {split!r} (expected TRAIN or TEST)")
    tools = obj.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise PairError("tools: must be a list of objects")
    tool_choice = obj.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise PairError("tool_choice: must be a string or an object")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise PairError("metadata: must be an object")
    return cast(Split, split), tuple(tools) if tools is not None else None, tool_choice, metadata


def number_field(obj: dict[str, Any], name: str, default: float | None = None) -> float:
    """A finite number field (never a bool); `default` when absent, else absent is an error."""
    if name not in obj and default is not None:
        return default
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PairError(f"{name}: {'missing' if name not in obj else 'must be a number'}")
    try:
        number = float(value)
    except OverflowError:
        raise PairError(f"{name}: number out of range") from None
    if not math.isfinite(number):
        raise PairError(f"{name}: must be a finite number")
    return number


def json_record(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PairError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise PairError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise PairError(f"invalid JSON: {exc}") from None


PAIR_KEYS = frozenset({"rejected_message", "chosen", "rejected"})


def is_rated(obj: object) -> bool:
    """Whether a decoded record is a rated response (`reward`, or TRL's unpaired `completion` + `label`) rather
    than a preference pair: what decides a file's kind (its first record) and a dataset entry's."""
    return isinstance(obj, dict) and not PAIR_KEYS & set(obj) and ("reward" in obj or "label" in obj)
