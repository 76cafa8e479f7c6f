"""What a provider call costs in US dollars, by LiteLLM's bundled price map (never fetched: the local copy that
ships with the installed LiteLLM, so prices are as of that release). Used where the gateway compares an LLM judge
with a reward model (`rewardgate distill`). Imports LiteLLM lazily; nothing above the upstream layer.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.upstream.router import split_model_name


def token_prices(model: str) -> tuple[float, float] | None:
    """(USD per prompt token, USD per completion token) of `provider:model`, `provider/model` or a bare name; None
    for a model the map does not price (a local model, a self-hosted endpoint, an unknown name)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before the import: never fetch the map
    import litellm

    provider, name = split_model_name(model)
    prices: dict[str, Any] = litellm.model_cost
    for key in (f"{provider}/{name}" if provider else name, name):
        entry = prices.get(key)
        if entry and "input_cost_per_token" in entry and "output_cost_per_token" in entry:
            return float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"])
    return None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    prices = token_prices(model)
    if prices is None:
        return None
    return prompt_tokens * prices[0] + completion_tokens * prices[1]
