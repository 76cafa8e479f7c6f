"""The criteria service: every criterion kind wired to its backend (reward server, stored definitions, the judge
model through the provider router), the definitions' lifecycle (create, new version, read, list, sync from the
criteria file), one-off judging (OpenPipe's POST /v1/criteria/judge) and alignment against labelled sets.

Used by the chat service, the criteria API and `rewardgate eval`. The kinds come from a registry (gateway.criteria
.registry) the composition root passes in. Must not import starlette, torch, trainer or reward_serving internals.

Definitions file (`criteria_file` setting; JSON list or TOML `[[criteria]]` tables), each entry
`{slug, kind: "rule" | "llm_judge", spec, description?}`: at start-up an entry whose kind, spec or description
differs from the newest stored version of its slug becomes that slug's next version; an unchanged entry adds
nothing. So editing the file never rewrites a version: `slug@vN` keeps meaning what it meant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.criteria import (
    DEFAULT_KINDS,
    SLUG,
    Backends,
    CachedDefinitions,
    Criterion,
    CriterionDefinition,
    CriterionKind,
    CriterionRef,
    CriterionRegistry,
    CriterionResult,
    CriterionUnavailableError,
    JudgeModel,
    JudgeReply,
    RewardModelCatalog,
    UnknownCriterionError,
    parse_criterion_id,
    resolve_criteria,
)
from gateway.criteria.alignment import LabelledRow, alignment_report, score_rows
from gateway.errors import InvalidRequestError
from gateway.formats import Message, loose_message
from gateway.reward_serving.protocol import ModelCard
from gateway.store import MAX_PAGE, CriterionExistsError, CriterionNotFoundError, LogQuery, LogRecord, LogStore
from gateway.upstream.router import Router

logger = logging.getLogger(__name__)


def router_judge(router: Router) -> JudgeModel:
    """The judge model of LLM-judge criteria: one non-streamed completion through the gateway's own router (so
    its providers, keys, retries and fallbacks apply)."""

    async def judge(
        model: str, messages: list[dict[str, Any]], *, max_tokens: int, temperature: float, timeout_s: float
    ) -> JudgeReply:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        response = await router.complete(body, timeout_s)
        message = (response.get("choices") or [{}])[0].get("message") or {}
        usage = response.get("usage") or {}
        content = message.get("content")
        return JudgeReply(
            content if isinstance(content, str) else "",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )

    return judge


def load_criteria_file(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a definitions file (see the module docstring); ValueError names the file and entry."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data: Any = tomllib.loads(text).get("criteria", []) if str(path).endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse ({exc})") from None
    if isinstance(data, dict):
        data = data.get("criteria", [])
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path}: expected a list of criterion objects")
    for position, entry in enumerate(data):
        unknown = sorted(set(entry) - {"slug", "kind", "spec", "description"})
        if unknown:
            raise ValueError(f"{path}: criteria[{position}]: unknown key {unknown[0]!r}")
    return data


class CriteriaService:
    def __init__(
        self,
        *,
        store: LogStore,
        catalog: RewardModelCatalog,
        judge: JudgeModel,
        kinds: Sequence[CriterionKind] = DEFAULT_KINDS,
        judge_concurrency: int = 8,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._registry = CriterionRegistry(kinds)
        self._definitions = CachedDefinitions(store)
        self.resolvers = self._registry.resolvers(Backends(self._definitions, catalog, judge, judge_concurrency))

    async def reward_models(self) -> list[ModelCard]:
        """The reward server's model versions; empty (and logged) while it cannot list them."""
        try:
            return await self._catalog.models()
        except CriterionUnavailableError as exc:
            logger.warning("reward models not listed: %s", exc.message)
            return []

    def forget_reward_models(self) -> None:
        """Drop the cached listing of reward models: the next lookup (and op-criteria) sees the store as it is."""
        self._catalog.forget()

    async def resolve(self, refs: Sequence[CriterionRef]) -> list[tuple[Criterion, float]]:
        return await resolve_criteria(refs, self.resolvers)

    async def resolve_id(self, criterion_id: object, *, param: str = "criterion_id") -> Criterion:
        """One criterion of any kind by `slug` or `slug@vN`; a malformed or unknown id is a 400 naming `param`."""
        ref = parse_criterion_id(criterion_id, param)
        try:
            ((criterion, _),) = await self.resolve([ref])
        except UnknownCriterionError as exc:  # resolution speaks of op-criteria: here the field named it
            raise UnknownCriterionError(exc.criterion_id, available=exc.available, param=param) from None
        return criterion

    # ------------------------------------------------------------ definitions

    async def create(
        self, *, slug: object, kind: object, spec: object, description: object = "", new_version: bool = False
    ) -> CriterionDefinition:
        """Validate and store v1 of a new slug, or (new_version) the next version of an existing one."""
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
            raise InvalidRequestError(
                f"slug: {slug!r} is not 1 to 128 letters, digits, '.', '_' or '-' starting with a letter or digit",
                param="slug",
            )
        validate = self._registry.spec_validator(kind)
        if validate is None:
            defined = list(self._registry.defined)
            raise InvalidRequestError(f"kind: expected one of {defined}, got {kind!r}", param="kind")
        if not isinstance(description, str):
            raise InvalidRequestError("description: must be a string", param="description")
        assert isinstance(kind, str)
        checked = validate(spec)
        if not new_version and await self._is_reward_model(slug):
            raise CriterionExistsError(f"{slug!r} is a reward model's slug: choose another")
        created = await self._store.create_criterion(
            slug=slug, kind=kind, spec=checked, description=description, new_version=new_version
        )
        self._definitions.forget(slug)
        return created

    async def _is_reward_model(self, slug: str) -> bool:
        try:
            return any(card.slug == slug for card in await self._catalog.models())
        except CriterionUnavailableError as exc:  # the definition is still useful; the collision is only possible
            logger.warning("could not check %r against the reward models: %s", slug, exc.message)
            return False

    async def get(self, criterion_id: str) -> CriterionDefinition:
        """A stored definition by `slug` (newest) or `slug@vN`; CriterionNotFoundError (404) otherwise."""
        slug, _, version = criterion_id.partition("@")
        versions = await self._store.criterion_versions(slug)
        if not versions:
            raise CriterionNotFoundError(criterion_id)
        if not version:
            return versions[-1]
        for definition in versions:
            if definition.version_name == version:
                return definition
        raise CriterionNotFoundError(criterion_id)

    async def list_definitions(self) -> Sequence[CriterionDefinition]:
        return await self._store.list_criteria()

    async def sync(self, entries: Sequence[Mapping[str, Any]]) -> list[CriterionDefinition]:
        """Store each file entry that differs from its slug's newest version; returns the versions added."""
        added = []
        for position, entry in enumerate(entries):
            try:
                slug, kind, description = entry.get("slug"), entry.get("kind"), entry.get("description", "")
                versions = await self._store.criterion_versions(slug) if isinstance(slug, str) else ()
                validate = self._registry.spec_validator(kind)
                if versions and validate is not None:
                    newest = versions[-1]
                    spec = validate(entry.get("spec"))
                    if (newest.kind, dict(newest.spec), newest.description) == (kind, spec, description):
                        continue
                added.append(
                    await self.create(
                        slug=slug,
                        kind=kind,
                        spec=entry.get("spec"),
                        description=description,
                        new_version=bool(versions),
                    )
                )
            except (ValueError, InvalidRequestError) as exc:
                message = exc.message if isinstance(exc, InvalidRequestError) else str(exc)
                raise ValueError(f"criteria[{position}] ({entry.get('slug')!r}): {message}") from None
        return added

    # ------------------------------------------------------------ judging and alignment

    async def judge(
        self, criterion_id: str, prompt: Sequence[Message], output: Message
    ) -> tuple[Criterion, CriterionResult]:
        criterion = await self.resolve_id(criterion_id)
        (result,) = await criterion.score(prompt, [output])
        return criterion, result

    async def align(
        self, criterion_id: str, rows: Sequence[LabelledRow], *, threshold: float = 0.5, concurrency: int = 8
    ) -> dict[str, Any]:
        """The alignment report of one criterion version; stored with that version when it is a definition."""
        criterion = await self.resolve_id(criterion_id, param="id")  # the path's {id}
        results = await score_rows(criterion, rows, concurrency=concurrency)
        report = {
            "criterion": {"slug": criterion.slug, "version": criterion.version, "kind": criterion.kind},
            **alignment_report(rows, results, threshold=threshold),
        }
        if self._registry.spec_validator(criterion.kind) is not None and criterion.version is not None:
            await self._store.set_alignment(criterion.slug, int(criterion.version.removeprefix("v")), report)
            report["stored"] = True
        else:
            report["stored"] = False  # reward models keep their metrics in rewardgate.json, written by the trainer
        return report

    async def score_logs(
        self, criterion: Criterion, query: LogQuery, *, limit: int, concurrency: int = 8
    ) -> dict[str, Any]:
        """Score the produced candidates of up to `limit` stored logs (newest first) and write each result into
        its candidate's criteria_results[slug] (with "offline": true); the request-time ranking is unchanged."""
        page = await self._store.list_logs(query, limit=min(limit, MAX_PAGE))
        logs = list(page.logs)
        while page.next_cursor is not None and len(logs) < limit:
            page = await self._store.list_logs(query, limit=min(limit - len(logs), MAX_PAGE), cursor=page.next_cursor)
            logs.extend(page.logs)
        gate = asyncio.Semaphore(concurrency)
        counts = {"logs": len(logs), "candidates": 0, "errors": 0}

        async def one(log: LogRecord) -> None:
            messages = log.request.get("messages") or []
            produced = [c for c in log.candidates if c.status == "ok" and c.message]
            if not produced or not isinstance(messages, list):
                return
            prompt = [loose_message(m) for m in messages]
            async with gate:
                results = await criterion.score(prompt, [loose_message(c.message) for c in produced])
            entries = {c.index: {**r.to_json(), "offline": True} for c, r in zip(produced, results, strict=True)}
            await self._store.add_criterion_results(log.id, criterion.slug, entries)
            counts["candidates"] += len(results)
            counts["errors"] += sum(1 for r in results if not r.ok)

        await asyncio.gather(*(one(log) for log in logs))
        return counts
