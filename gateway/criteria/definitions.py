"""Stored criterion definitions: the versioned records behind LLM-judge and rule criteria, the source the
resolvers read them from, and the selection of `slug` / `slug@vN` among a slug's versions. Pure: no I/O.

A definition (gateway.protocol.CriterionDefinition, the store's record too) is (slug, version, kind, spec):
`spec` is a JSON object whose shape belongs to the kind (each kind's module validates it with its own
`validate_spec`). Versions are immutable and numbered from 1 per
slug; `slug` means the newest. A slug belongs to one kind for all its versions. Where definitions live (the
store, the config file, memory in tests) is the `DefinitionSource`'s business; `InMemoryDefinitions` is the
simplest one.

May import only criteria.base, formats and protocol (DESIGN.md import rules).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.protocol import CriterionDefinition

from .base import CriterionRef, UnknownCriterionError

SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the reward server's slug rule, shared by every kind


class CriterionSpecError(ValueError):
    """A definition's spec is invalid; the message names the field (e.g. `spec.pattern`)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class DefinitionSource(Protocol):
    """Where resolvers read definitions from (the store implements it)."""

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        """Every version of `slug`, oldest first; empty when no definition has that slug."""
        ...


def select_version(ref: CriterionRef, versions: Sequence[CriterionDefinition], kind: str) -> CriterionDefinition | None:
    """The definition `ref` names among one slug's versions, if they are of `kind`: None when the slug has no
    versions of this kind (another kind may know it); UnknownCriterionError for a version the slug lacks."""
    mine = [d for d in versions if d.kind == kind]
    if not mine:
        return None
    if ref.version is None:
        return max(mine, key=lambda d: d.version)
    for definition in mine:
        if definition.version == ref.version:
            return definition
    raise UnknownCriterionError(ref.id, available=[d.id for d in sorted(mine, key=lambda d: d.version)])


class InMemoryDefinitions:
    """A DefinitionSource over a list (tests, and the config file's definitions before they reach a store)."""

    def __init__(self, definitions: Sequence[CriterionDefinition] = ()) -> None:
        self._by_slug: dict[str, list[CriterionDefinition]] = {}
        for definition in definitions:
            self.add(definition)

    def add(self, definition: CriterionDefinition) -> None:
        versions = self._by_slug.setdefault(definition.slug, [])
        versions.append(definition)
        versions.sort(key=lambda d: d.version)

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        return tuple(self._by_slug.get(slug, ()))


class CachedDefinitions:
    """A DefinitionSource that remembers each slug's versions (also "none") for `ttl_s`: resolving op-criteria
    asks every definition kind about every slug of every request, and most slugs are reward models'. A version
    created elsewhere (another replica) is seen within `ttl_s`; `forget` drops a slug at once after a local write.
    One load per slug at a time: the requests that find the entry expired while it loads wait for that load instead
    of each asking the store (at 32 concurrent best-of-N requests they all did, every `ttl_s`, each a hop to the
    store's thread: bench/profile_gateway.py).
    """

    def __init__(
        self,
        source: DefinitionSource,
        *,
        ttl_s: float = 2.0,
        max_slugs: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl_s = ttl_s
        self._max_slugs = max_slugs
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, tuple[CriterionDefinition, ...]]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[tuple[CriterionDefinition, ...]]] = {}
        self._forgotten: dict[str, asyncio.Future[tuple[CriterionDefinition, ...]]] = {}  # loads started before forget

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        hit = self._cache.get(slug)
        if hit is not None and self._clock() - hit[0] < self._ttl_s:
            return hit[1]
        while (loading := self._loading.get(slug)) is not None:
            try:
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not loading.cancelled() or (task is not None and task.cancelling()):
                    raise  # our own cancellation; else the loader's request was cancelled: load it here
        return await self._load(slug)

    async def _load(self, slug: str) -> tuple[CriterionDefinition, ...]:
        future: asyncio.Future[tuple[CriterionDefinition, ...]] = asyncio.get_running_loop().create_future()
        self._loading[slug] = future
        try:
            versions = tuple(await self._source.criterion_versions(slug))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            if self._loading.get(slug) is future:
                del self._loading[slug]
            forgotten = self._forgotten.get(slug) is future  # a local write during the load: what it read is old
            if forgotten:
                del self._forgotten[slug]
        future.set_result(versions)
        if not forgotten:
            self._cache[slug] = (self._clock(), versions)
            self._cache.move_to_end(slug)
            while len(self._cache) > self._max_slugs:
                self._cache.popitem(last=False)
        return versions

    def forget(self, slug: str) -> None:
        self._cache.pop(slug, None)
        loading = self._loading.pop(slug, None)  # later callers load afresh
        if loading is not None:
            self._forgotten[slug] = loading
