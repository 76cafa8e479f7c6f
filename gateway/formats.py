"""The shared data format: messages, preference pairs, JSONL reading/validation/splitting, rendering.

Owns DESIGN contract 1 (the preference JSONL), its pointwise sibling (rated responses: one response with a
scalar reward, validated the same way), and the one conversation -> tokens render function and reward pooling
rule of contract 2, used by the trainer, the reward server and the importer of published reward models.
Must not import starlette, httpx, litellm, torch or transformers: tokenizers and models are
passed in as arguments and used through their methods only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------- parsing one record


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


def _messages(value: object, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise PairError(f"{where}: missing or empty message list")
    return [parse_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def _response(value: object, where: str) -> Message:
    """A response given as a string, one assistant message, or a one-element list of it."""
    if isinstance(value, str):
        value = {"role": "assistant", "content": value}
    elif isinstance(value, list) and len(value) == 1:
        value = value[0]
    message = parse_message(value, where)
    if message.role != "assistant":
        raise PairError(f"{where}: must be an assistant message, got role {message.role!r}")
    return message


def _seed_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    messages = _messages(obj.get("messages"), "messages")
    if messages[-1].role != "assistant":
        raise PairError(f"messages[{len(messages) - 1}]: last message must be the assistant's preferred answer")
    if "rejected_message" not in obj:
        raise PairError("rejected_message: missing")
    return messages[:-1], messages[-1], _response(obj["rejected_message"], "rejected_message")


def _prompt_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    prompt_value = obj["prompt"]
    if isinstance(prompt_value, str):
        prompt_value = [{"role": "user", "content": prompt_value}]
    prompt = _messages(prompt_value, "prompt")
    return prompt, _response(obj.get("chosen"), "chosen"), _response(obj.get("rejected"), "rejected")


def _two_conversations_shape(obj: dict[str, Any]) -> tuple[list[Message], Message, Message]:
    chosen = _messages(obj["chosen"], "chosen")
    rejected = _messages(obj.get("rejected"), "rejected")
    for where, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1].role != "assistant":
            raise PairError(f"{where}[{len(conv) - 1}]: last message must be an assistant answer")
    if chosen[:-1] != rejected[:-1]:
        raise PairError("chosen/rejected: the two conversations must share the same prompt turns")
    return chosen[:-1], chosen[-1], rejected[-1]


def split_for_prompt(prompt: Sequence[Message]) -> Split:
    """Deterministic 90/10 TRAIN/TEST by a hash of the prompt, so all pairs of one prompt share a side."""
    canonical = json.dumps([[m.role, m.content] for m in prompt], ensure_ascii=False, separators=(",", ":"))
    bucket = int(hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8], 16) % 1000
    return "TEST" if bucket < TEST_FRACTION_PER_MILLE else "TRAIN"


def _common_fields(
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


def _number(obj: dict[str, Any], name: str, default: float | None = None) -> float:
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
    split, tools, tool_choice, metadata = _common_fields(obj, prompt)
    margin = _number(obj, "margin", 0.0)
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


def _decode(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PairError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise PairError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise PairError(f"invalid JSON: {exc}") from None


def parse_line(text: str) -> PreferencePair:
    obj = _decode(text)
    try:
        return parse_pair(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None


# ---------------------------------------------------------------- rated responses (scalar rewards)


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


PAIR_KEYS = frozenset({"rejected_message", "chosen", "rejected"})


def is_rated(obj: object) -> bool:
    """Whether a decoded record is a rated response (`reward`, or TRL's unpaired `completion` + `label`) rather
    than a preference pair: what decides a file's kind (its first record) and a dataset entry's."""
    return isinstance(obj, dict) and not PAIR_KEYS & set(obj) and ("reward" in obj or "label" in obj)


def parse_rated(obj: object) -> RatedResponse:
    """Validate one rated response: `{"messages": [..., assistant], "reward": number, "split"?, "weight"?}` (plus
    `tools`, `tool_choice`, `metadata`), or TRL's unpaired shape `{"prompt", "completion", "label": bool}`
    (label true = reward 1, false = 0). Raises PairError naming the field."""
    if not isinstance(obj, dict):
        raise PairError(f"record must be a JSON object, got {type(obj).__name__}")
    if PAIR_KEYS & set(obj):
        raise PairError("a preference pair among rated responses: a file holds one kind of record")
    if "messages" in obj:
        messages = _messages(obj.get("messages"), "messages")
        if messages[-1].role != "assistant":
            raise PairError(f"messages[{len(messages) - 1}]: last message must be the assistant's rated answer")
        prompt, response = messages[:-1], messages[-1]
        reward = _number(obj, "reward")
    elif "prompt" in obj or "completion" in obj:
        prompt_value = obj.get("prompt")
        prompt = _messages([{"role": "user", "content": prompt_value}] if isinstance(prompt_value, str)
                           else prompt_value, "prompt")  # fmt: skip
        response = _response(obj.get("completion"), "completion")
        label = obj.get("label")
        if not isinstance(label, bool):
            raise PairError(f"label: expected true or false, got {label!r}")
        reward = 1.0 if label else 0.0
    else:
        raise PairError("missing messages: expected `messages` ending with the rated answer, and `reward`")
    weight = _number(obj, "weight", 1.0)
    if weight <= 0:
        raise PairError("weight: must be positive")
    split, tools, tool_choice, metadata = _common_fields(obj, prompt)
    return RatedResponse(tuple(prompt), response, reward, split, weight, tools, tool_choice, metadata)


def parse_record(obj: object) -> PreferencePair | RatedResponse:
    """A record of either kind, as `is_rated` tells them apart (a dataset's upload, where each entry says what it
    is); PairError naming the field."""
    return parse_rated(obj) if is_rated(obj) else parse_pair(obj)


def parse_record_line(text: str) -> PreferencePair | RatedResponse:
    obj = _decode(text)
    try:
        return parse_record(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None


def parse_rated_line(text: str) -> RatedResponse:
    obj = _decode(text)
    try:
        return parse_rated(obj)
    except RecursionError:
        raise PairError("record nested too deeply") from None


# ---------------------------------------------------------------- reading files


def _raw_lines(source: str | os.PathLike[str] | Iterable[bytes | str]) -> Iterator[bytes | str]:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            yield from fh
    else:
        yield from source


def without_bom(text: str, number: int) -> str:
    """Line `number` of a JSONL file without the UTF-8 byte-order mark an editor (Notepad) may put at its start."""
    return text.removeprefix("\ufeff") if number == 1 else text


def _iter_records(source: str | os.PathLike[str] | Iterable[bytes | str], parse: Any) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(_raw_lines(source), start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, LineError(number, f"not UTF-8 text (byte {exc.start})")
                continue
        else:
            text = raw
        text = without_bom(text, number)
        if not text.strip():
            continue
        try:
            yield number, parse(text)
        except PairError as exc:
            yield number, LineError(number, str(exc))


def iter_pairs(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, PreferencePair | LineError]]:
    """Stream (line number, pair or error) over a JSONL file (plain or .gz) or an iterable of lines.

    Blank lines are skipped; every other line yields exactly one result, so a caller sees every
    bad line, never only the first.
    """
    yield from _iter_records(source, parse_line)


def iter_rated(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, RatedResponse | LineError]]:
    """`iter_pairs` for rated responses: (line number, rated response or error) for every non-blank line."""
    yield from _iter_records(source, parse_rated_line)


def iter_records(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, PreferencePair | RatedResponse | LineError]]:
    """`iter_pairs` for lines of either kind, each line parsed as what it is (`parse_record`)."""
    yield from _iter_records(source, parse_record_line)


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[PreferencePair, ...]
    skipped: tuple[LineError, ...] = ()  # bad lines left out (only with skip_invalid=True)

    def split(self, name: Split) -> list[PreferencePair]:
        return [p for p in self.pairs if p.split == name]

    def summary(self) -> str:
        train, test = len(self.split("TRAIN")), len(self.split("TEST"))
        text = f"{len(self.pairs)} pairs (TRAIN {train}, TEST {test})"
        return f"{text}, {len(self.skipped)} invalid line(s) skipped" if self.skipped else text


def load_pairs(source: str | os.PathLike[str] | Iterable[bytes | str], *, skip_invalid: bool = False) -> PairSet:
    """Load a preference JSONL. Bad lines reject the whole file (DatasetError with every bad line)
    unless `skip_invalid`, which loads the good ones and reports the skipped ones."""
    pairs: list[PreferencePair] = []
    errors: list[LineError] = []
    for _, item in iter_pairs(source):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            pairs.append(item)
    if errors and not skip_invalid:
        raise DatasetError(str(source) if isinstance(source, str | os.PathLike) else "<lines>", errors)
    return PairSet(tuple(pairs), tuple(errors))


@dataclass(frozen=True)
class RatedSet:
    """A file of rated responses; `binary` when every reward is 0 or 1 (thumbs up/down, PASS/FAIL)."""

    rows: tuple[RatedResponse, ...]
    skipped: tuple[LineError, ...] = ()

    def split(self, name: Split) -> list[RatedResponse]:
        return [r for r in self.rows if r.split == name]

    @property
    def binary(self) -> bool:
        return bool(self.rows) and all(r.reward in (0.0, 1.0) for r in self.rows)

    def summary(self) -> str:
        train, test = len(self.split("TRAIN")), len(self.split("TEST"))
        labels = ", 0/1 labels" if self.binary else ""
        text = f"{len(self.rows)} rated responses (TRAIN {train}, TEST {test}{labels})"
        return f"{text}, {len(self.skipped)} invalid line(s) skipped" if self.skipped else text


def load_rated(source: str | os.PathLike[str] | Iterable[bytes | str], *, skip_invalid: bool = False) -> RatedSet:
    """`load_pairs` for rated responses: every bad line reported, the file refused unless `skip_invalid`."""
    rows: list[RatedResponse] = []
    errors: list[LineError] = []
    for _, item in iter_rated(source):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            rows.append(item)
    if errors and not skip_invalid:
        raise DatasetError(str(source) if isinstance(source, str | os.PathLike) else "<lines>", errors)
    return RatedSet(tuple(rows), tuple(errors))


DataKind = Literal["pairs", "rated"]


def data_kind(source: str | os.PathLike[str] | Iterable[bytes | str]) -> DataKind:
    """What a file holds, decided by its first record that decodes to a JSON object (`is_rated`); pairs when
    none does (the pair reader then reports every line)."""
    for raw in _raw_lines(source):
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return "rated" if is_rated(obj) else "pairs"
    return "pairs"


def load_data(
    source: str | os.PathLike[str] | Sequence[bytes | str], *, skip_invalid: bool = False
) -> PairSet | RatedSet:
    """Preference pairs or rated responses, whichever the file holds (`data_kind`); a line of the other kind is
    a bad line, reported like any other."""
    if data_kind(source) == "rated":
        return load_rated(source, skip_invalid=skip_invalid)
    return load_pairs(source, skip_invalid=skip_invalid)


# ---------------------------------------------------------------- the card's reward statistics (contract 2)


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


# ---------------------------------------------------------------- rendering and pooling (contract 2)


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
    the mask and pool at [CLS], position 0, which right padding never moves. Returns (batch,).
    """
    if hasattr(model, "get_base_model"):  # a peft wrapper: work on the model it wraps
        model = model.get_base_model()
    head = getattr(model, "score", None)
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # no KV cache: one pass only
    last = attention_mask.sum(dim=1) - 1
    index = last.view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
    return head(hidden.gather(1, index).squeeze(1))[:, 0]
