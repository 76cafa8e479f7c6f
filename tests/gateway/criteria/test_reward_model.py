"""Reward-model criteria against the REAL reward server app over httpx.ASGITransport (tiny models saved to a
temporary store), and every failure path over httpx.MockTransport: error results, never exceptions."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.criteria import (
    RewardModelCatalog,
    RewardModelCriterion,
    UnknownCriterionError,
    parse_criteria_header,
    rank,
    resolve_criteria,
    score_all,
)
from gateway.criteria.base import FailedCriterion, sigmoid
from gateway.formats import Message
from gateway.reward_serving.protocol import ModelCard, RewardStats
from gateway.reward_serving.server import ServerSettings, create_app
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio

PROMPT = [Message("system", "You are a support agent."), Message("user", "How do I reset my password?")]
ANSWERS = [
    Message("assistant", "Open settings, choose security, then reset."),
    Message("assistant", "I cannot help with that."),
    Message("assistant", "Thanks for reaching out! Your order ships tomorrow."),
    Message("assistant", "Please ask someone else."),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-rm v1 (TEST stats mean 0.5, std 2) and v2 (mean 0, std 1); other-rm v1 without reward_stats."""
    root = tmp_path_factory.mktemp("models")
    v1 = save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    save_reward_model(root / "tiny-rm" / "v2", "tiny-rm", "v2", seed=1)
    other = save_reward_model(root / "other-rm" / "v1", "other-rm", "v1", seed=2)
    for directory, stats in ((v1, {"mean": 0.5, "std": 2.0, "count": 40}), (other, None)):
        card = json.loads((directory / "rewardgate.json").read_text())
        card["reward_stats"] = stats
        (directory / "rewardgate.json").write_text(json.dumps(card))
    return root


class Recorder:
    """Every request the gateway side sent, as (method, path, JSON body or None)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    async def __call__(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))

    def posts(self) -> list[Any]:
        return [body for method, _, body in self.requests if method == "POST"]


@pytest.fixture
async def app(store: Path) -> AsyncIterator[Starlette]:
    reward_app = create_app(ServerSettings(models_dir=str(store), device="cpu"))
    async with reward_app.router.lifespan_context(reward_app):
        yield reward_app


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(app: Starlette, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [recorder]}
    async with httpx.AsyncClient(transport=transport, base_url="http://rm", event_hooks=hooks) as c:
        yield c


async def raw_scores(client: httpx.AsyncClient, model: str, answers: list[Message]) -> list[float]:
    """What the server itself answers for these conversations, asked directly."""
    conversations = [[m.to_dict() for m in (*PROMPT, a)] for a in answers]
    response = await client.post("/v1/score", json={"model": model, "conversations": conversations})
    assert response.status_code == 200, response.text
    return [d["score"] for d in response.json()["data"]]


# ---------------------------------------------------------------- against the real reward server


async def test_newest_version_one_batched_post_and_the_servers_raw_scores(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    [(criterion, weight)] = await resolve_criteria(parse_criteria_header('["tiny-rm"]'), [RewardModelCatalog(client)])
    assert (criterion.slug, criterion.version, criterion.kind, weight) == ("tiny-rm", "v2", "reward_model", 1.0)
    assert recorder.requests == [("GET", "/v1/models", None)]
    results = await criterion.score(PROMPT, ANSWERS)
    [post] = recorder.posts()  # ONE request for all four candidates, pinned to the resolved version
    assert post["model"] == "tiny-rm@v2" and len(post["conversations"]) == 4
    assert post["conversations"][2] == [m.to_dict() for m in (*PROMPT, ANSWERS[2])]
    expected = await raw_scores(client, "tiny-rm@v2", ANSWERS)
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 4  # the tiny model tells the answers apart
    for result, raw in zip(results, expected, strict=True):
        assert result.ok and result.version == "v2"
        assert result.normalized == pytest.approx(sigmoid(raw), abs=1e-6)  # v2's stats: mean 0, std 1
        assert result.explanation is not None and result.explanation.startswith("raw reward ")


async def test_a_pinned_version_scores_with_its_own_stats(client: httpx.AsyncClient) -> None:
    [(criterion, _)] = await resolve_criteria(parse_criteria_header('["tiny-rm@v1"]'), [RewardModelCatalog(client)])
    assert criterion.version == "v1"
    results = await criterion.score(PROMPT, ANSWERS)
    raw = await raw_scores(client, "tiny-rm@v1", ANSWERS)
    assert raw != pytest.approx(await raw_scores(client, "tiny-rm", ANSWERS), abs=1e-5)  # really another model
    assert [r.score for r in results] == pytest.approx(raw, abs=1e-5)
    assert [r.normalized for r in results] == pytest.approx([sigmoid((s - 0.5) / 2.0) for s in raw], abs=1e-6)
    assert [r.to_json()["version"] for r in results] == ["v1"] * 4
    z = (results[0].score - 0.5) / 2.0  # type: ignore[operator]
    assert f"z={z:+.2f}" in str(results[0].explanation)


async def test_score_all_sends_one_batch_per_model_and_ranks(client: httpx.AsyncClient, recorder: Recorder) -> None:
    refs = parse_criteria_header('["tiny-rm", {"id": "other-rm@v1", "weight": 2}]')
    criteria = await resolve_criteria(refs, [RewardModelCatalog(client)])
    candidates: list[Message | None] = [ANSWERS[0], None, ANSWERS[1], ANSWERS[2]]
    scored = await score_all(criteria, PROMPT, candidates)
    posts = recorder.posts()
    assert sorted(p["model"] for p in posts) == ["other-rm@v1", "tiny-rm@v2"]
    assert [len(p["conversations"]) for p in posts] == [3, 3]  # the failed candidate is not sent
    assert [m for m, path, _ in recorder.requests if path == "/v1/models"] == ["GET"]  # listed once, cached
    produced = [ANSWERS[0], ANSWERS[1], ANSWERS[2]]
    tiny, other = await raw_scores(client, "tiny-rm", produced), await raw_scores(client, "other-rm", produced)
    for s, t, o in zip([scored[0], scored[2], scored[3]], tiny, other, strict=True):
        assert s.criteria_errors == 0 and not s.failed
        assert s.score == pytest.approx((sigmoid(t) + 2 * sigmoid(o)) / 3, abs=1e-6)  # other-rm: no stats, 0/1
        assert s.results["tiny-rm"].version == "v2" and s.results["other-rm"].version == "v1"
        assert "no usable reward_stats" in str(s.results["other-rm"].explanation)
    assert scored[1].failed and scored[1].results == {}
    order = rank(scored)
    best_first = sorted((s.score for s in scored if s.score is not None), reverse=True)
    assert order[-1] == 1 and [scored[i].score for i in order[:3]] == best_first


async def test_unknown_slug_or_version_names_it(client: httpx.AsyncClient) -> None:
    catalog = RewardModelCatalog(client)
    with pytest.raises(UnknownCriterionError, match="unknown criterion 'nope'"):
        await resolve_criteria(parse_criteria_header('["tiny-rm", "nope"]'), [catalog])
    with pytest.raises(UnknownCriterionError, match=r"'tiny-rm@v9' \(available versions: v1, v2\)"):
        await resolve_criteria(parse_criteria_header('["tiny-rm@v9"]'), [catalog])


async def test_invalid_candidates_error_alone_and_the_rest_is_scored(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    [(criterion, _)] = await resolve_criteria(parse_criteria_header('["tiny-rm"]'), [RewardModelCatalog(client)])
    candidates = [ANSWERS[0], Message("assistant", "  "), Message("user", "hi"), ANSWERS[3]]
    results = await criterion.score(PROMPT, candidates)
    assert [r.status for r in results] == ["success", "error", "error", "success"]
    assert results[1].error_code == results[2].error_code == "invalid_candidate"
    assert "candidates[1].content" in str(results[1].error_message)
    assert "candidates[2].role" in str(results[2].error_message)
    [post] = recorder.posts()
    assert len(post["conversations"]) == 2
    assert [results[0].score, results[3].score] == pytest.approx(
        await raw_scores(client, "tiny-rm", [ANSWERS[0], ANSWERS[3]]), abs=1e-5
    )
    bad_prompt = await criterion.score([Message("user", "")], ANSWERS[:2])
    assert [r.error_code for r in bad_prompt] == ["invalid_request"] * 2


# ---------------------------------------------------------------- the catalog: cache, outages


def _raise(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def models_handler(counter: list[int], fail_after: int | None = None) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        counter.append(1)
        if fail_after is not None and len(counter) > fail_after:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        card = {"id": "rm@v3", "slug": "rm", "version": "v3", "latest": True, "loaded": False}
        return httpx.Response(200, json={"object": "list", "data": [card]})

    return handle


async def test_the_listing_is_cached_for_ttl_by_the_injected_clock() -> None:
    now, calls = [100.0], list[int]()
    async with httpx.AsyncClient(transport=httpx.MockTransport(models_handler(calls)), base_url="http://rm") as client:
        catalog = RewardModelCatalog(client, ttl_s=2.0, clock=lambda: now[0])
        refs = [*parse_criteria_header('["rm"]'), *parse_criteria_header('["rm@v3"]')]
        await asyncio.gather(*(catalog.resolve(ref) for ref in refs * 3))
        assert len(calls) == 1  # concurrent resolutions share one listing
        now[0] += 1.9
        assert await catalog.resolve(refs[0]) is not None and len(calls) == 1
        now[0] += 0.1
        assert await catalog.resolve(refs[0]) is not None and len(calls) == 2


async def test_a_failing_listing_reuses_the_previous_one() -> None:
    now, calls = [0.0], list[int]()
    transport = httpx.MockTransport(models_handler(calls, fail_after=1))
    async with httpx.AsyncClient(transport=transport, base_url="http://rm") as client:
        catalog = RewardModelCatalog(client, ttl_s=1.0, clock=lambda: now[0])
        [ref] = parse_criteria_header('["rm"]')
        first = await catalog.resolve(ref)
        now[0] += 5
        again = await catalog.resolve(ref)
    assert first is not None and again is not None and again.version == "v3" and len(calls) == 2


@pytest.mark.parametrize(
    ("handler", "code"),
    [
        (_raise(httpx.ConnectError("refused")), "reward_server_unavailable"),
        (lambda r: httpx.Response(503, json={"error": {"message": "shutting down"}}), "reward_server_unavailable"),
        (lambda r: httpx.Response(200, text="<html>"), "invalid_response"),
        (_raise(httpx.ReadTimeout("slow")), "timeout"),
    ],
    ids=["refused", "503", "garbage", "timeout"],
)
async def test_an_unreachable_catalog_gives_a_criterion_that_errors(
    handler: Callable[[httpx.Request], httpx.Response], code: str
) -> None:
    now, calls = [0.0], list[int]()

    def counted(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(counted), base_url="http://rm") as client:
        catalog = RewardModelCatalog(client, clock=lambda: now[0])
        [(criterion, _)] = await resolve_criteria(parse_criteria_header('["rm@v2"]'), [catalog])
        assert isinstance(criterion, FailedCriterion) and (criterion.error_code, criterion.version) == (code, "v2")
        scored = await score_all([(criterion, 1.0)], PROMPT, ANSWERS[:2])
        assert [s.results["rm"].error_code for s in scored] == [code, code] and scored[0].score is None
        await resolve_criteria(parse_criteria_header('["rm"]'), [catalog])
        assert len(calls) == 1  # a failure is remembered for ttl_s too: an outage is not hammered


# ---------------------------------------------------------------- scoring failures: error results, never raises


CARD = ModelCard(id="rm@v1", slug="rm", version="v1", latest=True, loaded=True, reward_stats=RewardStats(mean=1, std=2))


def score_reply(scores: list[float], order: list[int] | None = None) -> httpx.Response:
    order = order if order is not None else list(range(len(scores)))
    data = [{"index": i, "score": scores[i]} for i in order]
    body = {"model": "rm", "version": "v1", "data": data, "usage": {"prompt_tokens": 9}}
    return httpx.Response(200, json=body)


async def hang(request: httpx.Request) -> httpx.Response:
    await asyncio.Event().wait()  # a reward server that never answers (ASGITransport ignores httpx timeouts)
    raise AssertionError("unreachable")


FAILURES: list[tuple[str, Any, str, str]] = [
    ("500", lambda r: httpx.Response(500, json={"error": {"message": "CUDA OOM"}}), "reward_server_error", "500"),
    ("502 text", lambda r: httpx.Response(502, text="Bad Gateway"), "reward_server_error", "Bad Gateway"),
    ("503", lambda r: httpx.Response(503, json={"error": {"message": "busy"}}), "reward_server_unavailable", "busy"),
    ("429", lambda r: httpx.Response(429, json={"error": {"message": "full"}}), "reward_server_unavailable", "429"),
    ("404", lambda r: httpx.Response(404, json={"error": {"message": "gone"}}), "model_not_found", "gone"),
    ("413", lambda r: httpx.Response(413, json={"error": {"message": "big"}}), "invalid_request", "big"),
    ("garbage", lambda r: httpx.Response(200, text="not json"), "invalid_response", "not a score response"),
    ("wrong shape", lambda r: httpx.Response(200, json={"scores": [1]}), "invalid_response", "not a score response"),
    ("wrong count", lambda r: score_reply([0.1, 0.2]), "invalid_response", "expected 3 scores, got 2"),
    ("dup index", lambda r: score_reply([0.1, 0.2, 0.3], [0, 0, 1]), "invalid_response", "expected 3 scores"),
    ("read timeout", _raise(httpx.ReadTimeout("slow")), "timeout", "did not answer within 0.05 s"),
    ("refused", _raise(httpx.ConnectError("refused")), "reward_server_unavailable", "unreachable"),
    ("hang", hang, "timeout", "did not answer within 0.05 s"),
]


@pytest.mark.parametrize(("handler", "code", "text"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
async def test_every_failure_is_an_error_result_for_every_candidate(handler: Any, code: str, text: str) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://rm") as client:
        criterion = RewardModelCriterion(client, CARD, timeout_s=0.05)
        results = await criterion.score(PROMPT, ANSWERS[:3])
        assert [(r.status, r.error_code, r.version) for r in results] == [("error", code, "v1")] * 3
        assert text in str(results[0].error_message)
        scored = await score_all([(criterion, 1.0)], PROMPT, ANSWERS[:3])
        assert [(s.score, s.criteria_errors) for s in scored] == [(None, 1)] * 3


async def test_scores_are_mapped_by_index_and_normalized_with_the_cards_stats() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return score_reply([3.0, -1.0, 1.0], order=[2, 0, 1])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://rm") as client:
        results = await RewardModelCriterion(client, CARD).score(PROMPT, ANSWERS[:3])
    assert [r.score for r in results] == [3.0, -1.0, 1.0]
    assert [r.normalized for r in results] == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 0.5])
    assert results[0].explanation == "raw reward 3 (z=+1.00, normalized 0.731)"
    assert [s["model"] for s in seen] == ["rm@v1"]


async def test_no_candidates_no_request() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_raise(AssertionError())), base_url="http://rm") as c:
        assert await RewardModelCriterion(c, CARD).score(PROMPT, []) == []
