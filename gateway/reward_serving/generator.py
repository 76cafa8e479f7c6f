"""LocalGenerator: a causal-LM directory served as OpenAI-shaped chat completions, in process, on one worker thread.

Here because reward_serving/ is the one part of gateway/ that may import torch and transformers (DESIGN import
rules); the composition root hands `complete` to LiteLLM's custom provider `local` (gateway.upstream.providers). Owns
loading (bf16 on CUDA, float32 on CPU), the tokenizer's chat template, OpenAI's sampling parameters and usage.
All n samples of a request come from ONE `generate` call (num_return_sequences=n). Must not import the web layer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine import resolve_device
from .errors import InferenceError, InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI's chat-completions sampling fields, validated. temperature 0 is greedy decoding."""

    n: int = 1
    temperature: float = 1.0  # OpenAI's defaults, not the model's generation_config
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, params: Mapping[str, Any], default_max_tokens: int = 256) -> SamplingParams:
        """From a request's fields (unknown ones are ignored); InvalidRequestError names a bad one."""

        def number(name: str, default: float, low: float, high: float) -> float:
            value = params.get(name)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise InvalidRequestError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}", param=name)
            return float(value)

        def integer(name: str, default: int, low: int = 1) -> int:
            value = params.get(name)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidRequestError(f"{name} must be an integer of at least {low}, got {value!r}", param=name)
            return value

        n = integer("n", 1)
        max_tokens = integer("max_completion_tokens", 0) or integer("max_tokens", default_max_tokens)
        seed = integer("seed", -1, low=-(2**63)) if params.get("seed") is not None else None
        top_p = number("top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise InvalidRequestError("top_p must be greater than 0", param="top_p")
        stop = params.get("stop")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise InvalidRequestError("stop must be a string or a list of up to 4 non-empty strings", param="stop")
        return cls(n, number("temperature", 1.0, 0.0, 2.0), top_p, max_tokens, seed, stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop sequence (excluded), and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _text(content: object) -> str:
    """OpenAI message content (a string, null, or a list of parts) as text for a chat template."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


class _Cancelled:
    """A stopping criterion that ends every row once the request's caller has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LocalGenerator:
    """One causal LM with a chat template, loaded once (on `start`, or on first use) on its own worker thread."""

    def __init__(self, path: str | Path, *, device: str = "auto", default_max_tokens: int = 256) -> None:
        self.path = str(path)
        self.device = device
        self.default_max_tokens = default_max_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        # One thread: generate() is not safe to run concurrently on one model, and the event loop never waits on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-lm")

    def __repr__(self) -> str:
        return f"LocalGenerator(path={self.path!r}, device={self.device!r})"

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._model = self._tokenizer = None

    async def __aenter__(self) -> LocalGenerator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = resolve_device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model: Any = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=torch.bfloat16 if target.type == "cuda" else torch.float32
            )
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"local model {self.path!r} does not load: {err}") from err
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"local model {self.path!r}: the tokenizer has no chat template")
        eos = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
        self._eos = {int(i) for e in eos for i in (e if isinstance(e, list) else [e]) if i is not None}
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model.to(target).eval()
        logger.info("local model %s loaded on %s", self.path, target)

    async def complete(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        """`{"choices": [...], "usage": {...}}` for one chat request; n choices from one batched `generate`.
        Cancelling the caller stops the generation at its next token."""
        sampling = SamplingParams.from_request(params, self.default_max_tokens)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._complete, messages, sampling, cancelled)
        finally:
            cancelled.set()

    def _complete(
        self, messages: Sequence[Mapping[str, Any]], sampling: SamplingParams, cancelled: threading.Event
    ) -> dict[str, Any]:
        """Blocking: the worker thread."""
        self._load()
        tokenizer, model = self._tokenizer, self._model
        chat = [{**m, "content": _text(m.get("content"))} for m in messages]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
        prompt_tokens = int(ids.shape[1])
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        max_new = min(sampling.max_tokens, context - prompt_tokens) if context else sampling.max_tokens
        if max_new < 1:
            raise InvalidRequestError(f"the prompt's {prompt_tokens} tokens fill the model's context", param="messages")
        greedy = sampling.temperature == 0.0
        options: dict[str, Any] = {"do_sample": False}
        if not greedy:
            options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # only this thread samples, so the global generator is ours
        try:
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new,
                    min_new_tokens=0,
                    num_return_sequences=1 if greedy else sampling.n,  # greedy rows would all be the same
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(self._eos) or None,
                    stopping_criteria=[_Cancelled(cancelled)],
                    **options,
                )
        except (RuntimeError, ValueError) as err:
            raise InferenceError(f"local model generation failed: {err}") from err
        rows = out[:, prompt_tokens:].tolist()
        choices = [self._choice(i, rows[0 if greedy else i], sampling.stop) for i in range(sampling.n)]
        completion_tokens = sum(tokens for _, tokens in choices)
        return {
            "choices": [choice for choice, _ in choices],
            "usage": {
                "prompt_tokens": prompt_tokens,  # counted once for all n, as OpenAI does
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _choice(self, index: int, row: list[int], stops: Sequence[str]) -> tuple[dict[str, Any], int]:
        """One generated row -> (an OpenAI choice, its completion tokens: up to and including the first EOS)."""
        end = next((k for k, token in enumerate(row) if token in self._eos), None)
        if end is not None:
            row, finish = row[: end + 1], "stop"
        else:
            pad = self._tokenizer.pad_token_id
            while row and row[-1] == pad:  # a row a stop string ended early, padded to the batch's width
                row = row[:-1]
            finish = "length"
        text, stopped = cut_at_stop(self._tokenizer.decode(row, skip_special_tokens=True), stops)
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "finish_reason": "stop" if stopped else finish}, len(row)
