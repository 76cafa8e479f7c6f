"""Pluggable scorers for the `op-criteria` header (DESIGN contract 4): parsing the header, the registry of
criterion kinds, resolution, concurrent scoring and the combination rule.

The header is a JSON array of at most 16 entries, each `"slug"` (the newest version), `"slug@vN"` (a pinned
version) or an object `{"id": "slug@vN", "weight": 2.0}` (plain strings weigh 1; weights are finite and > 0).
A slug appears at most once, because results are keyed by slug. Reward-model slugs and other kinds mix
freely. A malformed header, or an id or version that no kind knows, fails the whole request with 400 naming it.

Combination rule:

1. Every criterion scores every candidate the provider produced, all criteria concurrently; the candidates
   of one request go to the reward server as one batch per reward model.
2. Each successful result is put on a 0..1 scale. LLM-judge and rule scores already are. A reward model's
   raw reward r becomes sigmoid((r - mean) / std), where mean and std are that model version's raw rewards
   on its TEST split (`reward_stats` in rewardgate.json, served by the reward server's /v1/models); without
   usable stats, mean 0 and std 1. So 0.5 is an answer as good as the average test answer and 0.73 one
   standard deviation better. `criteria_results` reports the raw reward as `score`, with z and the
   normalized value in `explanation`, and the version of the criterion that scored it.
3. A candidate's combined score is the weighted mean of its normalized results, sum(w * s) / sum(w), over
   the criteria that succeeded on that candidate. A criterion that errored on it is left out (it does not
   count as 0) and counted in the candidate's `criteria_errors`; if every criterion errored, the combined
   score is null.
4. Candidates are sorted best first by combined score; ties keep the provider's order (a stable sort by
   (-score, index)). Candidates with a null combined score come after every scored one, and candidates the
   provider failed to produce (never scored) come last, each group in the provider's order.
5. A failing criterion (reward server down, 5xx, timeout, bad response, a bug) never fails the request: it
   gives error results (`errorCode`, `errorMessage`) for the candidates it could not score.

Kinds: gateway.criteria.registry lists them (a new kind is one module exporting a CriterionKind and one line
there). Resolvers are asked in the registry's order: when several kinds know a slug, the first wins. When a
kind's backend cannot be reached and no other kind knows the slug, the criterion is kept and errors on every
candidate: an outage is reported per candidate, not turned into a 400.

May import only its own modules, the root vocabulary and reward_serving.protocol (DESIGN.md import rules).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence

from gateway.formats import Message
from gateway.protocol import CriterionDefinition

from .base import (
    CriteriaError,
    CriteriaHeaderError,
    Criterion,
    CriterionRef,
    CriterionResolver,
    CriterionResult,
    CriterionUnavailableError,
    FailedCriterion,
    Scored,
    UnknownCriterionError,
    combine,
    normalize_reward,
    rank,
)
from .definitions import SLUG, CachedDefinitions, CriterionSpecError, DefinitionSource, InMemoryDefinitions
from .kinds import Backends, CriterionKind
from .llm_judge import JudgeCatalog, JudgeModel, JudgeReply
from .registry import DEFAULT_KINDS, CriterionRegistry
from .reward_model import RewardModelCatalog, RewardModelCriterion
from .rules import RuleCatalog

__all__ = [
    "DEFAULT_KINDS",
    "MAX_CRITERIA",
    "SLUG",
    "Backends",
    "CachedDefinitions",
    "CriteriaError",
    "CriteriaHeaderError",
    "Criterion",
    "CriterionDefinition",
    "CriterionKind",
    "CriterionRef",
    "CriterionRegistry",
    "CriterionResolver",
    "CriterionResult",
    "CriterionSpecError",
    "CriterionUnavailableError",
    "DefinitionSource",
    "FailedCriterion",
    "InMemoryDefinitions",
    "JudgeCatalog",
    "JudgeModel",
    "JudgeReply",
    "OnScored",
    "RewardModelCatalog",
    "RewardModelCriterion",
    "RuleCatalog",
    "Scored",
    "UnknownCriterionError",
    "combine",
    "normalize_reward",
    "parse_criteria_header",
    "parse_criterion_id",
    "rank",
    "resolve_criteria",
    "score_all",
]

logger = logging.getLogger(__name__)

MAX_CRITERIA = 16
OnScored = Callable[[Criterion, float, Sequence[CriterionResult]], None]  # criterion, seconds, its results
_VERSION = re.compile(r"v([0-9]{1,9})")
_EXAMPLE = '["support-rm", "no-apologies@v2", {"id": "tone@v1", "weight": 2.0}]'


# ---------------------------------------------------------------- the header


def parse_criteria_header(value: str) -> list[CriterionRef]:
    """The `op-criteria` header as references; CriteriaHeaderError names the problem and the entry."""
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of more than 4,300 digits
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply or a number too long"
        raise CriteriaHeaderError(f"not valid JSON ({detail}); expected an array such as {_EXAMPLE}") from None
    if not isinstance(raw, list):
        raise CriteriaHeaderError(f"must be a JSON array of criterion ids, got {_json_type(raw)}; e.g. {_EXAMPLE}")
    if not raw:
        raise CriteriaHeaderError("the array is empty: name at least one criterion")
    if len(raw) > MAX_CRITERIA:
        raise CriteriaHeaderError(f"too many criteria: {len(raw)} (at most {MAX_CRITERIA})")
    refs: list[CriterionRef] = []
    seen: dict[str, int] = {}
    for position, entry in enumerate(raw):
        ref = _parse_entry(entry, position)
        if ref.slug in seen:
            raise CriteriaHeaderError(
                f"duplicate criterion {ref.slug!r} (also entry {seen[ref.slug]}): each slug may appear once",
                position=position,
                entry=entry,
            )
        seen[ref.slug] = position
        refs.append(ref)
    return refs


def parse_criterion_id(value: object, param: str) -> CriterionRef:
    """One criterion id (`slug` or `slug@vN`) given in the field `param`; CriteriaHeaderError names that field."""
    if not isinstance(value, str) or not value:
        raise CriteriaHeaderError("a criterion id ('slug' or 'slug@vN') is required", param=param)
    return _parse_entry(value, None, param)


def _parse_entry(entry: object, position: int | None, param: str = "op-criteria") -> CriterionRef:
    def bad(problem: str) -> CriteriaHeaderError:
        return CriteriaHeaderError(problem, position=position, entry=entry, param=param)

    weight: object = 1.0
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"id", "weight"})
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} in a criterion object (allowed: 'id', 'weight')")
        ident, weight = entry.get("id"), entry.get("weight", 1.0)
        if not isinstance(ident, str):
            raise bad(f"a criterion object needs a string 'id', got {_json_type(ident)}")
    elif isinstance(entry, str):
        ident = entry
    else:
        raise bad(f"an entry must be a string 'slug' or 'slug@vN' or an object with 'id', got {_json_type(entry)}")
    slug, at, version = ident.partition("@")
    if not SLUG.fullmatch(slug):
        raise bad(
            f"bad criterion slug {slug!r}: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    match = _VERSION.fullmatch(version)
    if at and match is None:  # OpenPipe's wording in parentheses: code written for its API looks for it
        raise bad(
            f"bad version {version!r} in {ident!r} (Criterion version {version} not found for criterion {slug}):"
            f" expected 'slug@vN', e.g. '{slug}@v2'"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise bad(f"weight must be a number, got {_json_type(weight)}")
    try:
        weight = float(weight)
    except OverflowError:
        raise bad("weight is out of range") from None
    if not math.isfinite(weight) or weight <= 0:
        raise bad(f"weight must be a finite number > 0, got {weight!r}")
    return CriterionRef(slug, int(match.group(1)) if match else None, weight)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# ---------------------------------------------------------------- resolution


async def resolve_criteria(
    refs: Sequence[CriterionRef], resolvers: Sequence[CriterionResolver]
) -> list[tuple[Criterion, float]]:
    """(criterion, weight) per reference, in header order; raises UnknownCriterionError for the first
    reference (in header order) that no kind knows. `resolvers` are asked in the order given: the registry's
    precedence order (CriterionRegistry.resolvers)."""
    kinds = [r.kind for r in resolvers]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"resolvers must be of distinct kinds, got {kinds}")
    answers = [await _resolve_one(ref, resolvers) for ref in refs]  # one after another: see _resolve_one
    resolved: list[tuple[Criterion, float]] = []
    for answer, ref in zip(answers, refs, strict=True):
        if isinstance(answer, UnknownCriterionError):
            raise answer
        resolved.append((answer, ref.weight))
    return resolved


async def _resolve_one(ref: CriterionRef, resolvers: Sequence[CriterionResolver]) -> Criterion | UnknownCriterionError:
    async def ask(resolver: CriterionResolver) -> Criterion | UnknownCriterionError | CriterionUnavailableError | None:
        try:
            return await resolver.resolve(ref)
        except (UnknownCriterionError, CriterionUnavailableError) as exc:
            return exc

    # One after another, not gathered: with warm caches (definitions, the reward server's listing) every resolver
    # answers without waiting, while each task is a turn through the event loop's ready queue, long under load (at
    # 32 concurrent best-of-N requests these turns were ~10 ms of each request: docs/BENCHMARKS.md, issue 17). Cold,
    # the kinds that read definitions share one store load (CachedDefinitions), so at most the listing waits.
    answers = [await ask(r) for r in resolvers]
    for answer in answers:
        if answer is not None and not isinstance(answer, Exception):
            return answer
    for answer in answers:
        if isinstance(answer, UnknownCriterionError):
            return answer
    for resolver, answer in zip(resolvers, answers, strict=True):
        if isinstance(answer, CriterionUnavailableError):
            version = None if ref.version is None else f"v{ref.version}"
            return FailedCriterion(ref.slug, version, resolver.kind, answer.error_code, answer.message)
    return UnknownCriterionError(ref.id)


# ---------------------------------------------------------------- scoring


async def score_all(
    criteria: Sequence[tuple[Criterion, float]],
    prompt: Sequence[Message],
    candidates: Sequence[Message | None],
    *,
    timeout_s: float | None = None,
    on_scored: OnScored | None = None,
) -> list[Scored]:
    """Score every produced candidate (None: the provider failed it) with every criterion, concurrently, and
    combine (see the module docstring). One Scored per candidate, in the provider's order; never raises for a
    criterion's failure. Order them with `rank`. `on_scored(criterion, seconds, results)` hears each criterion
    as it finishes (the service's metrics), so no wrapper around the criteria is needed to time them."""
    slugs = [criterion.slug for criterion, _ in criteria]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"criteria must have distinct slugs, got {slugs}")
    live = [i for i, candidate in enumerate(candidates) if candidate is not None]
    produced = [c for c in candidates if c is not None]
    per_criterion = await asyncio.gather(*(_guarded(c, prompt, produced, timeout_s, on_scored) for c, _ in criteria))
    weights = {criterion.slug: weight for criterion, weight in criteria}
    row = {index: j for j, index in enumerate(live)}
    out: list[Scored] = []
    for index, candidate in enumerate(candidates):
        if candidate is None:
            out.append(Scored(index, None, {}, failed=True))
            continue
        results = {slug: per_criterion[k][row[index]] for k, slug in enumerate(slugs)}
        combined, errors = combine(results, weights)
        out.append(Scored(index, combined, results, errors))
    return out


async def _guarded(
    criterion: Criterion,
    prompt: Sequence[Message],
    candidates: Sequence[Message],
    timeout_s: float | None,
    on_scored: OnScored | None,
) -> list[CriterionResult]:
    """The criterion's results, reported to `on_scored` with the time they took."""
    if not candidates:
        return []
    started = time.perf_counter()
    results = await _results(criterion, prompt, candidates, timeout_s)
    if on_scored is not None:
        on_scored(criterion, time.perf_counter() - started, results)
    return results


async def _results(
    criterion: Criterion, prompt: Sequence[Message], candidates: Sequence[Message], timeout_s: float | None
) -> list[CriterionResult]:
    """The criterion's results, or one error result per candidate: a criterion never fails the request."""

    def errors(code: str, message: str) -> list[CriterionResult]:
        return [CriterionResult.error(code, message, version=criterion.version) for _ in candidates]

    try:
        async with asyncio.timeout(timeout_s):
            results = await criterion.score(prompt, candidates)
    except TimeoutError:
        return errors("timeout", f"criterion {criterion.slug!r} did not finish within {timeout_s:g} s")
    except Exception as exc:  # a scorer's bug is logged and reported per candidate (DESIGN contract 4)
        logger.exception("criterion %s@%s failed", criterion.slug, criterion.version)
        return errors("criterion_error", f"criterion {criterion.slug!r} failed unexpectedly ({type(exc).__name__})")
    if len(results) != len(candidates):
        message = f"criterion {criterion.slug!r} returned {len(results)} results for {len(candidates)} candidates"
        logger.error(message)
        return errors("criterion_error", message)
    return list(results)
