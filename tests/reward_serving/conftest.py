"""Fixtures shared by the reward-server tests: a model store of tiny models, the asyncio backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import save_reward_model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only model store: tiny-rm v1 and v2 (llama, chat template), bert-rm v1 (plain encoder)."""
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", kind="llama", seed=0)
    save_reward_model(root / "tiny-rm" / "v2", "tiny-rm", "v2", kind="llama", seed=1)
    save_reward_model(root / "bert-rm" / "v1", "bert-rm", "v1", kind="bert", seed=2)
    return root
