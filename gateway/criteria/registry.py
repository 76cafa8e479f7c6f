"""The registry of criterion kinds, in precedence order: when several kinds know a slug, the first listed wins.
A new kind is one module that exports `KIND = CriterionKind(...)` (gateway.criteria.kinds) and one line in
DEFAULT_KINDS; the README's "Adding a criterion kind" shows one. A registry is a value, not a global: the
composition root passes its kinds to the criteria service (tests add a toy kind that way).

May import only its own package's modules (DESIGN.md import rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import llm_judge, reward_model, rules
from .base import CriterionResolver
from .kinds import Backends, CriterionKind

DEFAULT_KINDS: tuple[CriterionKind, ...] = (
    reward_model.KIND,
    rules.KIND,
    llm_judge.KIND,
)


class CriterionRegistry:
    """Kinds by name, in precedence order."""

    def __init__(self, kinds: Sequence[CriterionKind] = DEFAULT_KINDS) -> None:
        names = [kind.name for kind in kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion kinds must have distinct names, got {names}")
        self.kinds = tuple(kinds)
        self._by_name = {kind.name: kind for kind in kinds}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def defined(self) -> tuple[str, ...]:
        """The kinds a stored definition may have (what POST /v1/criteria accepts), sorted."""
        return tuple(sorted(kind.name for kind in self.kinds if kind.validate_spec is not None))

    def spec_validator(self, name: object) -> Callable[[object], dict[str, Any]] | None:
        """The spec check of a defined kind; None for anything else (a reward model, an unknown name)."""
        kind = self._by_name.get(name) if isinstance(name, str) else None
        return None if kind is None else kind.validate_spec

    def resolvers(self, backends: Backends) -> tuple[CriterionResolver, ...]:
        """One resolver per kind, in precedence order."""
        built = tuple(kind.build(backends) for kind in self.kinds)
        for kind, resolver in zip(self.kinds, built, strict=True):
            if resolver.kind != kind.name:
                raise ValueError(f"kind {kind.name!r} built a resolver of kind {resolver.kind!r}")
        return built
