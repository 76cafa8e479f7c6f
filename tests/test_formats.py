"""Tests for gateway/formats (messages, pairs, files), contract 1 (preference JSONL); rendering and pooling:
tests/test_render.py.

Validation is asserted through `iter_pairs`/`load_pairs` with exact line numbers; property tests
(hypothesis) check that no input line can make the reader raise.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.formats import (
    DatasetError,
    LineError,
    Message,
    PreferencePair,
    iter_pairs,
    load_pairs,
    parse_pair,
    split_for_prompt,
)

# ---------------------------------------------------------------- helpers

USER = {"role": "user", "content": "How do I reset my password?"}
CHOSEN = {"role": "assistant", "content": "Open settings, choose security, then reset."}
REJECTED = {"role": "assistant", "content": "I cannot help with that."}


def seed(**overrides: Any) -> dict[str, Any]:
    """A valid seed-format record; keyword arguments replace or (with None) drop keys."""
    record: dict[str, Any] = {
        "messages": [{"role": "system", "content": "Be brief."}, USER, CHOSEN],
        "rejected_message": REJECTED,
        "split": "TRAIN",
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def line(record: Any) -> str:
    return json.dumps(record)


GOOD = line(seed())


def parsed(record: Any) -> PreferencePair:
    ((number, item),) = list(iter_pairs([line(record)]))
    assert number == 1
    assert isinstance(item, PreferencePair), item
    return item


def dumped(pair: PreferencePair) -> str:
    return json.dumps(pair.to_json(), sort_keys=True)


# ---------------------------------------------------------------- contract 1: every validation rule

# (case id, the bad line, text the reason must contain: the field it names)
BAD_LINES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("invalid json", '{"messages": [', ("invalid JSON",)),
    ("invalid json trailing comma", GOOD[:-1] + ",}", ("invalid JSON",)),
    ("missing messages", line({"rejected_message": REJECTED, "split": "TRAIN"}), ("messages", "missing")),
    ("empty messages", line(seed(messages=[])), ("messages", "missing or empty")),
    ("messages not a list", line(seed(messages="hi")), ("messages", "missing or empty")),
    ("no recognisable shape", line({"foo": 1}), ("missing messages",)),
    ("last message from the user", line(seed(messages=[USER])), ("messages[0]", "last message")),
    (
        "last message from a tool",
        line(seed(messages=[USER, {"role": "tool", "content": "42", "tool_call_id": "c1"}])),
        ("messages[1]", "last message"),
    ),
    ("rejected missing", line(seed(rejected_message=None)), ("rejected_message", "missing")),
    (
        "rejected from the user",
        line(seed(rejected_message={"role": "user", "content": "no"})),
        ("rejected_message", "assistant"),
    ),
    ("rejected not an object", line(seed(rejected_message=42)), ("rejected_message",)),
    (
        "unknown role",
        line(seed(messages=[{"role": "robot", "content": "beep"}, CHOSEN])),
        ("messages[0].role", "unknown role", "robot"),
    ),
    ("missing role", line(seed(messages=[{"content": "hi"}, CHOSEN])), ("messages[0].role",)),
    (
        "empty chosen content",
        line(seed(messages=[USER, {"role": "assistant", "content": ""}])),
        ("messages[1].content", "empty content"),
    ),
    (
        "whitespace chosen content",
        line(seed(messages=[USER, {"role": "assistant", "content": "  \n"}])),
        ("messages[1].content", "empty content"),
    ),
    (
        "null prompt content",
        line(seed(messages=[{"role": "user", "content": None}, CHOSEN])),
        ("messages[0].content", "empty content"),
    ),
    (
        "empty rejected content",
        line(seed(rejected_message={"role": "assistant", "content": ""})),
        ("rejected_message.content", "empty content"),
    ),
    ("chosen == rejected", line(seed(rejected_message=CHOSEN)), ("chosen and rejected", "identical")),
    ("bad split value", line(seed(split="VALIDATION")), ("split", "VALIDATION")),
    ("lower-case split", line(seed(split="train")), ("split", "train")),
    ("numeric split", line(seed(split=1)), ("split",)),
    ("non-object line: list", "[1, 2]", ("JSON object", "list")),
    ("non-object line: number", "42", ("JSON object", "int")),
    ("non-object line: string", '"hello"', ("JSON object", "str")),
    ("non-object line: null", "null", ("JSON object", "NoneType")),
    ("invalid UTF-8", b'{"messages": "\xff\xfe"}\n', ("UTF-8",)),
    (
        "tool calls on a user message",
        line(seed(messages=[{"role": "user", "content": "x", "tool_calls": [{"id": "c"}]}, CHOSEN])),
        ("messages[0].tool_calls",),
    ),
    (
        "tool_calls not a list",
        line(seed(messages=[USER, {"role": "assistant", "content": "x", "tool_calls": "call"}])),
        ("messages[1].tool_calls",),
    ),
    (
        "non-text content part",
        line(seed(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, CHOSEN])),
        ("messages[0].content[0]", "text"),
    ),
    ("content a number", line(seed(messages=[{"role": "user", "content": 3}, CHOSEN])), ("messages[0].content",)),
    (
        "name not a string",
        line(seed(messages=[{"role": "user", "content": "x", "name": 1}, CHOSEN])),
        ("messages[0].name",),
    ),
    ("tools not a list", line(seed(tools={"type": "function"})), ("tools",)),
    ("tools of non-objects", line(seed(tools=["f"])), ("tools",)),
    ("tool_choice a number", line(seed(tool_choice=3)), ("tool_choice",)),
    ("metadata not an object", line(seed(metadata="tag")), ("metadata",)),
    ("margin a string", line(seed(margin="1.0")), ("margin",)),
    ("margin a bool", line(seed(margin=True)), ("margin",)),
    ("margin NaN", GOOD[:-1] + ', "margin": NaN}', ("margin",)),
]


@pytest.mark.parametrize(("bad", "needles"), [(b, n) for _, b, n in BAD_LINES], ids=[c for c, _, _ in BAD_LINES])
def test_each_rule_reports_line_number_and_field(bad: str | bytes, needles: tuple[str, ...]) -> None:
    # good line, blank line (counted, ignored), then the bad one: it must be reported as line 3.
    lines: list[str | bytes] = [GOOD + "\n", "\n", bad]
    if isinstance(bad, bytes):
        lines = [x.encode() if isinstance(x, str) else x for x in lines]
    results = list(iter_pairs(lines))
    assert [n for n, _ in results] == [1, 3]
    assert isinstance(results[0][1], PreferencePair)
    error = results[1][1]
    assert isinstance(error, LineError)
    assert error.line == 3
    for needle in needles:
        assert needle in error.reason, (needle, error.reason)
    assert str(error).startswith("line 3: ")

    with pytest.raises(DatasetError) as excinfo:
        load_pairs(lines)
    assert excinfo.value.errors == (error,)
    assert excinfo.value.source == "<lines>"
    assert "line 3" in str(excinfo.value)


BAD_FILE = (
    b"\n".join(
        [
            GOOD.encode(),  # 1
            b'{"messages": [',  # 2 invalid JSON
            b"",  # 3 blank
            line(seed(split="DEV")).encode(),  # 4 bad split
            b"   ",  # 5 blank (whitespace)
            line(seed(rejected_message=CHOSEN, split="TEST")).encode(),  # 6 chosen == rejected
            b"\xc3\x28",  # 7 invalid UTF-8
            line(seed(split="TEST")).encode(),  # 8
            b"[]",  # 9 non-object
        ]
    )
    + b"\n"
)


def test_every_bad_line_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(BAD_FILE)
    with pytest.raises(DatasetError) as excinfo:
        load_pairs(path)
    errors = excinfo.value.errors
    assert [e.line for e in errors] == [2, 4, 6, 7, 9]
    assert "invalid JSON" in errors[0].reason
    assert "split" in errors[1].reason
    assert "identical" in errors[2].reason
    assert "UTF-8" in errors[3].reason
    assert "JSON object" in errors[4].reason
    assert excinfo.value.source == str(path)
    assert "5 invalid line(s)" in str(excinfo.value)


def test_skip_invalid_loads_the_good_lines_and_reports_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(BAD_FILE)
    pairs = load_pairs(str(path), skip_invalid=True)
    assert len(pairs.pairs) == 2
    assert [e.line for e in pairs.skipped] == [2, 4, 6, 7, 9]
    assert [p.split for p in pairs.pairs] == ["TRAIN", "TEST"]
    assert len(pairs.split("TRAIN")) == 1 and len(pairs.split("TEST")) == 1
    assert pairs.summary() == "2 pairs (TRAIN 1, TEST 1), 5 invalid line(s) skipped"


def test_blank_lines_are_ignored_and_still_counted() -> None:
    results = list(iter_pairs(["\n", GOOD, "  \t \n", "", "{bad"]))
    assert [n for n, _ in results] == [2, 5]
    assert isinstance(results[1][1], LineError) and results[1][1].line == 5
    clean = load_pairs([GOOD, "", "\n", GOOD])
    assert len(clean.pairs) == 2 and clean.skipped == ()
    assert clean.summary() == "2 pairs (TRAIN 2, TEST 0)"


def test_valid_seed_record_fields() -> None:
    pair = parsed(seed())
    assert pair.prompt == (Message("system", "Be brief."), Message("user", USER["content"]))
    assert pair.chosen == Message("assistant", CHOSEN["content"])
    assert pair.rejected == Message("assistant", REJECTED["content"])
    assert pair.split == "TRAIN"
    assert pair.chosen_conversation == (*pair.prompt, pair.chosen)
    assert pair.rejected_conversation == (*pair.prompt, pair.rejected)
    assert pair.tools is None and pair.tool_choice is None and pair.metadata == {} and pair.margin == 0.0


# ---------------------------------------------------------------- accepted extras

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}


def test_accepted_extras_tools_tool_choice_metadata_margin() -> None:
    pair = parsed(seed(tools=TOOLS, tool_choice="auto", metadata={"source": "logs", "n": 3}, margin=1.5))
    assert pair.tools == tuple(TOOLS)
    assert pair.tool_choice == "auto"
    assert pair.metadata == {"source": "logs", "n": 3}
    assert pair.margin == 1.5
    assert parsed(seed(tool_choice={"type": "function", "function": {"name": "lookup"}})).tool_choice == {
        "type": "function",
        "function": {"name": "lookup"},
    }
    assert parsed(seed(margin=2)).margin == 2.0
    assert parsed(seed(metadata=None)).metadata == {}


def test_assistant_tool_calls_with_empty_content_are_valid() -> None:
    tool_turn = {"role": "tool", "content": "result: 42", "tool_call_id": "c1"}
    record = seed(
        messages=[USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}, tool_turn, CHOSEN],
        rejected_message={"role": "assistant", "content": "", "tool_calls": [CALL]},
        tools=TOOLS,
    )
    pair = parsed(record)
    assert pair.prompt[1] == Message("assistant", "", (CALL,))
    assert pair.prompt[2] == Message("tool", "result: 42", tool_call_id="c1")
    assert pair.rejected == Message("assistant", "", (CALL,))
    # A tool-call answer differs from a text answer, but two identical tool-call answers do not.
    same = seed(
        messages=[USER, {"role": "assistant", "content": "", "tool_calls": [CALL]}],
        rejected_message={"role": "assistant", "content": None, "tool_calls": [CALL]},
    )
    ((_, item),) = list(iter_pairs([line(same)]))
    assert isinstance(item, LineError) and "identical" in item.reason


def test_openai_content_part_lists_of_text_parts() -> None:
    parts = [{"type": "text", "text": "How do I "}, {"type": "text", "text": "reset my password?"}]
    pair = parsed(seed(messages=[{"role": "user", "content": parts}, CHOSEN]))
    assert pair.prompt == (Message("user", "How do I reset my password?"),)
    no = {"role": "assistant", "content": [{"type": "text", "text": "No."}]}
    rejected = parsed(seed(rejected_message=no))
    assert rejected.rejected.content == "No."


def test_all_roles_are_accepted() -> None:
    messages = [
        {"role": "developer", "content": "Follow policy."},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "alice"},
        CHOSEN,
    ]
    pair = parsed(seed(messages=messages))
    assert [m.role for m in pair.prompt] == ["developer", "system", "user"]
    assert pair.prompt[2].name == "alice"


# ---------------------------------------------------------------- alternative shapes


def test_prompt_chosen_rejected_strings() -> None:
    pair = parsed({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "split": "TEST"})
    assert pair.prompt == (Message("user", "Hi?"),)
    assert pair.chosen == Message("assistant", "Hello!")
    assert pair.rejected == Message("assistant", "Go away.")
    assert pair.split == "TEST"


def test_prompt_messages_with_message_answers() -> None:
    pair = parsed(
        {
            "prompt": [{"role": "system", "content": "Be brief."}, USER],
            "chosen": CHOSEN,
            "rejected": [REJECTED],
            "split": "TRAIN",
        }
    )
    assert pair == parsed(seed())


def test_two_conversations_shape_with_shared_prompt() -> None:
    prompt = [{"role": "system", "content": "Be brief."}, USER]
    pair = parsed({"chosen": [*prompt, CHOSEN], "rejected": [*prompt, REJECTED], "split": "TRAIN"})
    assert pair == parsed(seed())


def test_all_shapes_of_the_same_pair_agree_including_the_derived_split() -> None:
    prompt = [{"role": "system", "content": "Be brief."}, USER]
    shapes = [
        seed(split=None),
        {"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED},
        {"chosen": [*prompt, CHOSEN], "rejected": [*prompt, REJECTED]},
    ]
    pairs = [parsed(s) for s in shapes]
    assert pairs[0] == pairs[1] == pairs[2]


@pytest.mark.parametrize(
    ("record", "needles"),
    [
        (
            {"chosen": [USER, CHOSEN], "rejected": [{"role": "user", "content": "other"}, REJECTED]},
            ("chosen/rejected", "same prompt"),
        ),
        ({"chosen": [USER, CHOSEN], "rejected": [USER]}, ("rejected[0]", "assistant")),
        ({"chosen": [USER], "rejected": [USER, REJECTED]}, ("chosen[0]", "assistant")),
        ({"chosen": [USER, CHOSEN]}, ("rejected", "missing or empty")),
        ({"prompt": "Hi?", "chosen": {"role": "user", "content": "x"}, "rejected": "y"}, ("chosen", "assistant")),
        ({"prompt": "Hi?", "chosen": "x"}, ("rejected",)),
        ({"prompt": "", "chosen": "x", "rejected": "y"}, ("prompt[0].content", "empty")),
        ({"prompt": [], "chosen": "x", "rejected": "y"}, ("prompt", "missing or empty")),
        ({"prompt": "Hi?", "chosen": "same", "rejected": "same"}, ("identical",)),
    ],
    ids=[
        "prompt mismatch",
        "rejected ends in user",
        "chosen ends in user",
        "rejected missing",
        "chosen from user",
        "prompt shape rejected missing",
        "empty prompt",
        "empty prompt list",
        "identical strings",
    ],
)
def test_alternative_shape_errors(record: dict[str, Any], needles: tuple[str, ...]) -> None:
    ((number, item),) = list(iter_pairs(["", line(record)]))
    assert number == 2
    assert isinstance(item, LineError) and item.line == 2
    for needle in needles:
        assert needle in item.reason, (needle, item.reason)


# ---------------------------------------------------------------- missing split


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {i}: how do I fix error E{i * 7919 % 10007}?"}]


def test_missing_split_is_deterministic_across_calls() -> None:
    record = seed(split=None)
    first = parsed(record).split
    assert all(parsed(record).split == first for _ in range(3))
    prompt = parsed(record).prompt
    assert split_for_prompt(prompt) == first
    rebuilt = tuple(Message(m.role, m.content) for m in prompt)
    assert split_for_prompt(list(prompt)) == split_for_prompt(rebuilt) == first
    # An explicit split always wins over the hash.
    other = "TEST" if first == "TRAIN" else "TRAIN"
    assert parsed(seed(split=other)).split == other


def test_all_pairs_of_one_prompt_land_on_the_same_side() -> None:
    for i in range(100):
        prompt = _prompt(i)
        records = [
            {
                "messages": [*prompt, {"role": "assistant", "content": f"answer {j}"}],
                "rejected_message": {"role": "assistant", "content": f"worse {j}"},
            }
            for j in range(3)
        ]
        records.append({"prompt": prompt, "chosen": "alt a", "rejected": "alt b", "margin": 0.5})
        sides = {p.split for p in load_pairs([line(r) for r in records]).pairs}
        assert len(sides) == 1, i


def test_missing_split_sends_about_ten_percent_of_prompts_to_test() -> None:
    lines = [line({"prompt": _prompt(i), "chosen": "yes", "rejected": "no"}) for i in range(2000)]
    pairs = load_pairs(lines).pairs
    share = sum(p.split == "TEST" for p in pairs) / len(pairs)
    assert 0.07 <= share <= 0.13, share


# ---------------------------------------------------------------- files and round trips


def test_gzip_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(GOOD + "\n\n" + line(seed(split="TEST")) + "\n")
    pairs = load_pairs(path)
    assert [p.split for p in pairs.pairs] == ["TRAIN", "TEST"]
    with gzip.open(path, "wb") as fh:
        fh.write(GOOD.encode() + b"\n{oops\n")
    with pytest.raises(DatasetError) as excinfo:
        load_pairs(path)
    assert [e.line for e in excinfo.value.errors] == [2]


def test_plain_file_path_and_str_path_agree(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(GOOD + "\n" + line(seed(split=None)) + "\n", encoding="utf-8")
    assert load_pairs(path) == load_pairs(str(path))


def test_to_json_round_trips_through_parse_pair() -> None:
    tool_turn = {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "lookup"}
    record = seed(
        messages=[
            {"role": "user", "content": "q", "name": "bob"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            tool_turn,
            CHOSEN,
        ],
        rejected_message={"role": "assistant", "content": "", "tool_calls": [CALL]},
        tools=TOOLS,
        tool_choice="auto",
        metadata={"k": "v"},
        margin=0.25,
        split=None,
    )
    pair = parsed(record)
    again = parse_pair(json.loads(json.dumps(pair.to_json())))
    assert again == pair
    plain = parsed(seed())
    assert parse_pair(plain.to_json()) == plain
    assert plain.to_json() == seed()


# ---------------------------------------------------------------- property tests: the reader never raises

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=20)  # lone surrogates included
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
ROLE = st.sampled_from(["system", "developer", "user", "assistant", "assistant", "tool"]) | JSON
CONTENT = (
    st.text(max_size=12)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": ANY_TEXT}), max_size=2)
    | JSON
)
MESSAGE = st.fixed_dictionaries(
    {"role": ROLE},
    optional={
        "content": CONTENT,
        "tool_calls": st.lists(st.dictionaries(ANY_TEXT, JSON, max_size=2), max_size=2) | JSON,
        "name": ANY_TEXT | JSON,
        "tool_call_id": ANY_TEXT | JSON,
    },
)
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=4) | JSON
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "messages": MESSAGES,
        "rejected_message": MESSAGE | ANY_TEXT | JSON,
        "split": st.sampled_from(["TRAIN", "TEST"]) | JSON,
        "prompt": ANY_TEXT | MESSAGES,
        "chosen": ANY_TEXT | MESSAGE | MESSAGES,
        "rejected": ANY_TEXT | MESSAGE | MESSAGES,
        "tools": st.lists(st.dictionaries(ANY_TEXT, JSON, max_size=2), max_size=2) | JSON,
        "tool_choice": st.sampled_from(["auto", "none"]) | JSON,
        "metadata": st.dictionaries(ANY_TEXT, JSON, max_size=3) | JSON,
        "margin": st.floats(allow_nan=True) | st.integers() | JSON,
    },
)

# Nearly valid records: a valid pair of each shape with a few fields (top-level or inside a
# message) replaced by arbitrary JSON or deleted, so the checks after the first ones are reached.
VALID_SHAPES = [
    seed(split=None),
    {"prompt": "Hi?", "chosen": CHOSEN, "rejected": [REJECTED], "tools": TOOLS, "metadata": {"k": 1}},
    {"chosen": [USER, CHOSEN], "rejected": [USER, REJECTED], "tool_choice": "auto", "margin": 1.0},
]
PATHS = (
    [
        (key,)
        for key in (
            "messages",
            "rejected_message",
            "split",
            "prompt",
            "chosen",
            "rejected",
            "tools",
            "tool_choice",
            "metadata",
            "margin",
        )
    ]
    + [
        (key, index, field)
        for key, index in (("messages", -1), ("messages", 0), ("chosen", -1), ("rejected", 0), ("rejected", -1))
        for field in ("role", "content", "tool_calls", "name", "tool_call_id")
    ]
    + [("rejected_message", "content"), ("rejected_message", "role"), ("chosen", "content")]
)
DROP = object()


def mutate(base: dict[str, Any], edits: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    record = json.loads(json.dumps(base))
    for path, value in edits:
        target: Any = record
        for step in path[:-1]:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                target = None
                break
        if isinstance(target, dict):
            if value is DROP:
                target.pop(path[-1], None)
            else:
                target[path[-1]] = value
    return record


NEARLY_VALID = st.builds(
    mutate,
    st.sampled_from(VALID_SHAPES),
    st.lists(st.tuples(st.sampled_from(PATHS), JSON | ANY_TEXT | st.just(DROP)), min_size=1, max_size=3),
)


def check_one_line(raw: str | bytes) -> None:
    """The property: never raises; one result for a non-blank line, none for a blank one."""
    results = list(iter_pairs([raw]))
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        text = "not blank"
    if not text.strip():
        assert results == []
        return
    assert len(results) == 1
    number, item = results[0]
    assert number == 1
    if isinstance(item, LineError):
        assert item.line == 1 and item.reason.strip()
    else:
        assert isinstance(item, PreferencePair)
        assert item.chosen.role == item.rejected.role == "assistant"
        assert item.split in ("TRAIN", "TEST")
        # Every pair that loads writes back out and reloads to the same record.
        assert dumped(parse_pair(json.loads(json.dumps(item.to_json())))) == dumped(item)


@PROPERTY
@given(st.text())
def test_property_arbitrary_text_lines(raw: str) -> None:
    check_one_line(raw)


@PROPERTY
@given(st.binary())
def test_property_arbitrary_byte_lines(raw: bytes) -> None:
    check_one_line(raw)


@PROPERTY
@given(JSON)
def test_property_arbitrary_json_values(value: Any) -> None:
    check_one_line(json.dumps(value))


@PROPERTY
@given(RECORD)
def test_property_records_with_the_real_keys(record: dict[str, Any]) -> None:
    check_one_line(json.dumps(record))


@PROPERTY
@given(NEARLY_VALID)
def test_property_nearly_valid_records(record: dict[str, Any]) -> None:
    check_one_line(json.dumps(record))


# Concrete inputs that break the "never raises" property (found while writing the tests above).


def test_unhashable_split_is_a_line_error_not_a_crash() -> None:
    check_one_line(line(seed(split=["TRAIN"])))
    check_one_line(line(seed(split={"name": "TRAIN"})))


def test_huge_integer_margin_is_a_line_error_not_a_crash() -> None:
    check_one_line(GOOD[:-1] + ', "margin": 1' + "0" * 400 + "}")


def test_integer_over_python_digit_limit_is_a_line_error_not_a_crash() -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) above 4300 digits.
    check_one_line("1" * 5000)
    check_one_line(GOOD[:-1] + ', "metadata": {"n": ' + "9" * 5000 + "}}")


def test_lone_surrogate_in_prompt_without_split_is_not_a_crash() -> None:
    # Valid JSON ("\\ud800" escape); split_for_prompt then encodes the prompt as UTF-8.
    check_one_line('{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}')


def test_a_byte_order_mark_is_accepted_at_the_start_of_a_file_only() -> None:
    line = json.dumps(
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected_message": {"role": "assistant", "content": "b"},
        }
    )
    assert len(load_pairs([("\ufeff" + line).encode()]).pairs) == 1
    assert len(load_pairs(["\ufeff" + line, line]).pairs) == 2
    with pytest.raises(DatasetError) as caught:
        load_pairs([line, "\ufeff" + line])
    assert [e.line for e in caught.value.errors] == [2]
