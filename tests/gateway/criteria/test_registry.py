"""gateway.criteria.registry: the kinds in precedence order, one resolver per kind built from the backends, the
spec checks of the kinds defined by stored definitions, and the precedence resolve_criteria applies."""

from __future__ import annotations

import httpx
import pytest

from gateway.criteria import (
    DEFAULT_KINDS,
    Backends,
    CriterionKind,
    CriterionRef,
    CriterionRegistry,
    InMemoryDefinitions,
    JudgeReply,
    RewardModelCatalog,
    resolve_criteria,
)
from gateway.criteria.rules import RuleCatalog
from tests.gateway.criteria.test_base import Fake, FakeResolver


async def _never_judge(model: str, messages: list[dict[str, object]], **_: object) -> JudgeReply:
    raise AssertionError("no judge is called while building resolvers")


def backends() -> Backends:
    catalog = RewardModelCatalog(httpx.AsyncClient(base_url="http://reward-server"))
    return Backends(InMemoryDefinitions(), catalog, _never_judge)


def test_the_default_kinds_in_precedence_order_and_what_each_builds() -> None:
    registry = CriterionRegistry()
    assert registry.names == ("reward_model", "rule", "llm_judge")
    assert [kind.name for kind in DEFAULT_KINDS] == list(registry.names)
    parts = backends()
    resolvers = registry.resolvers(parts)
    assert [r.kind for r in resolvers] == ["reward_model", "rule", "llm_judge"]
    assert resolvers[0] is parts.reward_models  # the one catalog the model listing reads too
    assert registry.defined == ("llm_judge", "rule")  # reward models are not defined through POST /v1/criteria
    assert registry.spec_validator("reward_model") is None and registry.spec_validator(["rule"]) is None
    validate = registry.spec_validator("rule")
    assert validate is not None and validate({"type": "json"})["type"] == "json"


def test_kinds_need_distinct_names_and_must_build_their_own_kind() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CriterionRegistry([*DEFAULT_KINDS, DEFAULT_KINDS[1]])
    impostor = CriterionKind("tone", lambda b: RuleCatalog(b.definitions))
    with pytest.raises(ValueError, match="built a resolver of kind 'rule'"):
        CriterionRegistry([impostor]).resolvers(backends())


@pytest.mark.anyio
async def test_resolvers_are_asked_in_order_and_the_first_that_knows_wins() -> None:
    with pytest.raises(ValueError, match="distinct"):
        await resolve_criteria([CriterionRef("a")], [FakeResolver("reward_model"), FakeResolver("reward_model")])
    # The first kind in the registry wins a shared slug, and a kind that knows the slug beats one that is down.
    rm, judge = Fake("a", kind="reward_model"), Fake("a", kind="llm_judge")
    resolvers = [FakeResolver("reward_model", {"a": rm}), FakeResolver("llm_judge", {"a": judge})]
    assert await resolve_criteria([CriterionRef("a")], resolvers) == [(rm, 1.0)]
    resolvers = [FakeResolver("reward_model", unavailable=True), FakeResolver("llm_judge", {"a": judge})]
    assert await resolve_criteria([CriterionRef("a")], resolvers) == [(judge, 1.0)]
