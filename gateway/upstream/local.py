"""The in-process `local` provider: LiteLLM's custom-provider mechanism. `register_local_models` puts a `CustomLLM` in
`litellm.custom_provider_map` that answers `local/<name>` with an injected in-process generator (the composition root
injects gateway.reward_serving.generator's), so `local:smollm2` goes through the same LiteLLMProvider path as any
other provider, with native `n`. Must not import starlette, torch, transformers or trainer.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from .providers import ProviderConfig, import_acompletion

LOCAL_PROVIDER = "local"
# An in-process chat model: (messages, OpenAI sampling params) -> {"choices": [...], "usage": {...}}. Exceptions with
# an int `status` below 500 (a bad parameter: 400) keep it; anything else is the model's failure.
LocalComplete = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], Awaitable[dict[str, Any]]]


def local_provider_config() -> ProviderConfig:
    """`local:<name>` -> LiteLLM's `local/<name>`; the generator samples all n in one batched call."""
    return ProviderConfig(LOCAL_PROVIDER, "litellm", native_n=True)


def local_handler(models: Mapping[str, LocalComplete]) -> Any:
    """A `litellm.CustomLLM` serving `models` by name. The class is made here, not at module level, because
    subclassing CustomLLM imports LiteLLM, which nothing in gateway/ does at import."""
    import litellm
    from litellm.llms.custom_llm import CustomLLM, CustomLLMError
    from litellm.types.utils import GenericStreamingChunk

    error: Callable[[int, str], Exception] = CustomLLMError  # LiteLLM maps its status_code to openai's error classes

    async def run(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        complete = models.get(model)
        if complete is None:
            raise error(404, f"local model {model!r} is not served; served: {sorted(models)}")
        try:
            return await complete(messages, params)
        except Exception as err:  # our generator's errors carry their HTTP status; LiteLLM maps CustomLLMError's
            status = getattr(err, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                raise error(status, str(err)) from err
            raise

    class LocalLLM(CustomLLM):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            model = kwargs["model"]
            result = await run(model, kwargs["messages"], kwargs.get("optional_params") or {})
            return litellm.ModelResponse(
                id="chatcmpl-local-" + secrets.token_hex(12),
                created=int(time.time()),
                model=model,
                choices=result["choices"],
                usage=result["usage"],
            )

        # An async generator, as LiteLLM calls it; its base class declares a coroutine returning one.
        async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
            # Generated whole, then sent as one chunk: streaming works, it just does not stream token by token.
            params = {**(kwargs.get("optional_params") or {}), "n": 1}
            result = await run(kwargs["model"], kwargs["messages"], params)
            choice = result["choices"][0]
            yield GenericStreamingChunk(
                text=choice["message"]["content"],
                is_finished=True,
                finish_reason=choice["finish_reason"],
                usage=result["usage"],
                index=0,
                tool_use=None,
            )

    return LocalLLM()


def register_local_models(models: Mapping[str, LocalComplete]) -> Callable[[], None]:
    """Route LiteLLM's `local/<name>` to `models[name]`; returns the undo. Imports LiteLLM: call it off the loop."""
    import_acompletion()  # LiteLLM's import-time settings, as for every other LiteLLM call
    import litellm

    handler = local_handler(models)
    litellm.custom_provider_map = [
        *(item for item in litellm.custom_provider_map if item["provider"] != LOCAL_PROVIDER),
        {"provider": LOCAL_PROVIDER, "custom_handler": handler},
    ]

    def unregister() -> None:
        litellm.custom_provider_map = [i for i in litellm.custom_provider_map if i["custom_handler"] is not handler]

    return unregister
