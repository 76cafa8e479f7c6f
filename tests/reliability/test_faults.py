"""Fault injection (issue 7): the REAL gateway app over ASGI, its real router, providers and SQLite store, against a
fake upstream and a fake reward server on 127.0.0.1 whose answers are scripted per call (tests/reliability/faults.py).

Every case ends in one of two ways, within the timeouts in the settings (0.5 s upstream, 0.5 s criteria, 0.3 s
store lock): a 200 whose failed parts are marked (a failed candidate is a choice with finish_reason "error"; a failed
criterion an error result per candidate), stored as the client saw it; or one OpenAI error envelope with the right
status, and nothing stored. Each request is also bounded from the outside (`BOUND_S` past its timeout), and every
upstream call the gateway gave up on must be closed (the fake's handler cancelled), so nothing piles up.
docs/RELIABILITY.md lists what the client saw in each case.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.faults import (
    MESSAGES,
    SLUG,
    Fault,
    FaultRewardServer,
    FaultUpstream,
    Gateway,
    assert_log_matches,
    fault_reward_server,
    fault_upstream,
    running_gateway,
    status,
    until,
)

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": f'["{SLUG}"]'}
TIMEOUT_S = 0.5  # upstream_timeout_s and criteria_timeout_s (faults.settings_for)
BUSY_S = 0.3  # the store's busy timeout (faults.running_gateway)
BOUND_S = 1.5  # slack on top of a timeout: this machine's 2 cores are shared


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def upstream() -> AsyncIterator[FaultUpstream]:
    async with fault_upstream() as fake:
        yield fake


@pytest.fixture
async def reward() -> AsyncIterator[FaultRewardServer]:
    async with fault_reward_server() as fake:
        yield fake


@pytest.fixture
async def gw(tmp_path: Path, upstream: FaultUpstream, reward: FaultRewardServer) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, upstream, reward.url) as gateway:
        yield gateway


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


async def post(
    gw: Gateway, body: dict[str, Any], headers: dict[str, str] | None = None, bound_s: float = TIMEOUT_S + BOUND_S
) -> tuple[httpx.Response, float]:
    """POST /v1/chat/completions, failing the test if it takes longer than `bound_s`; the response and seconds."""
    started = time.perf_counter()
    async with asyncio.timeout(bound_s):
        response = await gw.client.post("/v1/chat/completions", json=body, headers=headers or {})
    return response, time.perf_counter() - started


def assert_envelope(response: httpx.Response, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def log_count(gw: Gateway) -> int:
    return len((await gw.client.get("/v1/logs", params={"limit": 1000})).json()["data"])


async def assert_stored_as_answered(gw: Gateway, reply: dict[str, Any]) -> dict[str, Any]:
    """GET the reply's log and check that it holds exactly what the client was told; returns the log."""
    response = await gw.client.get(f"/v1/logs/{reply['rewardgate']['log_id']}")
    assert response.status_code == 200, response.text
    log: dict[str, Any] = response.json()
    assert_log_matches(log, reply)
    return log


def integrity(db_path: Path) -> str:
    with sqlite3.connect(db_path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


# ---------------------------------------------------------------- upstream faults on k of N candidates

CANDIDATE_FAULTS = {
    "5xx": (status(500), "upstream_error", 500),
    "503": (status(503, retry_after="0"), "upstream_error", 503),
    "timeout": (Fault("hang"), "timeout", 504),
    "slow body": (Fault("trickle", delay_s=0.05), "timeout", 504),
    "garbage body": (Fault("garbage"), "invalid_response", 502),
    "not a completion": (Fault("not_completion"), "invalid_response", 502),
    "truncated body": (Fault("truncated"), "connection_error", 502),
}


@pytest.mark.parametrize("case", list(CANDIDATE_FAULTS))
async def test_k_of_n_failed_candidates_are_reported_last_and_stored(
    gw: Gateway, upstream: FaultUpstream, case: str
) -> None:
    fault, code, upstream_status = CANDIDATE_FAULTS[case]
    upstream.queue("m", fault, fault)  # 2 of the 4 parallel calls
    response, seconds = await post(gw, chat("fake:m", n=4, store=True), CRITERIA)

    assert response.status_code == 200, response.text
    reply = response.json()
    good, failed = reply["choices"][:2], reply["choices"][2:]
    for choice in good:
        assert choice["finish_reason"] == "stop" and choice["criteria_results"][SLUG]["status"] == "success"
        assert choice["rewardgate"]["score"] is not None and choice["rewardgate"]["criteria_errors"] == 0
    for choice in failed:
        assert choice["finish_reason"] == "error" and choice["message"]["content"] is None
        assert (choice["error"]["code"], choice["error"]["status"]) == (code, upstream_status)
        assert choice["criteria_results"] == {} and choice["rewardgate"]["score"] is None
    assert reply["usage"]["criteria"]["scored_candidates"] == 2
    assert seconds < TIMEOUT_S + BOUND_S
    await assert_stored_as_answered(gw, reply)
    await until(lambda: upstream.active == 0)  # the calls given up on were closed, not left hanging


async def test_mixed_faults_leave_the_one_good_candidate_first(gw: Gateway, upstream: FaultUpstream) -> None:
    upstream.queue("m", status(500), Fault("hang"), Fault("garbage"))
    response, _ = await post(gw, chat("fake:m", n=4, store=True, metadata={"case": "mixed"}), CRITERIA)

    reply = response.json()
    assert [c["finish_reason"] for c in reply["choices"]] == ["stop", "error", "error", "error"]
    assert sorted(c["error"]["code"] for c in reply["choices"][1:]) == ["invalid_response", "timeout", "upstream_error"]
    log = await assert_stored_as_answered(gw, reply)
    assert log["metadata"] == {"case": "mixed"}


@pytest.mark.parametrize(
    ("fault", "status_code", "code"),
    [(status(500), 500, "all_candidates_failed"), (Fault("hang"), 504, "all_candidates_failed")],
    ids=["5xx", "timeout"],
)
async def test_all_candidates_failing_is_one_clear_error_and_nothing_is_stored(
    gw: Gateway, upstream: FaultUpstream, fault: Fault, status_code: int, code: str
) -> None:
    upstream.queue("m", *[fault] * 3)
    response, seconds = await post(gw, chat("fake:m", n=3, store=True), CRITERIA)

    error = assert_envelope(response, status_code, code)
    assert "all 3 candidates failed" in error["message"]
    assert seconds < TIMEOUT_S + BOUND_S
    assert await log_count(gw) == 0
    await until(lambda: upstream.active == 0)


async def test_a_native_n_answer_with_too_few_choices_reports_the_missing_ones(
    gw: Gateway, upstream: FaultUpstream
) -> None:
    upstream.queue("m", Fault("short"))  # asked for 3 in one call, got 1
    response, _ = await post(gw, chat("native:m", n=3, store=True), CRITERIA)

    reply = response.json()
    assert [c["finish_reason"] for c in reply["choices"]] == ["stop", "error", "error"]
    assert {(c["error"]["code"], c["error"]["status"]) for c in reply["choices"][1:]} == {("missing_choice", 502)}
    await assert_stored_as_answered(gw, reply)


async def test_a_native_n_upstream_error_fails_the_request_with_the_upstreams_status(
    gw: Gateway, upstream: FaultUpstream
) -> None:
    upstream.queue("m", status(503, retry_after="7"))
    response, _ = await post(gw, chat("native:m", n=3, store=True), CRITERIA)

    assert_envelope(response, 503, "all_candidates_failed")
    assert await log_count(gw) == 0


async def test_the_upstreams_retry_after_reaches_the_client_when_every_candidate_fails(
    gw: Gateway, upstream: FaultUpstream
) -> None:
    upstream.queue("m", status(503, retry_after="7"))
    response, _ = await post(gw, chat("native:m", n=3), CRITERIA)
    assert response.headers.get("retry-after") == "7"


async def test_transient_5xx_are_retried_and_never_reach_the_client(
    tmp_path: Path, upstream: FaultUpstream, reward: FaultRewardServer
) -> None:
    async with running_gateway(tmp_path, upstream, reward.url, attempts=2) as gw:
        upstream.queue("m", status(503), status(502))
        response, _ = await post(gw, chat("fake:m", n=4, store=True), CRITERIA)

        reply = response.json()
        assert [c["finish_reason"] for c in reply["choices"]] == ["stop"] * 4
        assert upstream.calls["m"] == 6  # 4 calls, 2 retried
        await assert_stored_as_answered(gw, reply)


async def test_a_full_connection_pool_waits_within_the_timeout_not_after_it(
    tmp_path: Path, upstream: FaultUpstream, reward: FaultRewardServer
) -> None:
    """8 requests at a hanging upstream through a pool of 2 connections: the 6 waiting for a connection time out
    by the same deadline as the 2 holding one; afterwards the pool serves again."""
    async with running_gateway(tmp_path, upstream, reward.url, max_connections=2) as gw:
        upstream.queue("m", *[Fault("hang")] * 8)
        results = await asyncio.gather(*(post(gw, chat("fake:m")) for _ in range(8)))

        for response, seconds in results:
            assert_envelope(response, 504, "timeout")
            assert seconds < TIMEOUT_S + BOUND_S
        assert upstream.calls["m"] < 8  # some never got a connection
        await until(lambda: upstream.active == 0)
        response, _ = await post(gw, chat("fake:other"))
        assert response.status_code == 200


# ---------------------------------------------------------------- upstream faults, pass-through

PASSTHROUGH_FAULTS = {
    "5xx": (status(500), 500, "upstream_error"),
    "429 + Retry-After": (status(429, retry_after="3"), 429, "upstream_error"),
    "timeout": (Fault("hang"), 504, "timeout"),
    "slow body": (Fault("trickle", delay_s=0.05), 504, "timeout"),
    "garbage body": (Fault("garbage"), 502, "invalid_response"),
    "truncated body": (Fault("truncated"), 502, "connection_error"),
}


@pytest.mark.parametrize("case", list(PASSTHROUGH_FAULTS))
async def test_passthrough_faults_are_one_error_envelope_and_nothing_is_stored(
    gw: Gateway, upstream: FaultUpstream, case: str
) -> None:
    fault, status_code, code = PASSTHROUGH_FAULTS[case]
    upstream.queue("m", fault)
    response, seconds = await post(gw, chat("fake:m", store=True))

    assert_envelope(response, status_code, code)
    if fault.retry_after:
        assert response.headers["retry-after"] == fault.retry_after
    assert seconds < TIMEOUT_S + BOUND_S
    assert await log_count(gw) == 0
    await until(lambda: upstream.active == 0)


async def stream(gw: Gateway, body: dict[str, Any]) -> tuple[httpx.Response, bytes, float]:
    started = time.perf_counter()
    async with asyncio.timeout(TIMEOUT_S + BOUND_S):
        async with gw.client.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = await response.aread()
    return response, raw, time.perf_counter() - started


def events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for event in raw.decode().split("\n\n"):
        if event.startswith("data: "):
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def only_log(gw: Gateway) -> dict[str, Any]:
    logs = (await gw.client.get("/v1/logs")).json()["data"]
    assert len(logs) == 1
    return dict(logs[0])


@pytest.mark.parametrize(
    ("fault", "code"), [(Fault("stall"), "timeout"), (Fault("break"), "connection_error")], ids=["stall", "break"]
)
async def test_a_stream_failing_midway_ends_with_an_error_event_and_is_stored_as_failed(
    gw: Gateway, upstream: FaultUpstream, fault: Fault, code: str
) -> None:
    upstream.queue("m", fault)  # stall: the first chunk, then silence; break: then the connection drops
    response, raw, seconds = await stream(gw, chat("fake:m", stream=True, store=True))

    assert response.status_code == 200
    sent = events(raw)
    assert sent[0]["choices"][0]["delta"]["content"]  # the first chunk got through
    assert sent[-1]["error"]["code"] == code and "[DONE]" not in sent
    assert seconds < TIMEOUT_S + BOUND_S
    candidate = (await only_log(gw))["candidates"][0]
    assert candidate["status"] == "error" and candidate["error"].startswith(code + ":")
    assert candidate["message"]["content"] == sent[0]["choices"][0]["delta"]["content"]  # what the client got
    await until(lambda: upstream.active == 0)


async def test_a_stream_that_never_starts_is_a_504_envelope(gw: Gateway, upstream: FaultUpstream) -> None:
    upstream.queue("m", Fault("hang"))
    response, raw, seconds = await stream(gw, chat("fake:m", stream=True, store=True))

    assert response.status_code == 504 and json.loads(raw)["error"]["code"] == "timeout"
    assert seconds < TIMEOUT_S + BOUND_S
    assert await log_count(gw) == 0


async def test_a_slow_stream_within_the_idle_timeout_completes(gw: Gateway, upstream: FaultUpstream) -> None:
    upstream.queue("m", Fault("ok", delay_s=0.6 * TIMEOUT_S))  # every gap under the timeout, the whole stream over it
    response, raw, seconds = await stream(gw, chat("fake:m", stream=True, store=True))

    assert response.status_code == 200 and events(raw)[-1] == "[DONE]"
    assert seconds > TIMEOUT_S  # the timeout is per wait, not for the whole stream
    assert (await only_log(gw))["candidates"][0]["status"] == "ok"


async def test_a_garbage_stream_is_relayed_as_sent(gw: Gateway, upstream: FaultUpstream) -> None:
    """A transparent proxy: a 200 whose body is not SSE reaches the client unchanged (the openai package then
    fails to parse it); the log is stored with one failed candidate saying why."""
    upstream.queue("m", Fault("garbage"))
    response, raw, _ = await stream(gw, chat("fake:m", stream=True, store=True))

    assert response.status_code == 200 and raw == b"<html><body>502 Bad Gateway</body></html>"
    (candidate,) = (await only_log(gw))["candidates"]
    assert candidate["status"] == "error" and "no chat.completion.chunk events" in candidate["error"]


# ---------------------------------------------------------------- reward-server faults

SCORE_FAULTS = {
    "5xx": (status(500), "reward_server_error"),
    "503": (status(503), "reward_server_unavailable"),
    "slow": (Fault("ok", delay_s=2 * TIMEOUT_S), "timeout"),
    "no answer": (Fault("hang"), "timeout"),
    "garbage body": (Fault("garbage"), "invalid_response"),
    "NaN scores": (Fault("nan"), "invalid_response"),
    "too few scores": (Fault("wrong_count"), "invalid_response"),
    "truncated body": (Fault("truncated"), "reward_server_unavailable"),
}


def assert_criterion_failed(reply: dict[str, Any], code: str) -> None:
    """Every candidate answered, none scored: each carries the criterion's error and keeps the provider's order."""
    for position, choice in enumerate(reply["choices"]):
        assert choice["finish_reason"] == "stop" and choice["rewardgate"]["candidate_index"] == position
        result = choice["criteria_results"][SLUG]
        assert result["status"] == "error" and result["errorCode"] == code and result["errorMessage"]
        assert choice["rewardgate"]["criteria_errors"] == 1 and choice["rewardgate"]["score"] is None


@pytest.mark.parametrize("case", list(SCORE_FAULTS))
async def test_reward_server_faults_are_error_results_per_candidate(
    gw: Gateway, reward: FaultRewardServer, case: str
) -> None:
    fault, code = SCORE_FAULTS[case]
    reward.queue("score", fault)
    response, seconds = await post(gw, chat("fake:m", n=3, store=True), CRITERIA)

    assert response.status_code == 200, response.text
    reply = response.json()
    assert_criterion_failed(reply, code)
    assert seconds < TIMEOUT_S + BOUND_S
    await assert_stored_as_answered(gw, reply)
    await until(lambda: reward.active == 0)


async def test_a_reward_server_that_goes_down_gives_unavailable_results(gw: Gateway, reward: FaultRewardServer) -> None:
    response, _ = await post(gw, chat("fake:m", n=2), CRITERIA)
    assert response.json()["choices"][0]["criteria_results"][SLUG]["status"] == "success"
    await reward.stop()  # its model listing is still cached: scoring is what fails

    response, _ = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)
    assert_criterion_failed(response.json(), "reward_server_unavailable")
    await assert_stored_as_answered(gw, response.json())


async def test_a_reward_server_down_from_the_start_gives_unavailable_results(
    tmp_path: Path, upstream: FaultUpstream, reward: FaultRewardServer
) -> None:
    url = reward.url
    await reward.stop()
    async with running_gateway(tmp_path, upstream, url) as gw:
        response, _ = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)
        assert_criterion_failed(response.json(), "reward_server_unavailable")
        await assert_stored_as_answered(gw, response.json())


@pytest.mark.slow
async def test_a_hanging_model_listing_is_bounded_by_the_criteria_timeout(
    gw: Gateway, reward: FaultRewardServer
) -> None:
    """The reward-model listing (resolving op-criteria) waits at most criteria_timeout_s (capped at 5 s);
    the failure is then cached for 2 s."""
    reward.queue("models", Fault("hang"))
    response, seconds = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)

    assert_criterion_failed(response.json(), "timeout")
    assert seconds < 5.0
    await assert_stored_as_answered(gw, response.json())


# ---------------------------------------------------------------- store locked by another connection


class WriteLock:
    """Another connection holding the SQLite file's write lock (readers still pass, WAL)."""

    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, isolation_level=None)
        self._db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self._db.execute("ROLLBACK")
        self._db.close()


async def test_a_store_locked_past_the_busy_timeout_is_a_503_and_recovers(gw: Gateway) -> None:
    first, _ = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)
    lock = WriteLock(gw.db_path)
    try:
        passthrough, seconds = await post(gw, chat("fake:m", store=True), bound_s=BUSY_S + BOUND_S)
        best_of_n, _ = await post(gw, chat("fake:m", n=2, store=True), CRITERIA, bound_s=BUSY_S + BOUND_S)
        unstored, _ = await post(gw, chat("fake:m", n=2), CRITERIA)
        reads = await gw.client.get(f"/v1/logs/{first.json()['rewardgate']['log_id']}")
    finally:
        lock.release()

    for response in (passthrough, best_of_n):
        assert_envelope(response, 503, "store_unavailable")
        assert response.headers["retry-after"] == "1"
    assert BUSY_S <= seconds < BUSY_S + BOUND_S
    assert unstored.status_code == 200 and reads.status_code == 200  # what needs no write goes on
    after, _ = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)
    assert after.status_code == 200
    for acknowledged in (first, after):
        await assert_stored_as_answered(gw, acknowledged.json())
    assert await log_count(gw) == 2 and integrity(gw.db_path) == "ok"


async def test_a_lock_shorter_than_the_busy_timeout_only_delays_the_write(gw: Gateway) -> None:
    lock = WriteLock(gw.db_path)
    asyncio.get_running_loop().call_later(BUSY_S / 3, lock.release)
    response, seconds = await post(gw, chat("fake:m", n=2, store=True), CRITERIA)

    assert response.status_code == 200 and seconds >= BUSY_S / 3
    await assert_stored_as_answered(gw, response.json())


async def test_writes_queued_behind_a_held_lock_all_answer_within_one_busy_timeout(
    gw: Gateway, upstream: FaultUpstream
) -> None:
    """One worker thread owns the SQLite connection; a call's busy timeout runs from when it was queued, so
    writes queued while another connection holds the lock all fail within about one busy timeout, and a read
    queued behind them is not held up by their sum."""
    queued = 5
    lock = WriteLock(gw.db_path)
    try:
        bound_s = BUSY_S + BOUND_S
        writes = [asyncio.create_task(post(gw, chat("fake:m", store=True), bound_s=bound_s)) for _ in range(queued)]
        await until(lambda: upstream.calls["m"] == queued)  # each write is on its way to the store
        async with asyncio.timeout(bound_s):
            read = await gw.client.get("/v1/logs")
        results = await asyncio.gather(*writes)
    finally:
        lock.release()

    assert read.status_code in (200, 503)  # WAL readers do not need the lock, but share the worker's queue
    for response, _ in results:
        assert_envelope(response, 503, "store_unavailable")
    slowest = max(seconds for _, seconds in results)
    assert slowest < 2 * BUSY_S + BOUND_S
    assert await log_count(gw) == 0 and integrity(gw.db_path) == "ok"
