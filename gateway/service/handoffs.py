"""The frozen hand-offs of the chat pipeline: the request the API parsed (`ChatRequest`, with `BestOfN` when
`op-criteria` is set, its budgeted strategy from `op-bon` (`EarlyRejection`, `AdaptiveN`), and its `CachePolicy`)
and the results the service returns (`Passthrough`, `Ranked` with its `BudgetReport` when a strategy ran, and
`Replayed` for a best-of-N answer from the response cache). Pure data: imports only the criteria vocabulary, formats
and the store's records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.criteria import CriterionRef, Scored
from gateway.formats import Message
from gateway.store import LogRecord
from gateway.upstream.router import Candidate, CandidateError


@dataclass(frozen=True)
class EarlyRejection:
    """`op-bon: {"strategy": "early_rejection", ...}`: the n candidates stream; at each checkpoint (tokens per
    candidate) the partial answers are scored and all but the best `keep` fraction (at least `min_keep`) are
    cancelled. `checkpoints` and `keep` both left out (None): the setting the calibration file measured for the
    request's reward model (gateway.service.budget.Calibration.plan), else DEFAULT_CHECKPOINTS and DEFAULT_KEEP."""

    checkpoints: tuple[int, ...] | None = None
    keep: float | None = None
    min_keep: int = 1

    DEFAULT_CHECKPOINTS = (16, 32, 64)
    DEFAULT_KEEP = 0.5

    strategy = "early_rejection"


@dataclass(frozen=True)
class AdaptiveN:
    """`op-bon: {"strategy": "adaptive", ...}`: candidates come `per_round` at a time until the best combined
    score reaches `threshold`, n candidates were asked for, or a budget (generated tokens, seconds) is spent."""

    per_round: int = 2
    threshold: float = 0.7
    max_tokens: int | None = None
    max_latency_s: float | None = None

    strategy = "adaptive"


BudgetPolicy = EarlyRejection | AdaptiveN


@dataclass(frozen=True)
class BestOfN:
    """What `op-criteria` asks for, parsed: the criteria, n, and whether only the best choice goes back; the
    budgeted strategy of `op-bon` (None: plain best-of-N, every candidate whole)."""

    criteria: tuple[CriterionRef, ...]
    n: int
    best_only: bool
    prompt: tuple[Message, ...]  # the request's messages, as the criteria read them
    budget: BudgetPolicy | None = None


@dataclass(frozen=True)
class CachePolicy:
    """What `op-cache` asks of the response cache: read an earlier identical request's answer, write this one's.
    OpenPipe's values: readWrite (both), readOnly, writeOnly, false (neither: the default)."""

    read: bool = False
    write: bool = False


NO_CACHE = CachePolicy()


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion as the API parsed it: every field checked, nothing left to refuse."""

    model: str
    raw: Mapping[str, Any]  # the body as received: what a log stores
    upstream: Mapping[str, Any]  # the body for the upstream: the gateway's own fields removed
    stream: bool
    include_usage: bool  # stream_options.include_usage
    metadata: Mapping[str, str] | None  # validated; None when the request is not to be stored
    started: float  # perf_counter at arrival, before the body was read
    best_of_n: BestOfN | None = None  # None: pass-through
    cache: CachePolicy = NO_CACHE


@dataclass(frozen=True)
class Passthrough:
    """A pass-through answer: the upstream's completion as it came, and its log when stored."""

    response: Mapping[str, Any]
    upstream_s: float
    log: LogRecord | None
    cache_hit: bool = False  # `response` came from the response cache: no upstream call


@dataclass(frozen=True)
class BudgetReport:
    """What a budgeted strategy spent, per request. `plain_tokens` estimates what plain best-of-N would have
    generated: n x the mean completion tokens of the candidates that finished on their own (not rejected)."""

    strategy: str  # the strategy that ran: "early_rejection", "adaptive", or "best_of_n" after a fallback
    requested: str  # the strategy op-bon asked for
    generated_tokens: int  # completion tokens the upstream generated for every candidate, rejected ones included
    plain_tokens: int
    tokens: Mapping[int, int]  # candidate index -> its completion tokens
    rejected_at: Mapping[int, int]  # candidate index -> the tokens it had when its partial answer was scored
    checkpoints: tuple[int, ...] = ()  # the checkpoints used (after calibration)
    rounds: int = 1
    fallback: str | None = None  # why plain best-of-N ran instead
    keep: float | None = None  # early rejection's keep fraction
    setting: str | None = None  # where early rejection's checkpoints and keep came from (Calibration.plan)

    @property
    def tokens_saved(self) -> int:
        return max(0, self.plain_tokens - self.generated_tokens)


@dataclass(frozen=True)
class Ranked:
    """A best-of-N answer: every candidate in the provider's order with its scores, the ranking, and the log."""

    id: str
    created: int
    request: ChatRequest
    candidates: tuple[Candidate | CandidateError, ...]
    scored: tuple[Scored, ...]  # one per candidate, same order
    order: tuple[int, ...]  # candidate positions, best first
    versions: Mapping[str, str | None]  # {slug: version} of every criterion that scored
    upstream_s: float
    scoring_s: float
    log: LogRecord | None
    budget: BudgetReport | None = None  # what an op-bon strategy generated, rejected and saved

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting on others (upstream and criteria): what the overhead metric subtracts."""
        return self.upstream_s + self.scoring_s


@dataclass(frozen=True)
class Replayed:
    """A best-of-N answer from the response cache: the ranked completion an identical earlier request got (every
    choice, no log fields), and this request's log when stored. No upstream call, no scoring."""

    completion: Mapping[str, Any]
    request: ChatRequest
    log: LogRecord | None
    waited_s: float = 0.0  # nothing waited on: the overhead metric counts the whole request


@dataclass(frozen=True)
class Reported:
    """A chat completion the client made elsewhere and reports (OpenPipe's POST /report), as the API parsed it."""

    model: str  # reqPayload.model ("" when the payload names none)
    request: Mapping[str, Any]  # reqPayload as sent ({} when none)
    response: Mapping[str, Any] | None  # respPayload as sent
    error: str | None  # why the call failed (a status >= 400 or an errorMessage); None when it did not
    latency_ms: float | None  # receivedAt - requestedAt
    metadata: Mapping[str, str]  # validated
