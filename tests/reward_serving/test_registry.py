"""The model store: newest/pinned resolution, hot new versions, lazy load, LRU under a budget, broken models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.formats import Message, parse_message
from gateway.reward_serving.engine import torch_loader
from gateway.reward_serving.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from gateway.reward_serving.registry import ModelRef, ModelVersion, Registry, ScoreResult, parse_model_ref
from tests.tiny import save_reward_model

from .fakes import until

pytestmark = pytest.mark.anyio


class FakeServable:
    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.memory_bytes = int(version.card.get("fake_bytes", 100))
        self.queue_size = 0
        self.closed = False

    async def score(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> ScoreResult:
        return ScoreResult(tuple(float(self.version.version) for _ in conversations), 0)

    async def aclose(self) -> None:
        self.closed = True


class FakeLoader:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.servables: dict[str, FakeServable] = {}

    def __call__(self, version: ModelVersion) -> FakeServable:
        self.loaded.append(version.key)
        self.servables[version.key] = servable = FakeServable(version)
        return servable


def add_version(root: Path, slug: str, version: int, **card: Any) -> Path:
    folder = root / slug / f"v{version}"
    folder.mkdir(parents=True)
    (folder / "rewardgate.json").write_text(json.dumps({"slug": slug, "version": f"v{version}", **card}))
    return folder


async def lease_key(registry: Registry, ref: str) -> str:
    async with registry.lease(parse_model_ref(ref)) as (version, _):
        return version.key


def test_model_refs_parse_and_reject_paths() -> None:
    assert parse_model_ref("support-rm") == ModelRef("support-rm", None)
    assert parse_model_ref("support-rm@v12") == ModelRef("support-rm", 12)
    for bad in ("", "../etc", "a/b", "rm@2", "rm@v", "rm@vx", ".hidden"):
        with pytest.raises(InvalidRequestError) as caught:
            parse_model_ref(bad)
        assert caught.value.param == "model"


async def test_slug_means_newest_and_slug_at_version_pins(tmp_path: Path) -> None:
    for n in (1, 2, 10):
        add_version(tmp_path, "rm", n)
    registry = Registry(tmp_path, FakeLoader())
    assert await lease_key(registry, "rm") == "rm@v10"  # numeric order, not text order
    assert await lease_key(registry, "rm@v2") == "rm@v2"
    await registry.aclose()


async def test_unknown_slug_or_version_is_a_clear_404(tmp_path: Path) -> None:
    add_version(tmp_path, "rm", 1)
    registry = Registry(tmp_path, FakeLoader())
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        await lease_key(registry, "nope")
    with pytest.raises(ModelNotFoundError, match=r"no version v7 \(available: v1\)") as caught:
        await lease_key(registry, "rm@v7")
    assert caught.value.status == 404 and caught.value.param == "model"


async def test_a_new_version_is_served_without_restart(tmp_path: Path) -> None:
    add_version(tmp_path, "rm", 1)
    loader = FakeLoader()
    registry = Registry(tmp_path, loader)
    assert await lease_key(registry, "rm") == "rm@v1"
    (tmp_path / "rm" / "v3").mkdir()  # being written: no rewardgate.json yet, so not servable
    add_version(tmp_path, "rm", 2)
    assert await lease_key(registry, "rm") == "rm@v2"
    add_version(tmp_path, "late", 1)
    assert await lease_key(registry, "late") == "late@v1"
    assert loader.loaded == ["rm@v1", "rm@v2", "late@v1"]
    await registry.aclose()


async def test_models_load_lazily_and_once(tmp_path: Path) -> None:
    add_version(tmp_path, "rm", 1)
    loader = FakeLoader()
    registry = Registry(tmp_path, loader)
    assert loader.loaded == [] and registry.loaded() == []
    keys = await asyncio.gather(*(lease_key(registry, "rm") for _ in range(5)))
    assert keys == ["rm@v1"] * 5 and loader.loaded == ["rm@v1"]
    await registry.aclose()
    assert loader.servables["rm@v1"].closed


async def test_least_recently_used_models_unload_under_the_budget(tmp_path: Path) -> None:
    for slug in ("a", "b", "c"):
        add_version(tmp_path, slug, 1, fake_bytes=100)
    loader = FakeLoader()
    registry = Registry(tmp_path, loader, memory_budget_bytes=250)  # two models fit
    await lease_key(registry, "a")
    await lease_key(registry, "b")
    await lease_key(registry, "a")  # a is now more recent than b
    await lease_key(registry, "c")
    assert sorted(v.key for v, _ in registry.loaded()) == ["a@v1", "c@v1"]
    await until(lambda: loader.servables["b@v1"].closed)
    await lease_key(registry, "b")  # loads again, evicting a (least recently used)
    assert sorted(v.key for v, _ in registry.loaded()) == ["b@v1", "c@v1"]
    assert loader.loaded == ["a@v1", "b@v1", "c@v1", "b@v1"]
    await registry.aclose()


async def test_an_evicted_model_closes_only_after_its_requests_finish(tmp_path: Path) -> None:
    add_version(tmp_path, "a", 1)
    add_version(tmp_path, "b", 1)
    loader = FakeLoader()
    registry = Registry(tmp_path, loader, memory_budget_bytes=150)  # one model fits
    async with registry.lease(ModelRef("a")) as (_, servable_a):
        await lease_key(registry, "b")
        assert [v.key for v, _ in registry.loaded()] == ["b@v1"]
        assert not loader.servables["a@v1"].closed  # still in use
        assert await servable_a.score([()]) == ScoreResult((1.0,), 0)
    await until(lambda: loader.servables["a@v1"].closed)
    await registry.aclose()


async def test_a_broken_model_fails_clearly_and_the_others_keep_serving(tmp_path: Path) -> None:
    save_reward_model(tmp_path / "good" / "v1", "good", "v1")
    broken = add_version(tmp_path, "broken", 1, max_length=64)
    (broken / "config.json").write_text("{ not json")
    calls: list[str] = []
    load = torch_loader(device="cpu")

    def counting_loader(version: ModelVersion) -> Any:
        calls.append(version.key)
        return load(version)

    registry = Registry(tmp_path, counting_loader)
    with pytest.raises(ModelLoadError, match=r"broken@v1 failed to load from .*broken/v1") as caught:
        await lease_key(registry, "broken")
    assert caught.value.status == 500
    conversation = [
        parse_message({"role": "user", "content": "hi"}, "m"),
        parse_message({"role": "assistant", "content": "hello"}, "m"),
    ]
    async with registry.lease(ModelRef("good")) as (version, servable):
        result = await servable.score([conversation])
    assert version.key == "good@v1" and len(result.scores) == 1 and result.prompt_tokens > 0
    with pytest.raises(ModelLoadError):
        await lease_key(registry, "broken")
    assert calls == ["broken@v1", "good@v1"]  # the same broken directory is not loaded twice
    (broken / "config.json").write_text("{ still not json }")  # the directory changed: try again
    with pytest.raises(ModelLoadError):
        await lease_key(registry, "broken")
    assert calls == ["broken@v1", "good@v1", "broken@v1"]
    await registry.aclose()


async def test_an_unreadable_card_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "rm" / "v1"
    folder.mkdir(parents=True)
    (folder / "rewardgate.json").write_text("{ half written")
    registry = Registry(tmp_path, FakeLoader())
    with pytest.raises(ModelLoadError, match=r"rm@v1: rewardgate\.json unreadable"):
        await lease_key(registry, "rm")
    await registry.aclose()
