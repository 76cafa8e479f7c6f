"""Rule criteria: every rule type passing and failing with its explanation, spec validation naming the exact
field, version selection through RuleCatalog, the never-raises guarantee (hypothesis), and score_all."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.criteria import UnknownCriterionError, score_all
from gateway.criteria.base import CriterionRef, CriterionResult, FailedCriterion
from gateway.criteria.definitions import CriterionSpecError, InMemoryDefinitions
from gateway.criteria.rules import MAX_PATTERN_CHARS, MAX_TEXT_CHARS, RuleCatalog, RuleCriterion, validate_spec
from gateway.formats import Message
from gateway.protocol import CriterionDefinition

PROMPT = [Message("user", "Where is my order?")]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}


async def check(spec: Any, content: str, *, tool_calls: tuple[dict[str, Any], ...] = ()) -> CriterionResult:
    [result] = await RuleCriterion("r", "v3", spec).score(PROMPT, [Message("assistant", content, tool_calls)])
    return result


# ---------------------------------------------------------------- every rule type, passing and failing

NO_SORRY = {"type": "regex", "pattern": "sorry", "must": "not_match"}
CASES: list[tuple[str, dict[str, Any], str, float, str]] = [
    ("regex match", {"type": "regex", "pattern": r"order #\d+"}, "Your order #123 ships", 1.0,
     "matched 'order #123' at character 5"),
    ("regex no match", {"type": "regex", "pattern": r"order #\d+"}, "It ships", 0.0,
     "no match for pattern 'order #\\\\d+'"),
    ("not_match passes", NO_SORRY, "Here you go.", 1.0, "no match for pattern 'sorry'"),
    ("not_match fails", NO_SORRY, "I am really sorry.", 0.0, "matched 'sorry' at character 12 (must not match)"),
    ("flag i", {"type": "regex", "pattern": "SORRY", "flags": "i"}, "so Sorry", 1.0, "matched 'Sorry' at character 3"),
    ("no flag i", {"type": "regex", "pattern": "SORRY"}, "so Sorry", 0.0, "no match"),
    ("flag m", {"type": "regex", "pattern": "^b$", "flags": "m"}, "a\nb\nc", 1.0, "matched 'b' at character 2"),
    ("flag s", {"type": "regex", "pattern": "a.b", "flags": "s"}, "a\nb", 1.0, "matched 'a\\nb' at character 0"),
    ("flag x", {"type": "regex", "pattern": "a b # comment", "flags": "x"}, "xab", 1.0, "at character 1"),
    ("long match is clipped", {"type": "regex", "pattern": "a+"}, "a" * 500, 1.0, "'" + "a" * 57 + "...'"),
    ("json object", {"type": "json"}, ' {"a": [1, 2]} ', 1.0, "valid JSON (an object)"),
    ("json number", {"type": "json"}, "3.5", 1.0, "valid JSON (a number)"),
    ("json broken", {"type": "json"}, '{"a": 1,}', 0.0, "not valid JSON: Expecting property name enclosed in"),
    ("json empty", {"type": "json"}, "", 0.0, "not valid JSON: Expecting value at line 1 column 1"),
    ("json NaN", {"type": "json"}, "[NaN]", 0.0, "not valid JSON: NaN is not JSON"),
    ("json deep", {"type": "json"}, "[" * 100_000, 0.0, "not valid JSON: nested too deeply"),
    ("json huge int", {"type": "json"}, "9" * 5_000, 0.0, "not valid JSON: Exceeds the limit"),
    ("fence refused by default", {"type": "json"}, '```json\n{"a": 1}\n```', 0.0, "not valid JSON"),
    ("fence allowed", {"type": "json", "allow_fence": True}, '\n```json\n{"a": 1}\n```\n', 1.0,
     "valid JSON (an object, inside a fence)"),
    ("bare fence allowed", {"type": "json", "allow_fence": True}, "```\n[1]\n```", 1.0, "inside a fence"),
    ("fence with prose", {"type": "json", "allow_fence": True}, 'Here:\n```json\n{"a": 1}\n```', 0.0,
     "not valid JSON"),
    ("two fences", {"type": "json", "allow_fence": True}, "```json\n[1]\n```\n```json\n[2]\n```", 0.0,
     "not valid JSON"),
    ("schema passes", {"type": "json_schema", "schema": PERSON}, '{"name": "Ann", "age": 3}', 1.0,
     "valid against the JSON schema"),
    ("schema fails", {"type": "json_schema", "schema": {"properties": {"name": {"type": "integer"}}}},
     '{"name": "x"}', 0.0, "JSON schema: $.name: 'x' is not of type 'integer'"),
    ("schema counts the rest", {"type": "json_schema", "schema": PERSON}, '{"name": 1, "age": "2"}', 0.0,
     "is not of type 'string' (and 1 more error)"),
    ("schema on non-JSON", {"type": "json_schema", "schema": PERSON}, "name: Ann", 0.0, "not valid JSON: "),
    ("schema with a fence", {"type": "json_schema", "schema": PERSON, "allow_fence": True},
     '```json\n{"age": 1}\n```', 1.0, "valid against the JSON schema"),
    ("schema of draft-07", {"type": "json_schema", "schema": {
        "$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}},
     "[1]", 0.0, "JSON schema: $[0]: 1 is not of type 'string'"),  # tuple `items` exists only before 2020-12
    ("local $ref", {"type": "json_schema", "schema": {"$defs": {"n": {"type": "null"}}, "$ref": "#/$defs/n"}},
     "0", 0.0, "JSON schema: $: 0 is not of type 'null'"),
    ("length within", {"type": "length", "max_chars": 20, "min_words": 2}, "two words", 1.0,
     "length 9 chars, 2 words: within bounds"),
    ("max_chars", {"type": "length", "max_chars": 500}, "x" * 812, 0.0, "length 812 chars > max_chars 500"),
    ("min_chars", {"type": "length", "min_chars": 5}, "abc", 0.0, "length 3 chars < min_chars 5"),
    ("max_words", {"type": "length", "max_words": 2}, "one two  three\n", 0.0, "length 3 words > max_words 2"),
    ("both broken", {"type": "length", "min_chars": 9, "min_words": 3}, "a b", 0.0,
     "length 3 chars < min_chars 9; length 2 words < min_words 3"),
    ("code points", {"type": "length", "max_chars": 2}, "日本", 1.0, "length 2 chars"),
    ("all pass", {"all": [NO_SORRY, {"type": "json"}, {"type": "length", "max_chars": 10}]}, "[1]", 1.0,
     "all 3 rules passed"),
    ("all lists the failures", {"all": [NO_SORRY, {"type": "json"}, {"type": "length", "max_chars": 5}]},
     "sorry!", 0.0, "3 of 3 rules failed: all[0]: matched 'sorry' at character 0 (must not match); "
     "all[1]: not valid JSON: Expecting value at line 1 column 1; all[2]: length 6 chars > max_chars 5"),
]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(("spec", "content", "score", "explanation"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_rules_pass_and_fail_with_an_exact_explanation(
    spec: dict[str, Any], content: str, score: float, explanation: str
) -> None:
    result = await check(spec, content)
    assert result.ok and result.score == score and result.normalized == score and result.version == "v3"
    assert result.explanation is not None and explanation in result.explanation, result.explanation


@pytest.mark.anyio
async def test_all_fails_with_only_the_failing_rule_listed() -> None:
    result = await check({"all": [NO_SORRY, {"type": "length", "max_chars": 2}]}, "fine")
    assert result.explanation == "1 of 2 rules failed: all[1]: length 4 chars > max_chars 2"


@pytest.mark.anyio
async def test_a_tool_call_candidate_is_checked_on_its_empty_content() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"sorry": 1}'}}
    assert (await check(NO_SORRY, "", tool_calls=(call,))).score == 1.0  # the arguments are not searched
    assert (await check({"type": "length", "min_chars": 1}, "", tool_calls=(call,))).explanation == (
        "length 0 chars < min_chars 1"
    )


@pytest.mark.anyio
async def test_content_over_the_cap_errors_for_regex_and_schema_but_a_failed_rule_still_fails() -> None:
    text = "x" * (MAX_TEXT_CHARS + 1)
    for spec in (NO_SORRY, {"type": "json_schema", "schema": PERSON}):
        result = await check(spec, text)
        assert not result.ok and result.error_code == "content_too_long" and result.version == "v3"
        assert f"at most {MAX_TEXT_CHARS}" in (result.error_message or "")
    assert (await check({"type": "length", "max_chars": MAX_TEXT_CHARS + 5}, text)).score == 1.0
    failed = await check({"all": [NO_SORRY, {"type": "length", "max_chars": 10}]}, text)
    assert failed.score == 0.0
    assert failed.explanation == f"1 of 2 rules failed: all[1]: length {len(text)} chars > max_chars 10"
    unknown = await check({"all": [NO_SORRY, {"type": "length", "min_chars": 10}]}, text)
    assert unknown.error_code == "content_too_long" and (unknown.error_message or "").startswith("all[0]: content is")


@pytest.mark.anyio
async def test_schema_refs_never_fetch_and_bad_refs_are_errors_not_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[object] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: fetched.append(args))
    remote = await check({"type": "json_schema", "schema": {"$ref": "https://example.com/s.json"}}, "1")
    assert remote.error_code == "invalid_definition" and "unresolvable $ref 'https://example.com/s.json'" in (
        remote.error_message or ""
    )
    missing = await check({"type": "json_schema", "schema": {"$ref": "#/$defs/nope"}}, "1")
    assert missing.error_code == "invalid_definition"
    cycle = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert (await check({"type": "json_schema", "schema": cycle}, "1")).error_code == "too_deeply_nested"
    assert fetched == []


# ---------------------------------------------------------------- validate_spec

BAD_SPECS: list[tuple[object, str, str]] = [
    ("regex", "spec", "must be a JSON object, got a string"),
    ({}, "spec.type", "missing; expected one of regex, json, json_schema, length"),
    ({"type": "xml"}, "spec.type", "unknown rule type 'xml'"),
    ({"type": 3}, "spec.type", "unknown rule type 3"),
    ({"type": "json", "strict": True}, "spec.strict", "unknown key for a json rule (allowed: type, allow_fence)"),
    ({"type": "json", "allow_fence": "yes"}, "spec.allow_fence", "must be true or false, got a string"),
    ({"type": "regex"}, "spec.pattern", "must be a non-empty string, got null"),
    ({"type": "regex", "pattern": ""}, "spec.pattern", "must be a non-empty string"),
    ({"type": "regex", "pattern": "a("}, "spec.pattern", "does not compile: missing ), unterminated subpattern"),
    ({"type": "regex", "pattern": "a" * (MAX_PATTERN_CHARS + 1)}, "spec.pattern", f"at most {MAX_PATTERN_CHARS}"),
    ({"type": "regex", "pattern": "a", "flags": "ig"}, "spec.flags", "flags from 'imsx', got 'ig'"),
    ({"type": "regex", "pattern": "a", "flags": 2}, "spec.flags", "flags from 'imsx'"),
    ({"type": "regex", "pattern": "a", "must": "matches"}, "spec.must", "'match' or 'not_match', got 'matches'"),
    ({"type": "regex", "pattern": "a", "Must": "match"}, "spec.Must", "unknown key for a regex rule"),
    ({"type": "json_schema"}, "spec.schema", "must be a JSON Schema object, got null"),
    ({"type": "json_schema", "schema": True}, "spec.schema", "must be a JSON Schema object, got a boolean"),
    ({"type": "json_schema", "schema": {"type": "nope"}}, "spec.schema.type", "invalid JSON Schema: 'nope' is not"),
    ({"type": "json_schema", "schema": {"properties": {"a": {"minLength": -1}}}}, "spec.schema.properties.a.minLength",
     "-1 is less than the minimum of 0"),
    ({"type": "json_schema", "schema": {"pattern": "("}}, "spec.schema.pattern", "'(' is not a 'regex'"),
    ({"type": "json_schema", "schema": {"$schema": "https://example.com/s"}}, "spec.schema.$schema",
     "unknown JSON Schema draft 'https://example.com/s'"),
    ({"type": "json_schema", "schema": {"$schema": 7}}, "spec.schema.$schema", "unknown JSON Schema draft 7"),
    ({"type": "json_schema", "schema": {"const": float("nan")}}, "spec.schema", "is not plain JSON"),
    ({"type": "json_schema", "schema": {"enum": ["x" * 60_000]}}, "spec.schema", "at most 50000"),
    ({"type": "length"}, "spec", "needs at least one of min_chars, max_chars, min_words, max_words"),
    ({"type": "length", "max_chars": -1}, "spec.max_chars", "must be an integer >= 0, got -1"),
    ({"type": "length", "max_chars": 2.5}, "spec.max_chars", "got 2.5"),
    ({"type": "length", "min_words": True}, "spec.min_words", "got True"),
    ({"type": "length", "min_chars": 5, "max_chars": 4}, "spec.min_chars", "5 is greater than max_chars 4"),
    ({"type": "length", "min_words": 5, "max_words": 4}, "spec.min_words", "5 is greater than max_words 4"),
    ({"type": "length", "max_lines": 4}, "spec.max_lines", "unknown key for a length rule"),
    ({"all": []}, "spec.all", "must be a non-empty array of rules, got an array"),
    ({"all": {"type": "json"}}, "spec.all", "got an object"),
    ({"all": [{"type": "json"}] * 33}, "spec.all", "33 rules; at most 32"),
    ({"all": [{"type": "json"}], "type": "json"}, "spec.type", "unknown key for an 'all' spec (allowed: all)"),
    ({"all": [{"type": "json"}, {"type": "regex", "pattern": "("}]}, "spec.all[1].pattern", "does not compile"),
    ({"all": [{"type": "json"}, 5]}, "spec.all[1]", "must be a JSON object, got a number"),
    ({"all": [{"type": "length"}]}, "spec.all[0]", "needs at least one"),
    ({"all": [{"type": "json", "x": 1}]}, "spec.all[0].x", "unknown key"),
    ({"all": [{"all": [{"type": "json"}]}]}, "spec.all[0].all", "'all' cannot be nested"),
    ({"all": [{"type": "json_schema", "schema": {"minimum": "0"}}]}, "spec.all[0].schema.minimum", "is not of type"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "field", "problem"), BAD_SPECS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_SPECS)])
def test_validate_spec_names_the_exact_field(spec: object, field: str, problem: str) -> None:
    with pytest.raises(CriterionSpecError) as info:
        validate_spec(spec)
    assert info.value.field == field, str(info.value)
    assert problem in info.value.problem, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    with pytest.raises(CriterionSpecError):
        RuleCriterion("r", "v1", spec)


def test_validate_spec_returns_a_normalised_deep_copy() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"all": [{"type": "regex", "pattern": "x", "flags": "xsii"}, {"type": "json_schema", "schema": schema}]}
    normal = validate_spec(spec)
    assert normal == {
        "all": [
            {"type": "regex", "pattern": "x", "flags": "isx", "must": "match"},
            {"type": "json_schema", "schema": schema, "allow_fence": False},
        ]
    }
    schema["properties"]["a"]["type"] = "string"
    assert normal["all"][1]["schema"]["properties"]["a"] == {"type": "integer"}
    assert validate_spec({"type": "json"}) == {"type": "json", "allow_fence": False}
    assert validate_spec({"type": "length", "max_words": 0}) == {"type": "length", "max_words": 0}
    assert validate_spec(normal) == normal  # normalising is idempotent
    assert RuleCriterion("r", "v1", normal).spec == normal


# ---------------------------------------------------------------- RuleCatalog


def rule(slug: str, version: int, spec: dict[str, Any], kind: str = "rule") -> CriterionDefinition:
    return CriterionDefinition(slug=slug, version=version, kind=kind, spec=spec)


V1 = {"type": "regex", "pattern": "sorry", "must": "not_match"}
V2 = {"type": "length", "max_chars": 5}


def catalog(*definitions: CriterionDefinition, cache_size: int = 256) -> RuleCatalog:
    base = [rule("no-sorry", 1, V1), rule("no-sorry", 2, V2), rule("tone", 1, {"prompt": "x"}, kind="llm_judge")]
    return RuleCatalog(InMemoryDefinitions([*base, *definitions]), cache_size=cache_size)


@pytest.mark.anyio
async def test_catalog_resolves_the_newest_and_pinned_versions() -> None:
    rules = catalog()
    assert RuleCatalog.kind == "rule"
    newest = await rules.resolve(CriterionRef("no-sorry"))
    assert isinstance(newest, RuleCriterion)
    assert (newest.slug, newest.version, newest.kind, newest.spec) == ("no-sorry", "v2", "rule", V2)
    pinned = await rules.resolve(CriterionRef("no-sorry", 1))
    assert isinstance(pinned, RuleCriterion) and pinned.version == "v1"
    [result] = await pinned.score(PROMPT, [Message("assistant", "so sorry")])
    assert (result.score, result.version) == (0.0, "v1")


@pytest.mark.anyio
async def test_catalog_unknown_version_other_kinds_and_missing_slugs() -> None:
    rules = catalog()
    with pytest.raises(UnknownCriterionError) as info:
        await rules.resolve(CriterionRef("no-sorry", 3))
    assert info.value.criterion_id == "no-sorry@v3" and info.value.available == ("no-sorry@v1", "no-sorry@v2")
    assert await rules.resolve(CriterionRef("tone")) is None  # an llm_judge slug: another kind answers
    assert await rules.resolve(CriterionRef("tone", 1)) is None
    assert await rules.resolve(CriterionRef("nobody")) is None


@pytest.mark.anyio
async def test_catalog_compiles_once_per_definition_and_keeps_the_cache_bounded() -> None:
    rules = catalog(rule("short", 1, V2), cache_size=1)
    first = await rules.resolve(CriterionRef("no-sorry"))
    assert await rules.resolve(CriterionRef("no-sorry", 2)) is first  # the same definition: compiled once
    await rules.resolve(CriterionRef("short"))  # evicts no-sorry@v2
    again = await rules.resolve(CriterionRef("no-sorry"))
    assert again is not first and isinstance(again, RuleCriterion) and again.spec == V2


class Rewritable:
    """A DefinitionSource whose definitions a test can replace (versions should be immutable; be safe anyway)."""

    def __init__(self, *definitions: CriterionDefinition) -> None:
        self.definitions = list(definitions)

    async def criterion_versions(self, slug: str) -> list[CriterionDefinition]:
        return [d for d in self.definitions if d.slug == slug]


@pytest.mark.anyio
async def test_catalog_recompiles_a_changed_definition() -> None:
    source = Rewritable(rule("r", 1, V1))
    rules = RuleCatalog(source)
    first = await rules.resolve(CriterionRef("r"))
    assert await rules.resolve(CriterionRef("r")) is first
    source.definitions = [rule("r", 1, V2)]
    second = await rules.resolve(CriterionRef("r"))
    assert isinstance(second, RuleCriterion) and second is not first and second.spec == V2


@pytest.mark.anyio
async def test_an_invalid_stored_spec_errors_per_candidate_with_its_version() -> None:
    rules = catalog(rule("broken", 4, {"type": "regex", "pattern": "("}))
    criterion = await rules.resolve(CriterionRef("broken"))
    assert isinstance(criterion, FailedCriterion) and (criterion.version, criterion.kind) == ("v4", "rule")
    results = await criterion.score(PROMPT, [Message("assistant", "a"), Message("assistant", "b")])
    assert [r.error_code for r in results] == ["invalid_definition", "invalid_definition"]
    assert "broken@v4 has an invalid spec: spec.pattern: does not compile" in (results[0].error_message or "")


# ---------------------------------------------------------------- never raises; score_all

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
CONTENTS = (
    st.text()
    | JSON_VALUES.map(json.dumps)
    | st.builds(lambda v, pre, post: f"{pre}```json\n{json.dumps(v)}\n```{post}", JSON_VALUES, st.text(), st.text())
)
EVERY_RULE = RuleCriterion(
    "every",
    "v1",
    {
        "all": [
            {"type": "regex", "pattern": r"(\w+)\s+\1", "flags": "imsx", "must": "not_match"},
            {"type": "json", "allow_fence": True},
            {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}, "allow_fence": True},
            {"type": "length", "min_chars": 1, "max_chars": 200, "min_words": 1, "max_words": 30},
        ]
    },
)
SINGLE_SPECS = (
    {"type": "json"},
    {"type": "json_schema", "schema": PERSON},
    NO_SORRY,
    {"type": "length", "max_words": 2},
)
SINGLE_RULES = [RuleCriterion("one", "v1", spec) for spec in SINGLE_SPECS]


@pytest.mark.anyio
@given(contents=st.lists(CONTENTS, min_size=1, max_size=4))
async def test_scoring_never_raises_for_any_content(contents: list[str]) -> None:
    candidates = [Message("assistant", text) for text in contents]
    for criterion in [EVERY_RULE, *SINGLE_RULES]:
        results = await criterion.score(PROMPT, candidates)
        assert len(results) == len(candidates)
        for result in results:
            assert result.ok and result.score in (0.0, 1.0) and result.explanation, result


@pytest.mark.anyio
async def test_score_all_combines_to_the_rule_score() -> None:
    criterion = RuleCriterion("no-sorry", "v2", NO_SORRY)
    candidates = [Message("assistant", "So sorry, no."), None, Message("assistant", "Here it is.")]
    scored = await score_all([(criterion, 2.0)], PROMPT, candidates)
    assert [s.score for s in scored] == [0.0, None, 1.0]
    assert scored[1].failed and not scored[0].criteria_errors
    assert scored[0].criteria_results() == {
        "no-sorry": {
            "status": "success",
            "score": 0.0,
            "explanation": "matched 'sorry' at character 3 (must not match)",
            "version": "v2",
        }
    }
