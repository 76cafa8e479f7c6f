"""The model store: `slug[@vN]` -> `<models_dir>/<slug>/v<N>/`, lazy loading, LRU unloading under a budget.

Owns name resolution (each resolve re-reads the slug's folder, so a version the trainer adds is servable
at once), one load per version off the event loop, failed loads remembered until their directory changes,
and eviction with leases (an unloaded model closes once its in-flight requests finish).
Must not import torch or an engine: the loader that turns a directory into a `Servable` is injected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.formats import Message

from .errors import InvalidRequestError, ModelLoadError, ModelNotFoundError, UnavailableError

logger = logging.getLogger(__name__)

CARD_FILE = "rewardgate.json"  # written last by the trainer: a version folder without it is not servable yet
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"v([0-9]{1,9})")


@dataclass(frozen=True)
class ScoreResult:
    scores: tuple[float, ...]
    prompt_tokens: int


class Servable(Protocol):
    """A loaded model that scores conversations: the torch engine behind a batcher, or vLLM."""

    @property
    def memory_bytes(self) -> int: ...

    @property
    def queue_size(self) -> int: ...

    async def score(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> ScoreResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ModelRef:
    slug: str
    version: int | None = None  # None: the newest

    def __str__(self) -> str:
        return self.slug if self.version is None else f"{self.slug}@v{self.version}"


def parse_model_ref(text: str) -> ModelRef:
    """`slug` or `slug@vN`; anything else (paths included) is a 400 naming `model`."""
    slug, _, version = text.partition("@")
    if not _SLUG.fullmatch(slug) or (version and not _VERSION.fullmatch(version)):
        raise InvalidRequestError(f"model: expected 'slug' or 'slug@vN', got {text!r}", param="model")
    return ModelRef(slug, int(version[1:]) if version else None)


@dataclass(frozen=True)
class ModelVersion:
    slug: str
    version: int
    path: Path
    card: Mapping[str, Any] = field(default_factory=dict, compare=False)
    card_error: str | None = None  # rewardgate.json present but unreadable: loading it fails clearly

    @property
    def name(self) -> str:
        return f"v{self.version}"

    @property
    def key(self) -> str:
        return f"{self.slug}@v{self.version}"


Loader = Callable[[ModelVersion], Servable]  # blocking; the registry runs it on a thread


@dataclass(eq=False)
class _Entry:
    version: ModelVersion
    servable: Servable
    leases: int = 0
    evicted: bool = False


class Registry:
    def __init__(
        self,
        models_dir: str | os.PathLike[str],
        loader: Loader,
        *,
        memory_budget_bytes: int | None = None,
        on_load: Callable[[ModelVersion, float, bool], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self._loader = loader
        self._budget = memory_budget_bytes
        self._on_load = on_load
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Task[_Entry]] = {}
        self._failed: dict[str, tuple[tuple[tuple[str, int, int], ...], ModelLoadError]] = {}
        self._cards: dict[Path, tuple[int, dict[str, Any] | str]] = {}  # rewardgate.json by mtime
        self._closers: set[asyncio.Task[None]] = set()
        self._closing = False

    # ------------------------------------------------------------ the store on disk

    def versions(self, slug: str) -> list[ModelVersion]:
        """Servable versions of `slug`, oldest first, read from disk now."""
        folder = self.models_dir / slug
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in entries:
            match = _VERSION.fullmatch(entry.name)
            card_path = Path(entry.path) / CARD_FILE
            if match and entry.is_dir() and card_path.is_file():
                card = self._read_card(card_path)
                version = int(match.group(1))
                if isinstance(card, str):
                    out.append(ModelVersion(slug, version, Path(entry.path), {}, card))
                else:
                    out.append(ModelVersion(slug, version, Path(entry.path), card))
        return sorted(out, key=lambda v: v.version)

    def all_versions(self) -> list[ModelVersion]:
        try:
            slugs = sorted(e.name for e in os.scandir(self.models_dir) if e.is_dir() and _SLUG.fullmatch(e.name))
        except FileNotFoundError:
            return []
        return [v for slug in slugs for v in self.versions(slug)]

    def resolve(self, ref: ModelRef) -> ModelVersion:
        versions = self.versions(ref.slug)
        if not versions:
            raise ModelNotFoundError(f"model '{ref.slug}' not found in the model store")
        if ref.version is None:
            return versions[-1]
        for version in versions:
            if version.version == ref.version:
                return version
        have = ", ".join(v.name for v in versions)
        raise ModelNotFoundError(f"model '{ref.slug}' has no version v{ref.version} (available: {have})")

    def _read_card(self, path: Path) -> dict[str, Any] | str:
        mtime = path.stat().st_mtime_ns
        cached = self._cards.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        card: dict[str, Any] | str
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            card = loaded if isinstance(loaded, dict) else f"{CARD_FILE} is not a JSON object"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            card = f"{CARD_FILE} unreadable: {exc}"
        self._cards[path] = (mtime, card)
        return card

    # ------------------------------------------------------------ loaded models

    def loaded(self) -> list[tuple[ModelVersion, Servable]]:
        return [(e.version, e.servable) for e in self._entries.values()]

    def queue_size(self) -> int:
        return sum(e.servable.queue_size for e in self._entries.values())

    @asynccontextmanager
    async def lease(self, ref: ModelRef) -> AsyncIterator[tuple[ModelVersion, Servable]]:
        """The resolved version and its loaded model, kept open until the block ends."""
        if self._closing:
            raise UnavailableError("the reward server is shutting down")
        version = self.resolve(ref)
        entry = await self._get(version)
        entry.leases += 1
        try:
            yield version, entry.servable
        finally:
            entry.leases -= 1
            if entry.evicted and entry.leases == 0:
                self._close_later(entry)

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._loading.values()):
            task.cancel()
        entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            entry.evicted = True
            if entry.leases == 0:
                self._close_later(entry)
        while self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    async def _get(self, version: ModelVersion) -> _Entry:
        key = version.key
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        failure = self._failed.get(key)
        if failure is not None and failure[0] == _signature(version.path):
            raise failure[1]  # still the same broken directory: do not load it again
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version), name=f"load {key}")
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        # shield: a client that goes away must not cancel a load other requests wait for
        return await asyncio.shield(task)

    async def _load(self, version: ModelVersion) -> _Entry:
        signature = _signature(version.path)
        started = time.perf_counter()
        try:
            if version.card_error is not None:
                raise ModelLoadError(f"model {version.key}: {version.card_error}")
            servable = await asyncio.to_thread(self._loader, version)
        except Exception as exc:  # any failure: a clear error for this model only, the others keep serving
            error = (
                exc
                if isinstance(exc, ModelLoadError)
                else ModelLoadError(
                    f"model {version.key} failed to load from {version.path}: {type(exc).__name__}: {exc}"
                )
            )
            logger.error("loading %s failed", version.key, exc_info=exc)
            self._failed[version.key] = (signature, error)
            self._report(version, started, ok=False)
            raise error from exc
        self._report(version, started, ok=True)
        self._failed.pop(version.key, None)
        entry = _Entry(version, servable)
        if self._closing:
            self._close_later(entry)
            raise UnavailableError("the reward server is shutting down")
        self._entries[version.key] = entry
        self._evict(keep=version.key)
        return entry

    def _report(self, version: ModelVersion, started: float, *, ok: bool) -> None:
        seconds = time.perf_counter() - started
        logger.info("loaded %s in %.2fs" if ok else "failed to load %s after %.2fs", version.key, seconds)
        if self._on_load is not None:
            self._on_load(version, seconds, ok)

    def _evict(self, keep: str) -> None:
        """Unload least recently used models until the loaded ones fit the memory budget."""
        if self._budget is None:
            return
        while sum(e.servable.memory_bytes for e in self._entries.values()) > self._budget:
            others = [k for k in self._entries if k != keep]
            if not others:  # the one model alone exceeds the budget: serve it anyway
                logger.warning("model %s alone exceeds the memory budget of %d bytes", keep, self._budget)
                return
            idle = [k for k in others if self._entries[k].leases == 0]
            victim = self._entries.pop((idle or others)[0])
            victim.evicted = True
            logger.info("unloading %s (memory budget)", victim.version.key)
            if victim.leases == 0:
                self._close_later(victim)

    def _close_later(self, entry: _Entry) -> None:
        task = asyncio.get_running_loop().create_task(self._close(entry), name=f"close {entry.version.key}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    @staticmethod
    async def _close(entry: _Entry) -> None:
        try:
            await entry.servable.aclose()
        except Exception:  # a model that fails to close must not stop the others closing; log it
            logger.exception("closing %s failed", entry.version.key)


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a model directory is rewritten: each file's name, size and mtime."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))
    except FileNotFoundError:
        return ()
