"""Every gateway Prometheus metric, prefix `rewardgate_`, in a CollectorRegistry owned by one app (no global one).

Named in the style of vLLM's and TEI's. Labels stay low-cardinality: route templates, status codes, provider names,
criterion slugs, candidate outcomes and criterion error codes. Must not import starlette, torch or reward_serving.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SCORE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
JOB_STATES = ("PENDING", "QUEUED", "TRAINING", "DEPLOYED", "ERROR")
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rewardgate_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "rewardgate_request_duration_seconds",
            "HTTP request latency (to the first byte of streams) by route and status.",
            ["route", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "rewardgate_overhead_seconds",
            "Gateway overhead of a chat completion: total minus upstream minus scoring, by mode.",
            ["mode"],
            buckets=_OVERHEAD,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "rewardgate_upstream_duration_seconds",
            "Upstream call latency by provider (retries included).",
            ["provider"],
            buckets=_LATENCY,
            registry=r,
        )
        self.candidates = Counter(
            "rewardgate_candidates", "Best-of-N candidates by outcome (generated, failed).", ["outcome"], registry=r
        )
        self.scoring_duration = Histogram(
            "rewardgate_scoring_duration_seconds",
            "Time to score all candidates of one request with all its criteria.",
            buckets=_LATENCY,
            registry=r,
        )
        self.criterion_duration = Histogram(
            "rewardgate_criterion_duration_seconds",
            "Latency of one criterion scoring all candidates of a request, by criterion slug.",
            ["criterion"],
            buckets=_LATENCY,
            registry=r,
        )
        self.criterion_errors = Counter(
            "rewardgate_criterion_errors",
            "Error results by criterion slug and error code.",
            ["criterion", "code"],
            registry=r,
        )

        self.criterion_score = Histogram(
            "rewardgate_criterion_score",
            "Normalized (0..1) scores of successful criterion results, by criterion slug.",
            ["criterion"],
            buckets=_SCORE,
            registry=r,
        )
        self.training_jobs = Gauge("rewardgate_training_jobs", "Training jobs by state.", ["state"], registry=r)
        self.cache_lookups = Counter(
            "rewardgate_cache_lookups",
            "Response-cache lookups (op-cache: readWrite, readOnly) by outcome: hit or miss.",
            ["outcome"],
            registry=r,
        )
        self.cache_writes = Counter(
            "rewardgate_cache_writes",
            "Responses written to the response cache (op-cache: readWrite, writeOnly).",
            registry=r,
        )

        self.bon_tokens = Counter(
            "rewardgate_bon_tokens",
            "Budgeted best-of-N (op-bon) completion tokens by strategy and kind: generated, plain (what plain "
            "best-of-N would have generated, estimated), saved (plain minus generated).",
            ["strategy", "kind"],
            registry=r,
        )
        self.bon_rejected = Counter(
            "rewardgate_bon_rejected_candidates",
            "Candidates that early rejection cancelled part-way.",
            registry=r,
        )
        self.bon_fallbacks = Counter(
            "rewardgate_bon_fallbacks",
            "op-bon requests that ran plain best-of-N because partial scores do not predict final ones.",
            registry=r,
        )

    def record_budget(
        self, strategy: str, *, generated: int, plain: int, saved: int, rejected: int, fallback: bool
    ) -> None:
        self.bon_tokens.labels(strategy, "generated").inc(generated)
        self.bon_tokens.labels(strategy, "plain").inc(plain)
        self.bon_tokens.labels(strategy, "saved").inc(saved)
        self.bon_rejected.inc(rejected)
        if fallback:
            self.bon_fallbacks.inc()

    def set_training_jobs(self, counts: Mapping[str, int]) -> None:
        for state in JOB_STATES:
            self.training_jobs.labels(state).set(counts.get(state, 0))

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_duration.labels(route, str(status)).observe(seconds)

    def record_overhead(self, mode: str, seconds: float) -> None:
        self.overhead.labels(mode).observe(max(0.0, seconds))

    def record_upstream(self, provider: str, seconds: float) -> None:
        self.upstream_duration.labels(provider).observe(seconds)

    def record_candidates(self, generated: int, failed: int) -> None:
        self.candidates.labels("generated").inc(generated)
        self.candidates.labels("failed").inc(failed)

    def record_criterion(self, slug: str, seconds: float, error_codes: list[str], scores: list[float]) -> None:
        self.criterion_duration.labels(slug).observe(seconds)
        for code in error_codes:
            self.criterion_errors.labels(slug, code).inc()
        for score in scores:
            self.criterion_score.labels(slug).observe(score)

    def record_cache_lookup(self, *, hit: bool) -> None:
        self.cache_lookups.labels("hit" if hit else "miss").inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
