"""Reward-model criteria: scoring through the reward server's wire API (DESIGN contract 3), and resolving
`slug` / `slug@vN` against its /v1/models listing.

The client is injected (a `reward_client.RewardHttp`, or an httpx client that gets wrapped as one: embedded mode
passes one over `httpx.ASGITransport(app=reward_app)`), so the gateway never imports the server. May import only
criteria.base, formats and reward_serving.protocol; never starlette, torch, proxy or store.

Error codes of a reward-model result: reward_server_unavailable (connection failed, 429, 503),
reward_server_error (other 5xx, unexpected status), model_not_found (404: removed since resolution),
invalid_request (another 4xx), invalid_response (not a score response, wrong count, non-finite score),
timeout, invalid_candidate (a candidate the server would reject, e.g. empty content; the others are scored).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import ValidationError

from gateway.formats import Message, PairError, parse_message
from gateway.reward_serving.protocol import ModelCard, ModelList, ScoreResponse

from .base import CriterionRef, CriterionResult, CriterionUnavailableError, UnknownCriterionError, normalize_reward
from .kinds import Backends, CriterionKind
from .reward_client import Reply, RewardHttp, RewardServerUnreachable, UndecodableReply, as_reward_http

logger = logging.getLogger(__name__)


class RewardModelCriterion:
    """One reward model at one resolved version; `score` sends all candidates as ONE POST /v1/score."""

    kind: ClassVar[str] = "reward_model"

    def __init__(self, client: RewardHttp | httpx.AsyncClient, card: ModelCard, *, timeout_s: float = 30.0) -> None:
        self.slug: str = card.slug
        self.version: str = card.version
        self._client = as_reward_http(client)
        self._stats = card.reward_stats
        self._timeout_s = timeout_s

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        try:
            turns = [_checked(m, f"prompt[{i}]") for i, m in enumerate(prompt)]
        except PairError as exc:
            return [self._error("invalid_request", f"the prompt cannot be scored: {exc}") for _ in candidates]
        results: list[CriterionResult | None] = [None] * len(candidates)
        batch: list[int] = []
        for i, candidate in enumerate(candidates):
            try:
                if candidate.role != "assistant":
                    raise PairError(f"candidates[{i}].role: must be an assistant message, got {candidate.role!r}")
                _checked(candidate, f"candidates[{i}]")
                batch.append(i)
            except PairError as exc:
                results[i] = self._error("invalid_candidate", str(exc))
        if batch:
            conversations = [[*turns, candidates[i].to_dict()] for i in batch]
            for i, result in zip(batch, await self._score_batch(conversations), strict=True):
                results[i] = result
        scored = [r for r in results if r is not None]
        assert len(scored) == len(candidates)  # every position got a local error or a batch result
        return scored

    async def _score_batch(self, conversations: list[list[dict[str, Any]]]) -> list[CriterionResult]:
        n = len(conversations)
        body = orjson.dumps({"model": f"{self.slug}@{self.version}", "conversations": conversations})
        try:
            # asyncio.timeout as well as the client's: ASGITransport (embedded mode) ignores httpx timeouts.
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.request("POST", "/v1/score", body=body, timeout_s=self._timeout_s)
        except TimeoutError:
            return self._errors(n, "timeout", f"the reward server did not answer within {self._timeout_s:g} s")
        except UndecodableReply as exc:
            return self._errors(n, "invalid_response", f"undecodable reward server response: {exc}")
        except RewardServerUnreachable as exc:
            return self._errors(n, "reward_server_unavailable", f"reward server unreachable: {exc}")
        if response.status != 200:
            return self._errors(n, *_status_error(response))
        try:
            parsed = ScoreResponse.model_validate_json(response.content)
        except ValidationError as exc:
            return self._errors(n, "invalid_response", f"not a score response: {exc.errors()[0]['msg']}")
        scores = {d.index: d.score for d in parsed.data}
        if len(parsed.data) != n or set(scores) != set(range(n)):
            return self._errors(n, "invalid_response", f"expected {n} scores, got {len(parsed.data)}")
        if not all(math.isfinite(s) for s in scores.values()):
            return self._errors(n, "invalid_response", "the reward server returned a non-finite score")
        return [self._success(scores[i], parsed.version) for i in range(n)]

    def _success(self, raw: float, version: str) -> CriterionResult:
        stats = self._stats
        z, p = normalize_reward(raw, stats.mean if stats else None, stats.std if stats else None)
        usable = stats is not None and math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0
        basis = "" if usable else ", no usable reward_stats: mean 0, std 1"
        explanation = f"raw reward {raw:.4g} (z={z:+.2f}, normalized {p:.3f}{basis})"
        return CriterionResult.success(raw, version=version, explanation=explanation, normalized=p)

    def _error(self, code: str, message: str) -> CriterionResult:
        return CriterionResult.error(code, message, version=self.version)

    def _errors(self, n: int, code: str, message: str) -> list[CriterionResult]:
        logger.warning("reward model %s@%s: %s: %s", self.slug, self.version, code, message)
        return [self._error(code, message) for _ in range(n)]


class RewardModelCatalog:
    """Resolves header references against the reward server's /v1/models, cached for `ttl_s` (clock injectable).

    A listing that fails is not retried within `ttl_s` either; while it fails the last good listing is used."""

    kind: ClassVar[str] = "reward_model"

    def __init__(
        self,
        client: RewardHttp | httpx.AsyncClient,
        *,
        ttl_s: float = 2.0,
        timeout_s: float = 5.0,
        score_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = as_reward_http(client)
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._score_timeout_s = score_timeout_s
        self._clock = clock
        self._cards: list[ModelCard] | None = None
        self._failure: CriterionUnavailableError | None = None
        self._checked_at = -math.inf
        self._lock = asyncio.Lock()  # one listing in flight, however many requests resolve at once

    async def models(self) -> list[ModelCard]:
        """The cached listing; raises CriterionUnavailableError when it fails and no earlier listing exists."""
        async with self._lock:
            if self._clock() - self._checked_at >= self._ttl_s:
                try:
                    self._cards, self._failure = await self._fetch(), None
                except CriterionUnavailableError as exc:
                    self._failure = exc
                    if self._cards is not None:
                        logger.warning("reward model listing failed, using the previous one: %s", exc.message)
                self._checked_at = self._clock()
            if self._cards is None:
                assert self._failure is not None
                raise self._failure
            return self._cards

    def forget(self) -> None:
        """The next lookup lists the models again (a version was just deployed or deleted here)."""
        self._checked_at = -math.inf

    async def resolve(self, ref: CriterionRef) -> RewardModelCriterion | None:
        """None when no reward model has the slug; UnknownCriterionError when the pinned version is absent."""
        versions: dict[int, ModelCard] = {}
        for card in await self.models():
            number = _version_number(card.version)
            if card.slug == ref.slug and number is not None:
                versions[number] = card
        if not versions:
            return None
        wanted = max(versions) if ref.version is None else ref.version
        if wanted not in versions:
            raise UnknownCriterionError(ref.id, available=[f"v{v}" for v in sorted(versions)])
        return RewardModelCriterion(self._client, versions[wanted], timeout_s=self._score_timeout_s)

    async def _fetch(self) -> list[ModelCard]:
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.request("GET", "/v1/models", timeout_s=self._timeout_s)
        except TimeoutError:
            raise CriterionUnavailableError("timeout", "the reward server did not list its models in time") from None
        except (RewardServerUnreachable, UndecodableReply) as exc:
            message = f"reward server unreachable: {exc}"
            raise CriterionUnavailableError("reward_server_unavailable", message) from None
        if response.status != 200:
            raise CriterionUnavailableError(*_status_error(response))
        try:
            return ModelList.model_validate_json(response.content).data
        except ValidationError as exc:
            message = f"not a model list: {exc.errors()[0]['msg']}"
            raise CriterionUnavailableError("invalid_response", message) from None


def _checked(message: Message, where: str) -> dict[str, Any]:
    """The wire form of a message, validated as the reward server will validate it (formats.parse_message)."""
    wire = message.to_dict()
    parse_message(wire, where)
    return wire


def _version_number(name: str) -> int | None:
    digits = name[1:]
    return int(digits) if name.startswith("v") and digits.isascii() and digits.isdigit() else None


def _status_error(response: Reply) -> tuple[str, str]:
    status = response.status
    try:
        detail = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        detail = response.content[:200].decode("utf-8", "replace")
    message = f"reward server answered {status}: {detail}"
    if status in (429, 503):
        return "reward_server_unavailable", message
    if status == 404:
        return "model_not_found", message
    if 400 <= status < 500:
        return "invalid_request", message
    return "reward_server_error", message


def _resolver(backends: Backends) -> RewardModelCatalog:
    return backends.reward_models  # one catalog: the gateway's model listing reads the same cached one


KIND = CriterionKind("reward_model", _resolver)
