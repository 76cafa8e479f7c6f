"""The reward server's Prometheus metrics, prefix `rewardgate_rm_`, named after vLLM's and TEI's.

Owns the exporter only: the batcher and registry report plain stats (BatchStats, load events) and this
module turns them into series in a CollectorRegistry owned by one app (no global registry).
Must not import torch, the engines or the gateway's metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .batcher import BatchStats
from .registry import ModelVersion

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class RewardServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rewardgate_rm_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "rewardgate_rm_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.scoring_duration = Histogram(
            "rewardgate_rm_scoring_duration_seconds",
            "Time to score one request: model load wait, tokenizing, queue, forward passes.",
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_size = Gauge("rewardgate_rm_queue_size", "Score requests admitted and not finished.", registry=r)
        self.queue_duration = Histogram(
            "rewardgate_rm_queue_duration_seconds",
            "Wait of a batch's oldest request before its forward pass.",
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_duration = Histogram(
            "rewardgate_rm_batch_inference_duration_seconds",
            "Forward pass time per batch.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "rewardgate_rm_batch_size", "Conversations per forward pass.", buckets=_COUNTS, registry=r
        )
        self.batch_requests = Histogram(
            "rewardgate_rm_batch_requests",
            "Client requests merged per forward pass.",
            buckets=_COUNTS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "rewardgate_rm_batch_tokens",
            "Real (unpadded) tokens per forward pass.",
            buckets=_TOKENS,
            registry=r,
        )
        self.batch_padded_tokens = Histogram(
            "rewardgate_rm_batch_padded_tokens",
            "Padded tokens (rows x longest row) per forward pass.",
            buckets=_TOKENS,
            registry=r,
        )
        self.conversations = Counter("rewardgate_rm_scored_conversations", "Conversations scored.", registry=r)
        self.prompt_tokens = Counter("rewardgate_rm_prompt_tokens", "Tokens scored.", registry=r)
        self.loaded_models = Gauge("rewardgate_rm_loaded_models", "Model versions loaded.", registry=r)
        self.loaded_bytes = Gauge(
            "rewardgate_rm_loaded_model_bytes", "Parameter bytes of the loaded models.", registry=r
        )
        self.model_loads = Counter(
            "rewardgate_rm_model_loads", "Model loads by outcome (success, error).", ["outcome"], registry=r
        )
        self.model_load_duration = Histogram(
            "rewardgate_rm_model_load_duration_seconds", "Model load time.", buckets=_LATENCY, registry=r
        )

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_duration.labels(route, str(status)).observe(seconds)

    def record_scoring(self, conversations: int, tokens: int, seconds: float) -> None:
        self.conversations.inc(conversations)
        self.prompt_tokens.inc(tokens)
        self.scoring_duration.observe(seconds)

    def record_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_requests.observe(stats.requests)
        self.batch_tokens.observe(stats.tokens)
        self.batch_padded_tokens.observe(stats.padded_tokens)
        self.queue_duration.observe(stats.queue_seconds)
        self.inference_duration.observe(stats.inference_seconds)

    def record_load(self, version: ModelVersion, seconds: float, ok: bool) -> None:
        self.model_loads.labels("success" if ok else "error").inc()
        self.model_load_duration.observe(seconds)

    def set_state(self, *, queue_size: int, loaded_models: int, loaded_bytes: int) -> None:
        self.queue_size.set(queue_size)
        self.loaded_models.set(loaded_models)
        self.loaded_bytes.set(loaded_bytes)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
