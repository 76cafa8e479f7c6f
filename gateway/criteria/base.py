"""The criteria vocabulary: references, results, the `Criterion` and `CriterionResolver` protocols, the pure
combination rule, and the exception tree. Pure: no I/O, no httpx.

May import only gateway.formats (DESIGN.md import rules).

    CriteriaError(ValueError)          400 for the whole request: the op-criteria header cannot be honoured
     ├── CriteriaHeaderError           malformed header; names the problem and the entry
     └── UnknownCriterionError         unknown slug, or unknown version of a known slug; names the id
    CriterionUnavailableError          a resolver could not answer (e.g. reward server down); never reaches the
                                       client: the criterion scores as errors instead (see resolve_criteria)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.formats import Message

# ---------------------------------------------------------------- errors


class CriteriaError(ValueError):
    """The criteria a request names cannot be honoured; the whole request fails with 400. `param` is the input
    at fault: the `op-criteria` header, or the field that named one criterion (`criterion_id`)."""

    param: str = "op-criteria"


class CriteriaHeaderError(CriteriaError):
    """The header (or one criterion id) is malformed; the message names the problem and the entry."""

    def __init__(
        self, problem: str, *, position: int | None = None, entry: object = None, param: str = "op-criteria"
    ) -> None:
        where = param if position is None else f"{param}[{position}]"
        super().__init__(f"{where}: {problem}" + ("" if entry is None else f" (entry {entry!r})"))
        self.problem = problem
        self.position = position
        self.entry = entry
        self.param = param


class UnknownCriterionError(CriteriaError):
    """No criterion of any kind has this slug, or the slug has no such version."""

    def __init__(self, criterion_id: str, *, available: Sequence[str] = (), param: str = "op-criteria") -> None:
        # OpenPipe's wording after the colon: code written for its API looks for it
        slug, _, version = criterion_id.partition("@")
        if available:
            message = (
                f"unknown criterion version {criterion_id!r} (available versions: {', '.join(available)}): "
                f"Criterion version {version} not found for criterion {slug}"
            )
        else:
            message = f"unknown criterion {criterion_id!r}: Criterion {criterion_id} not found"
        super().__init__(message)
        self.criterion_id = criterion_id
        self.available = tuple(available)
        self.param = param


class CriterionUnavailableError(Exception):
    """A resolver could not tell whether it knows a criterion (its backend is down or answered garbage)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


# ---------------------------------------------------------------- references and results


@dataclass(frozen=True, slots=True)
class CriterionRef:
    """One entry of the header: `slug` (newest version) or `slug@vN`, with its weight in the combined score."""

    slug: str
    version: int | None = None
    weight: float = 1.0

    @property
    def id(self) -> str:
        return self.slug if self.version is None else f"{self.slug}@v{self.version}"


@dataclass(frozen=True, slots=True)
class CriterionResult:
    """One criterion on one candidate. `score` is what the criterion reports (a reward model's raw reward, a
    judge's 0..1); `normalized` is the 0..1 value the combination rule uses. Build with `success` / `error`."""

    status: Literal["success", "error"]
    version: str | None
    score: float | None = None
    normalized: float | None = None
    explanation: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: Mapping[str, int] | None = None  # tokens a judge spent: {"prompt_tokens": p, "completion_tokens": c}

    def __post_init__(self) -> None:
        if self.status == "success":
            if self.score is None or not math.isfinite(self.score):
                raise ValueError(f"a successful result needs a finite score, got {self.score!r}")
            if self.normalized is None or not 0.0 <= self.normalized <= 1.0:
                raise ValueError(f"a successful result needs a normalized score in 0..1, got {self.normalized!r}")
        elif not self.error_code:
            raise ValueError("an error result needs an error code")

    @classmethod
    def success(
        cls,
        score: float,
        *,
        version: str | None,
        explanation: str | None = None,
        normalized: float | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> CriterionResult:
        """`normalized` defaults to `score`: judge and rule scores are already on the 0..1 scale."""
        return cls("success", version, score, score if normalized is None else normalized, explanation, usage=usage)

    @classmethod
    def error(
        cls, code: str, message: str, *, version: str | None, usage: Mapping[str, int] | None = None
    ) -> CriterionResult:
        return cls("error", version, error_code=code, error_message=message, usage=usage)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_json(self) -> dict[str, Any]:
        """OpenPipe's `criteria_results` entry plus the version that scored it."""
        if self.status == "success":
            return {"status": "success", "score": self.score, "explanation": self.explanation, "version": self.version}
        return {
            "status": "error",
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Scored:
    """One candidate after scoring. `score` is the combined 0..1 score, None when nothing scored it;
    `failed` marks a candidate the provider did not produce (never scored, ranked last)."""

    index: int
    score: float | None
    results: Mapping[str, CriterionResult]
    criteria_errors: int = 0
    failed: bool = False

    def criteria_results(self) -> dict[str, dict[str, Any]]:
        return {slug: result.to_json() for slug, result in self.results.items()}


# ---------------------------------------------------------------- protocols


class Criterion(Protocol):
    """A resolved scorer: one slug at one version. `score` returns one result per candidate, in order; it
    should report its own failures as error results (score_all also guards it, and never raises)."""

    @property
    def slug(self) -> str: ...

    @property
    def version(self) -> str | None: ...  # "v3"; None only when resolution itself failed

    @property
    def kind(self) -> str: ...  # a key of CRITERION_KINDS

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]: ...


class CriterionResolver(Protocol):
    """Turns a header reference into a criterion of its kind. Returns None for a slug it does not know; raises
    UnknownCriterionError for a known slug without that version, CriterionUnavailableError when it cannot tell."""

    @property
    def kind(self) -> str: ...

    async def resolve(self, ref: CriterionRef) -> Criterion | None: ...


@dataclass(frozen=True, slots=True)
class FailedCriterion:
    """A criterion whose resolution failed (its backend was down): every candidate gets the same error result."""

    slug: str
    version: str | None
    kind: str
    error_code: str
    error_message: str

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        return [CriterionResult.error(self.error_code, self.error_message, version=self.version) for _ in candidates]


# ---------------------------------------------------------------- the combination rule (pure)


def sigmoid(z: float) -> float:
    # Two branches so that exp() never overflows for large |z|.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def normalize_reward(raw: float, mean: float | None, std: float | None) -> tuple[float, float]:
    """(z, sigmoid(z)) with z = (raw - mean) / std: a raw reward on the 0..1 scale of judge scores.

    Missing or unusable stats (no reward_stats, std <= 0, non-finite) fall back to mean 0, std 1."""
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        mean, std = 0.0, 1.0
    z = (raw - mean) / std
    return z, sigmoid(z)


def combine(results: Mapping[str, CriterionResult], weights: Mapping[str, float]) -> tuple[float | None, int]:
    """(combined score, errored criteria): the weighted mean of the successful results' normalized scores.

    An errored criterion is left out of the mean (not counted as 0); when every criterion errored the combined
    score is None. A slug missing from `weights` weighs 1."""
    total = weighed = 0.0
    errors = 0
    for slug, result in results.items():
        if result.ok and result.normalized is not None:
            weight = weights.get(slug, 1.0)
            total += weight * result.normalized
            weighed += weight
        else:
            errors += 1
    return (total / weighed if weighed > 0 else None), errors


def rank(scored: Sequence[Scored]) -> list[int]:
    """Positions in `scored`, best first: combined score descending, ties in the provider's order; then the
    candidates nothing could score; then the candidates the provider failed to produce."""

    def key(position: int) -> tuple[int, float, int]:
        item = scored[position]
        if item.failed:
            return (2, 0.0, item.index)
        if item.score is None:
            return (1, 0.0, item.index)
        return (0, -item.score, item.index)

    return sorted(range(len(scored)), key=key)
