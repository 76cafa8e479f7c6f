"""What a criterion kind is: a name, a factory that builds the kind's resolver from the backends the gateway
provides, and (for kinds defined by stored definitions) the check of a definition's spec. Each kind's module
exports one `CriterionKind` as `KIND`; gateway.criteria.registry lists them. Pure: no I/O.

May import only criteria.base and criteria.definitions at run time (the backends' types are named for mypy only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import CriterionResolver
from .definitions import DefinitionSource

if TYPE_CHECKING:  # types only: the kinds' modules import this one
    from .llm_judge import JudgeModel
    from .reward_model import RewardModelCatalog


@dataclass(frozen=True)
class Backends:
    """Everything a kind's resolver may be built from; the criteria service fills it once."""

    definitions: DefinitionSource  # stored definitions (LLM judges, rules), cached
    reward_models: RewardModelCatalog  # the reward server's model listing
    judge: JudgeModel  # one chat completion from a judge model, through the gateway's providers
    judge_concurrency: int = 8  # judge calls in flight per criterion


@dataclass(frozen=True)
class CriterionKind:
    """One kind of criterion. `build` makes its resolver; `validate_spec` checks (and normalises) a stored
    definition's spec, and is None for kinds that are not defined through POST /v1/criteria (reward models)."""

    name: str
    build: Callable[[Backends], CriterionResolver]
    validate_spec: Callable[[object], dict[str, Any]] | None = None
