"""gateway.criteria.registry: the kinds in precedence order, one resolver per kind built from the backends, the
spec checks of the kinds defined by stored definitions, the precedence resolve_criteria applies, and a new kind
added the README's way (one module, one registry line), served end to end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.criteria import (
    DEFAULT_KINDS,
    Backends,
    CriterionKind,
    CriterionRef,
    CriterionRegistry,
    CriterionResult,
    CriterionSpecError,
    DefinitionSource,
    InMemoryDefinitions,
    JudgeReply,
    RewardModelCatalog,
    resolve_criteria,
)
from gateway.criteria.definitions import select_version
from gateway.criteria.rules import RuleCatalog
from gateway.formats import Message
from tests.gateway.criteria.test_base import Fake, FakeResolver
from tests.gateway.fakes import MESSAGES, FakeUpstream, running_gateway


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


# ---------------------------------------------------------------- a new kind: one module, one registry line


class ShortAnswers:
    """The resolver of a toy kind `short`: 1.0 for an answer of at most `max_chars` characters, else 0.0."""

    kind = "short"

    def __init__(self, definitions: DefinitionSource) -> None:
        self._definitions = definitions

    async def resolve(self, ref: CriterionRef) -> ShortCriterion | None:
        definition = select_version(ref, await self._definitions.criterion_versions(ref.slug), self.kind)
        if definition is None:
            return None
        return ShortCriterion(definition.slug, definition.version_name, int(definition.spec["max_chars"]))


@dataclass(frozen=True)
class ShortCriterion:
    slug: str
    version: str
    max_chars: int
    kind: str = "short"

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        return [
            CriterionResult.success(1.0 if len(c.content or "") <= self.max_chars else 0.0, version=self.version)
            for c in candidates
        ]


def validate_short(spec: object) -> dict[str, Any]:
    chars = spec.get("max_chars") if isinstance(spec, dict) else None
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1:
        raise CriterionSpecError("spec.max_chars", f"a positive integer, got {chars!r}")
    return {"max_chars": chars}


SHORT = CriterionKind("short", lambda backends: ShortAnswers(backends.definitions), validate_short)


@pytest.mark.anyio
async def test_a_kind_registered_with_one_line_is_defined_resolved_and_scored(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    spec = {"slug": "brief", "kind": "short", "spec": {"max_chars": 50}}
    async with running_gateway(tmp_path, upstream, models_dir, kinds=(*DEFAULT_KINDS, SHORT)) as gw:
        created = await gw.client.post("/v1/criteria", json=spec)
        assert created.status_code == 201 and created.json()["id"] == "brief@v1"
        bad = await gw.client.post("/v1/criteria", json={**spec, "slug": "brief2", "spec": {"max_chars": "x"}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "spec.max_chars"
        body = {"model": "ok", "messages": MESSAGES, "n": 3}
        response = await gw.client.post(
            "/v1/chat/completions", json=body, headers={"op-criteria": '["brief", "tiny-rm"]'}
        )
        assert response.status_code == 200, response.text
        for choice in response.json()["choices"]:
            result = choice["criteria_results"]["brief"]
            assert result["status"] == "success" and result["version"] == "v1"
            assert result["score"] == (1.0 if len(choice["message"]["content"]) <= 50 else 0.0)
        assert {c["criteria_results"]["brief"]["score"] for c in response.json()["choices"]} == {0.0, 1.0}
    async with running_gateway(tmp_path / "default", upstream, models_dir) as gw:  # the default kinds know no `short`
        refused = await gw.client.post("/v1/criteria", json=spec)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "kind"
