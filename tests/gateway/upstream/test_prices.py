"""gateway/upstream/prices.py: LiteLLM's bundled price map, by the gateway's model names."""

from __future__ import annotations

import pytest

from gateway.upstream.prices import cost_usd, token_prices


def test_prices_by_openpipe_litellm_and_bare_names() -> None:
    expected = (0.15e-6, 0.6e-6)  # gpt-4o-mini, USD per token, as LiteLLM's bundled map has it
    for name in ("openai:gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini"):
        assert token_prices(name) == pytest.approx(expected)
    assert cost_usd("openai:gpt-4o-mini", 1000, 100) == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)


def test_models_without_a_price_have_none() -> None:
    assert token_prices("local:smollm2") is None and token_prices("fake:judge") is None
    assert cost_usd("no-such-model-anywhere", 10, 10) is None
