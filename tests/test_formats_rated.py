"""Rated responses (gateway/formats/rated.py): the pointwise sibling of contract 1, validated the same
way (every bad line with its number and field), and a file's kind decided by its first record."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.formats import (
    DatasetError,
    PairError,
    PairSet,
    RatedSet,
    data_kind,
    is_rated,
    load_data,
    load_pairs,
    load_rated,
    parse_rated,
    parse_rated_line,
    split_for_prompt,
)

USER = {"role": "user", "content": "Where is order QB-1?"}
ANSWER = {"role": "assistant", "content": "It ships today."}


def row(**extra: Any) -> dict[str, Any]:
    return {"messages": [USER, ANSWER], "reward": 0.75, **extra}


def line(record: object) -> str:
    return json.dumps(record)


def test_a_rated_response_and_its_defaults() -> None:
    rated = parse_rated(row(metadata={"log_id": "log_1"}, tools=[{"type": "function"}], tool_choice="auto"))
    assert rated.reward == 0.75 and rated.weight == 1.0 and rated.response.content == "It ships today."
    assert rated.prompt[0].content == USER["content"] and rated.conversation[-1] == rated.response
    assert rated.split == split_for_prompt(rated.prompt)  # the same prompt-hash split as pairs
    assert rated.metadata == {"log_id": "log_1"} and rated.tools == ({"type": "function"},)
    assert parse_rated(rated.to_json()) == rated  # round trip, split fixed


def test_weight_split_and_integer_rewards() -> None:
    rated = parse_rated(row(reward=4, weight=2.5, split="TEST"))
    assert (rated.reward, rated.weight, rated.split) == (4.0, 2.5, "TEST")
    assert parse_rated(rated.to_json()).weight == 2.5


def test_trl_unpaired_shape_label_is_a_0_1_reward() -> None:
    good = parse_rated({"prompt": "Where is order QB-1?", "completion": "It ships today.", "label": True})
    bad = parse_rated({"prompt": [USER], "completion": ANSWER, "label": False})
    assert (good.reward, bad.reward) == (1.0, 0.0) and good.prompt == bad.prompt


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"reward": 1}, "missing messages"),
        ({"messages": [], "reward": 1}, "messages: missing or empty"),
        ({"messages": [USER], "reward": 1}, "messages[0]: last message must be the assistant's rated answer"),
        ({"messages": [USER, ANSWER]}, "reward: missing"),
        (row(reward="high"), "reward: must be a number"),
        (row(reward=True), "reward: must be a number"),
        (row(reward=float("nan")), "reward: must be a finite number"),
        (row(weight=0), "weight: must be positive"),
        (row(weight="x"), "weight: must be a number"),
        (row(split="DEV"), "split: bad value 'DEV'"),
        (row(metadata=[1]), "metadata: must be an object"),
        ({"messages": [USER, {"role": "robot", "content": "x"}], "reward": 1}, "messages[1].role: unknown role"),
        ({"messages": [USER, {"role": "assistant", "content": ""}], "reward": 1}, "messages[1].content: empty"),
        ({"prompt": "q", "completion": "a", "label": "yes"}, "label: expected true or false"),
        ({"prompt": "q", "completion": {"role": "user", "content": "a"}, "label": True}, "completion: must be an"),
        (row(rejected_message=ANSWER), "a preference pair among rated responses"),
    ],
)
def test_each_rule_names_the_field(record: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_rated_line(line(record))
    assert needle in str(info.value)


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "ratings.jsonl"
    path.write_text("\n".join([line(row()), "{not json", "", line(row(reward="x")), line(row(weight=-1))]) + "\n")
    with pytest.raises(DatasetError) as info:
        load_rated(path)
    assert [str(e) for e in info.value.errors] == [
        "line 2: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        "line 4: reward: must be a number",
        "line 5: weight: must be positive",
    ]
    loaded = load_rated(path, skip_invalid=True)
    assert len(loaded.rows) == 1 and len(loaded.skipped) == 3
    assert loaded.summary().endswith("3 invalid line(s) skipped")


def test_binary_when_every_reward_is_0_or_1() -> None:
    thumbs = load_rated([line(row(reward=1)), line(row(reward=0.0, split="TEST"))])
    scores = load_rated([line(row(reward=1)), line(row(reward=0.5))])
    assert thumbs.binary and not scores.binary and not RatedSet(()).binary
    assert thumbs.summary() == "2 rated responses (TRAIN 1, TEST 1, 0/1 labels)"
    assert thumbs.split("TEST")[0].reward == 0.0


def test_the_first_record_decides_a_files_kind_and_the_other_kind_is_a_bad_line(tmp_path: Path) -> None:
    pair = {"messages": [USER, ANSWER], "rejected_message": {"role": "assistant", "content": "No idea."}}
    assert data_kind(["", "garbage", line(row())]) == "rated" and data_kind([line(pair)]) == "pairs"
    assert data_kind([]) == "pairs" and is_rated({"prompt": "q", "completion": "a", "label": True})
    assert not is_rated(pair) and not is_rated([row()])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(line(row()) + "\n" + line(pair) + "\n")
    with pytest.raises(DatasetError) as info:
        load_data(mixed)
    assert (
        str(info.value.errors[0]) == "line 2: a preference pair among rated responses: a file holds one kind of record"
    )
    assert isinstance(load_data([line(pair)]), PairSet) and isinstance(load_data([line(row())]), RatedSet)
    with pytest.raises(DatasetError) as info:
        load_pairs([line(pair), line(row())])
    assert "line 2: a rated response (`reward` or `label`) among preference pairs" in str(info.value.errors[0])


def test_the_script_made_sample_is_valid_rated_data(tmp_path: Path) -> None:
    from tests.scripts.test_make_rated_data import load_script

    script = load_script()
    thumbs = load_rated(line(r) for r in script.rated_rows(labels="thumbs"))
    stars = load_rated(line(r) for r in script.rated_rows(labels="stars", limit=20))
    assert len(thumbs.rows) == 800 and thumbs.binary and len(thumbs.split("TEST")) == 84
    assert {r.reward for r in stars.rows} <= {1.0, 2.0, 4.0, 5.0} and not stars.binary


@given(st.dictionaries(st.sampled_from(["messages", "reward", "weight", "split", "prompt", "completion", "label"]),
                       st.none() | st.booleans() | st.floats() | st.text() | st.lists(st.text())))  # fmt: skip
def test_property_any_record_is_a_rated_response_or_a_pair_error(record: dict[str, Any]) -> None:
    with contextlib.suppress(PairError):  # anything else (a crash) fails the test
        parse_rated(record)
