"""Rule criteria: deterministic checks of a candidate's content (regex, JSON, JSON Schema, length) that score
1.0 when it passes and 0.0 when it fails, with an explanation that says exactly why. Owns the `rule` kind's
spec (`validate_spec`), its scorer (`RuleCriterion`) and its resolver (`RuleCatalog`). May import only
criteria.base, criteria.definitions and formats (DESIGN.md import rules, enforced by tests/test_architecture.py).

Spec: one rule, or `{"all": [rule, ...]}` (every rule must pass; 1 to 32 rules, not nested):

    {"type": "regex", "pattern": str, "flags": subset of "imsx" (default ""), "must": "match" | "not_match"}
    {"type": "json", "allow_fence": bool (default false)}
    {"type": "json_schema", "schema": {...}, "allow_fence": bool (default false)}
    {"type": "length", "min_chars", "max_chars", "min_words", "max_words": int >= 0 (at least one; min <= max)}

- Text: the candidate's `content` only; tool calls are not looked at, so a candidate with tool calls and
  empty content is checked as "". Chars are code points; words are whitespace-separated runs.
- JSON: the whole content as `json.loads` reads it, minus NaN/Infinity: what an application that parses the
  answer accepts. `allow_fence` also accepts content that is exactly one ``` or ```json fenced block (models
  often wrap JSON so); it is off by default because that application's `json.loads` would fail on the fence.
- JSON Schema: Draft 2020-12 unless `$schema` names another draft; checked with the spec. `format` is an
  annotation, not asserted; `$ref` resolves inside the schema only: nothing is fetched (jsonschema would).
- Cost: stdlib `re` has no timeout and holds the GIL while matching (so a thread would not help); JSON Schema
  `pattern` uses it too. Definitions are written by gateway-key holders, not request senders, so capping what
  they write (MAX_PATTERN_CHARS, MAX_SCHEMA_CHARS) and the text searched (MAX_TEXT_CHARS) bounds the cost; a
  catastrophically backtracking pattern is its author's bug.
- Scoring never raises. A rule that cannot be evaluated gives an error result (not a 0) unless another rule
  failed: content_too_long (regex or json_schema on content over MAX_TEXT_CHARS), invalid_definition (an
  unresolvable `$ref`; a stored spec that no longer validates), too_deeply_nested (a `$ref` cycle, say).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jsonschema  # type: ignore[import-untyped]  # no py.typed, and types-jsonschema is not a dependency
import referencing
import referencing.exceptions

from gateway.formats import Message
from gateway.protocol import CriterionDefinition

from .base import CriterionRef, CriterionResult, FailedCriterion
from .definitions import CriterionSpecError, DefinitionSource, select_version
from .kinds import Backends, CriterionKind

logger = logging.getLogger(__name__)

MAX_RULES = 32
MAX_PATTERN_CHARS = 1_000
MAX_SCHEMA_CHARS = 50_000  # the schema serialised as JSON
MAX_TEXT_CHARS = 100_000  # content searched by regex and json_schema rules (about 25k tokens)
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_LENGTH_KEYS = ("min_chars", "max_chars", "min_words", "max_words")
_KEYS = {
    "regex": ("type", "pattern", "flags", "must"),
    "json": ("type", "allow_fence"),
    "json_schema": ("type", "schema", "allow_fence"),
    "length": ("type", *_LENGTH_KEYS),
}
_FENCE = re.compile(r"\s*```(?:json|JSON)?[ \t]*\n(.*)\n[ \t]*```\s*", re.DOTALL)


class _Unevaluable(Exception):
    """A rule could not be evaluated on one candidate; becomes an error result unless another rule failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- compiled rules


@dataclass(frozen=True, slots=True)
class _Regex:
    pattern: re.Pattern[str]
    must_match: bool

    def check(self, text: str) -> tuple[bool, str]:
        _within_cap(text)
        found = self.pattern.search(text)
        if found is None:
            return not self.must_match, f"no match for pattern {_clip(self.pattern.pattern)!r}"
        where = f"matched {_clip(found.group())!r} at character {found.start()}"
        return self.must_match, where if self.must_match else f"{where} (must not match)"


@dataclass(frozen=True, slots=True)
class _Json:
    allow_fence: bool
    validator: Any = None  # a jsonschema Validator for json_schema rules (jsonschema is untyped)

    def check(self, text: str) -> tuple[bool, str]:
        if self.validator is not None:
            _within_cap(text)
        try:
            value, fenced = _parse_json(text, self.allow_fence)
        except ValueError as exc:
            return False, f"not valid JSON: {exc}"
        if self.validator is None:
            return True, f"valid JSON ({_describe(value)}{', inside a fence' if fenced else ''})"
        try:
            errors = list(self.validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as exc:
            raise _Unevaluable("invalid_definition", f"JSON schema: unresolvable $ref {exc.ref!r}") from None
        except RecursionError:
            message = "JSON schema validation recursed too deeply (a $ref cycle, or a very deeply nested document)"
            raise _Unevaluable("too_deeply_nested", message) from None
        if not errors:
            return True, "valid against the JSON schema"
        best, more = jsonschema.exceptions.best_match(errors), len(errors) - 1
        extra = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        return False, f"JSON schema: {best.json_path}: {_clip(best.message, 200)}{extra}"


@dataclass(frozen=True, slots=True)
class _Length:
    bounds: Mapping[str, int]

    def check(self, text: str) -> tuple[bool, str]:
        measured = {"chars": len(text), "words": len(text.split())}
        broken = []
        for key, bound in self.bounds.items():
            side, unit = key.split("_")
            if (measured[unit] < bound) if side == "min" else (measured[unit] > bound):
                broken.append(f"length {measured[unit]} {unit} {'<' if side == 'min' else '>'} {key} {bound}")
        if broken:
            return False, "; ".join(broken)
        return True, f"length {measured['chars']} chars, {measured['words']} words: within bounds"


_Rule = _Regex | _Json | _Length


def _within_cap(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        message = f"content is {len(text)} chars; regex and json_schema rules search at most {MAX_TEXT_CHARS}"
        raise _Unevaluable("content_too_long", message)


def _parse_json(text: str, allow_fence: bool) -> tuple[Any, bool]:
    """(value, read from inside a fence); ValueError says why the text is not JSON."""
    fence = _FENCE.fullmatch(text) if allow_fence else None
    body = text if fence is None else fence.group(1)
    try:
        return json.loads(body, parse_constant=_reject_constant), fence is not None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------- the spec


def validate_spec(spec: object) -> dict[str, Any]:
    """A rule definition's spec, checked and normalised: a deep copy with defaults filled in and flags in "imsx"
    order. Raises CriterionSpecError naming the exact field, e.g. `spec.all[1].pattern`."""
    return _parse(spec)[0]


def _parse(spec: object) -> tuple[dict[str, Any], list[tuple[str, _Rule]]]:
    """(normalised spec, [(label, compiled rule)]): the label is "" for a single rule, "all[i]" in an `all`."""
    if isinstance(spec, Mapping) and "all" in spec:
        _known_keys(spec, ("all",), "spec", "an 'all' spec")
        rules = spec["all"]
        if not isinstance(rules, list) or not rules:
            raise CriterionSpecError("spec.all", f"must be a non-empty array of rules, got {_describe(rules)}")
        if len(rules) > MAX_RULES:
            raise CriterionSpecError("spec.all", f"{len(rules)} rules; at most {MAX_RULES}")
        parsed = [_parse_rule(rule, f"spec.all[{i}]") for i, rule in enumerate(rules)]
        return {"all": [p[0] for p in parsed]}, [(f"all[{i}]", p[1]) for i, p in enumerate(parsed)]
    normal, rule = _parse_rule(spec, "spec")
    return normal, [("", rule)]


def _parse_rule(raw: object, where: str) -> tuple[dict[str, Any], _Rule]:
    if not isinstance(raw, Mapping):
        raise CriterionSpecError(where, f"must be a JSON object, got {_describe(raw)}")
    if "all" in raw:  # only reachable inside an `all`
        raise CriterionSpecError(f"{where}.all", "'all' cannot be nested: list every rule in the top-level 'all'")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _KEYS:
        problem = "missing" if kind is None else f"unknown rule type {kind!r}"
        raise CriterionSpecError(f"{where}.type", f"{problem}; expected one of {', '.join(_KEYS)}")
    _known_keys(raw, _KEYS[kind], where, f"a {kind} rule")
    if kind == "regex":
        return _parse_regex(raw, where)
    if kind == "length":
        return _parse_length(raw, where)
    fence = raw.get("allow_fence", False)
    if not isinstance(fence, bool):
        raise CriterionSpecError(f"{where}.allow_fence", f"must be true or false, got {_describe(fence)}")
    if kind == "json":
        return {"type": kind, "allow_fence": fence}, _Json(fence)
    schema, validator = _parse_schema(raw.get("schema"), f"{where}.schema")
    return {"type": kind, "schema": schema, "allow_fence": fence}, _Json(fence, validator)


def _parse_regex(raw: Mapping[str, Any], where: str) -> tuple[dict[str, Any], _Rule]:
    pattern, flags, must = raw.get("pattern"), raw.get("flags", ""), raw.get("must", "match")
    if not isinstance(pattern, str) or not pattern:
        raise CriterionSpecError(f"{where}.pattern", f"must be a non-empty string, got {_describe(pattern)}")
    if len(pattern) > MAX_PATTERN_CHARS:
        # stdlib re cannot be interrupted: see "Cost" in the module docstring.
        raise CriterionSpecError(f"{where}.pattern", f"{len(pattern)} chars; at most {MAX_PATTERN_CHARS}")
    if not isinstance(flags, str) or not set(flags) <= set(_FLAGS):
        raise CriterionSpecError(f"{where}.flags", f"must be a string of flags from 'imsx', got {flags!r}")
    if not isinstance(must, str) or must not in ("match", "not_match"):
        raise CriterionSpecError(f"{where}.must", f"must be 'match' or 'not_match', got {must!r}")
    flags = "".join(f for f in _FLAGS if f in flags)
    try:
        compiled = re.compile(pattern, sum(_FLAGS[f] for f in flags))
    except (re.error, RecursionError, OverflowError) as exc:
        raise CriterionSpecError(f"{where}.pattern", f"does not compile: {exc}") from None
    return {"type": "regex", "pattern": pattern, "flags": flags, "must": must}, _Regex(compiled, must == "match")


def _parse_length(raw: Mapping[str, Any], where: str) -> tuple[dict[str, Any], _Rule]:
    bounds = {key: raw[key] for key in _LENGTH_KEYS if key in raw}
    if not bounds:
        raise CriterionSpecError(where, f"a length rule needs at least one of {', '.join(_LENGTH_KEYS)}")
    for key, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CriterionSpecError(f"{where}.{key}", f"must be an integer >= 0, got {value!r}")
    for unit in ("chars", "words"):
        low, high = bounds.get(f"min_{unit}"), bounds.get(f"max_{unit}")
        if low is not None and high is not None and low > high:
            raise CriterionSpecError(f"{where}.min_{unit}", f"{low} is greater than max_{unit} {high}")
    return {"type": "length", **bounds}, _Length(bounds)


def _parse_schema(raw: object, where: str) -> tuple[dict[str, Any], Any]:
    """(a plain-JSON deep copy of the schema, its validator); the schema is checked against its draft."""
    if not isinstance(raw, Mapping):
        raise CriterionSpecError(where, f"must be a JSON Schema object, got {_describe(raw)}")
    try:
        text = json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CriterionSpecError(where, f"is not plain JSON: {exc}") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise CriterionSpecError(where, f"{len(text)} chars as JSON; at most {MAX_SCHEMA_CHARS}")
    schema = json.loads(text)
    draft = schema.get("$schema")
    cls = jsonschema.Draft202012Validator
    if draft is not None:
        try:
            cls = jsonschema.validators.validator_for(schema, default=None) if isinstance(draft, str) else None
        except ValueError:  # not a URI
            cls = None
        if cls is None:
            raise CriterionSpecError(f"{where}.$schema", f"unknown JSON Schema draft {draft!r}")
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise CriterionSpecError(f"{where}{exc.json_path[1:]}", f"invalid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise CriterionSpecError(where, "invalid JSON Schema: nested too deeply") from None
    # An empty registry: $ref never fetches anything (jsonschema adds the drafts' meta-schemas itself).
    return schema, cls(schema, registry=referencing.Registry())


def _known_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str, what: str) -> None:
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise CriterionSpecError(f"{where}.{unknown[0]}", f"unknown key for {what} (allowed: {', '.join(allowed)})")


def _describe(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return "an object" if isinstance(value, Mapping) else names.get(type(value), "a number")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- the criterion and its resolver


class RuleCriterion:
    """One rule definition at one version. Raises CriterionSpecError for an invalid spec; `score` never raises."""

    kind: ClassVar[str] = "rule"

    def __init__(self, slug: str, version: str, spec: object) -> None:
        self.slug: str = slug
        self.version: str = version
        self.spec, self._rules = _parse(spec)

    @classmethod
    def from_definition(cls, definition: CriterionDefinition) -> RuleCriterion:
        return cls(definition.slug, definition.version_name, definition.spec)

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        return [self._score_one(candidate.content or "") for candidate in candidates]

    def _score_one(self, text: str) -> CriterionResult:
        failed: list[str] = []
        reasons: list[str] = []
        unevaluable: _Unevaluable | None = None
        for label, rule in self._rules:
            try:
                passed, reason = rule.check(text)
            except _Unevaluable as exc:
                unevaluable = unevaluable or _Unevaluable(exc.code, f"{label}: {exc.message}" if label else exc.message)
                continue
            reasons.append(reason)
            if not passed:
                failed.append(f"{label}: {reason}" if label else reason)
        if failed:
            total = len(self._rules)
            explanation = failed[0] if total == 1 else f"{len(failed)} of {total} rules failed: {'; '.join(failed)}"
            return CriterionResult.success(0.0, version=self.version, explanation=explanation)
        if unevaluable is not None:
            return CriterionResult.error(unevaluable.code, unevaluable.message, version=self.version)
        explanation = reasons[0] if len(reasons) == 1 else f"all {len(reasons)} rules passed"
        return CriterionResult.success(1.0, version=self.version, explanation=explanation)


class RuleCatalog:
    """Resolves `slug` / `slug@vN` among the rule definitions of a DefinitionSource. Compiled criteria are cached
    by definition id (at most `cache_size`, least recently used out), recompiled if the definition changed.

    A stored spec that no longer validates resolves to a FailedCriterion (`invalid_definition` on every
    candidate, with the version): a bad definition is reported per candidate, never turned into a 400."""

    kind: ClassVar[str] = "rule"

    def __init__(self, definitions: DefinitionSource, *, cache_size: int = 256) -> None:
        self._definitions = definitions
        self._cache_size = max(1, cache_size)
        self._cache: OrderedDict[str, tuple[CriterionDefinition, RuleCriterion | FailedCriterion]] = OrderedDict()

    async def resolve(self, ref: CriterionRef) -> RuleCriterion | FailedCriterion | None:
        """None when the slug has no rule versions; UnknownCriterionError when the pinned version is absent."""
        definition = select_version(ref, await self._definitions.criterion_versions(ref.slug), self.kind)
        if definition is None:
            return None
        cached = self._cache.get(definition.id)
        if cached is not None and cached[0] == definition:
            self._cache.move_to_end(definition.id)
            return cached[1]
        criterion: RuleCriterion | FailedCriterion
        try:
            criterion = RuleCriterion.from_definition(definition)
        except CriterionSpecError as exc:
            logger.warning("rule criterion %s has an invalid spec: %s", definition.id, exc)
            message = f"rule criterion {definition.id} has an invalid spec: {exc}"
            version = definition.version_name
            criterion = FailedCriterion(definition.slug, version, self.kind, "invalid_definition", message)
        self._cache[definition.id] = (definition, criterion)
        self._cache.move_to_end(definition.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return criterion


def _resolver(backends: Backends) -> RuleCatalog:
    return RuleCatalog(backends.definitions)


KIND = CriterionKind("rule", _resolver, validate_spec)
