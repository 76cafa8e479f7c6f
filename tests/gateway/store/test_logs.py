"""The log store on both backends (tests/gateway/conftest.py): every operation, filters and cursors, exports,
locking, atomicity. The migrations are test_migrations.py's, what only one dialect does test_dialects.py's."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.formats import parse_line, split_for_prompt
from gateway.protocol import Log, render
from gateway.store import (
    MAX_PAGE,
    CandidateRecord,
    InvalidInputError,
    Latencies,
    LogNotFoundError,
    LogQuery,
    LogRecord,
    LogStore,
    MetadataError,
    StoreBusyError,
    StoreClosedError,
    new_log_id,
    open_store,
    preference_pair,
    validate_metadata,
)
from tests.gateway.conftest import Backend
from tests.gateway.store.conftest import REQUEST, T0, add, all_logs, failed, ok

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- create, get, ids


async def test_create_then_get_returns_everything_candidates_in_rank_order(store: LogStore) -> None:
    log = await add(store, at=T0, metadata={"team": "search"})
    assert re.fullmatch(r"log_[0-9A-HJKMNP-TV-Z]{26}", log.id)
    got = await store.get_log(log.id)
    assert got == log
    assert got.created_at == T0 and got.model == "openai:gpt-4o-mini" and got.request == REQUEST
    assert got.latencies == Latencies(120.0, 30.5, 160.25)
    assert got.metadata == {"team": "search"} and got.criteria_versions == {"support-rm": "v3"}
    assert [c.index for c in got.candidates] == [0, 2, 1]  # ranked best first, the failed one (unranked) last
    assert got.candidates[2] == failed(1)
    assert got.candidates[0].criteria_results["support-rm"]["version"] == "v3"


async def test_get_missing_log(store: LogStore) -> None:
    with pytest.raises(LogNotFoundError) as info:
        await store.get_log("log_00000000000000000000000000")
    assert info.value.log_id == "log_00000000000000000000000000"


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_log_id(T0 + timedelta(milliseconds=ms)) for ms in (0, 1, 1000, 86_400_000)]
    assert ids == sorted(ids)
    assert len({new_log_id(T0) for _ in range(1000)}) == 1000


async def test_the_injected_clock_dates_logs(store_url: str) -> None:
    s = await open_store(store_url, clock=lambda: T0)
    log = await add(s)
    assert log.created_at == T0 and (await s.get_log(log.id)).created_at == T0
    await s.aclose()


async def test_bad_inputs_are_refused(store: LogStore) -> None:
    with pytest.raises(InvalidInputError, match="timezone"):
        await add(store, at=datetime(2026, 1, 1))
    with pytest.raises(InvalidInputError, match=r"candidates\[0\].score"):
        await add(store, candidates=[ok(0, float("nan"))])
    with pytest.raises(InvalidInputError, match="query: the datetime must be timezone-aware"):
        await store.list_logs(LogQuery(since=datetime(2026, 1, 1)))
    for limit in (0, MAX_PAGE + 1):
        with pytest.raises(InvalidInputError, match="limit"):
            await store.list_logs(limit=limit)
    for cursor in ("nope", "bm9wZQ==", "ünicode"):
        with pytest.raises(InvalidInputError, match="cursor"):
            await store.list_logs(cursor=cursor)
    assert await all_logs(store) == []


# ---------------------------------------------------------------- filters, pagination, exports


async def test_list_filters_metadata_model_and_time(store: LogStore) -> None:
    hour = timedelta(hours=1)
    a = await add(store, at=T0, metadata={"team": "a", "env": "prod"}, model="m1")
    b = await add(store, at=T0 + hour, metadata={"team": "a", "env": "dev"}, model="m2")
    c = await add(store, at=T0 + 2 * hour, metadata={"team": "b", "env": "prod"}, model="m1")
    d = await add(store, at=T0 + 3 * hour)

    async def ids(**kwargs: Any) -> list[str]:
        return [log.id for log in await all_logs(store, LogQuery(**kwargs))]

    assert await ids() == [d.id, c.id, b.id, a.id]  # newest first
    assert await ids(metadata={"team": "a"}) == [b.id, a.id]
    assert await ids(metadata={"team": "a", "env": "prod"}) == [a.id]  # every pair must match
    assert await ids(metadata={"team": "c"}) == []
    assert await ids(model="m1") == [c.id, a.id]
    assert await ids(since=T0 + hour, before=T0 + 3 * hour) == [c.id, b.id]  # since inclusive, before exclusive
    assert await ids(metadata={"env": "prod"}, model="m1", since=T0 + hour) == [c.id]


async def test_cursor_pages_are_stable_while_new_logs_arrive(store: LogStore) -> None:
    # Seven logs, three of them in the same microsecond, so the id breaks the tie.
    times = [T0, T0, T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2), T0 - timedelta(days=1), T0]
    originals = {(await add(store, at=t)).id for t in times}
    expected = [log.id for log in await all_logs(store)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_logs(limit=3, cursor=cursor)
        seen += [log.id for log in page.logs]
        await add(store)  # a new log arrives between pages (now, newer than all of them)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected and set(seen) == originals
    assert len(await all_logs(store)) == 7 + 3


async def test_export_jsonl_streams_the_filtered_logs(
    store: LogStore, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.store.core.EXPORT_BATCH", 2)  # several queries for five logs
    logs = [await add(store, at=T0 + timedelta(minutes=i), metadata={"keep": str(i % 2 == 0)}) for i in range(8)]
    stream = store.export_jsonl(LogQuery(metadata={"keep": "True"}))
    assert hasattr(stream, "__anext__") and not isinstance(stream, list)
    lines = [line async for line in stream]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [log.id for log in reversed(logs) if log.metadata["keep"] == "True"]
    first = records[0]
    assert first == json.loads(json.dumps(render(Log, logs[6])))
    assert first["created_at"] == "2026-01-01T12:06:00.123456Z"
    assert first["latencies"] == {"upstream_ms": 120.0, "scoring_ms": 30.5, "total_ms": 160.25}
    assert [c["index"] for c in first["candidates"]] == [0, 2, 1]
    assert first["candidates"][2]["status"] == "error" and first["candidates"][2]["error"] == "upstream timed out"


async def test_export_pairs_best_vs_worst_in_the_seed_format(store: LogStore) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    ranked = await add(store, candidates=[ok(0, 0.9, 0, "Paris."), failed(1), ok(2, 0.2, 2, "Lyon."), ok(3, 0.5, 1)])
    errored_low = await add(store, candidates=[ok(0, 0.7, 0, "Paris"), ok(1, 0.6, 1, "paris?"), failed(2, -5.0)])
    with_tools = await add(store, request={**REQUEST, "tools": tools}, candidates=[ok(0, 2.0, 0), ok(1, -1.0, 1)])
    await add(store, candidates=[ok(0, 0.5, 0), ok(1, 0.5, 1)])  # tie: skipped
    await add(store, candidates=[ok(0, 0.5, 0), failed(1), failed(2)])  # one success: skipped
    await add(store, candidates=[ok(0, 0.9, 0, "Same."), ok(1, 0.1, 1, "Same.")])  # identical answers: skipped
    await add(store, request={"messages": "not a list"}, candidates=[ok(0, 0.9, 0), ok(1, 0.1, 1)])  # skipped

    lines = [line async for line in store.export_pairs()]
    records = {json.loads(line)["metadata"]["log_id"]: json.loads(line) for line in lines}
    assert set(records) == {ranked.id, errored_low.id, with_tools.id}
    for line in lines:
        pair = parse_line(line)  # the seed format's own reader accepts every line
        assert "split" not in json.loads(line) and pair.split == split_for_prompt(pair.prompt)
        assert [m.to_dict() for m in pair.prompt] == REQUEST["messages"]
    best_worst = {
        log_id: (r["messages"][-1]["content"], r["rejected_message"]["content"]) for log_id, r in records.items()
    }
    assert best_worst[ranked.id] == ("Paris.", "Lyon.")
    assert best_worst[errored_low.id] == ("Paris", "paris?")  # the errored candidate is never the rejected one
    assert records[ranked.id]["metadata"] == {"log_id": ranked.id, "chosen_score": 0.9, "rejected_score": 0.2}
    assert records[ranked.id]["rejected_message"] == {"role": "assistant", "content": "Lyon."}  # no "refusal"
    assert records[with_tools.id]["tools"] == tools


def test_preference_pair_leaves_out_candidates_early_rejection_cut_short() -> None:
    rejected = replace(ok(2, 0.01, 2, "Par"), finish_reason="rejected")
    log = LogRecord("log_x", T0, "m", REQUEST, Latencies(), {}, {}, (ok(0, 0.9, 0, "Paris."), ok(1, 0.2, 1), rejected))
    pair = preference_pair(log)
    assert pair is not None and pair["metadata"]["rejected_score"] == 0.2
    assert preference_pair(replace(log, candidates=(ok(0, 0.9, 0), rejected))) is None


def test_preference_pair_of_too_few_candidates_is_none() -> None:
    log = LogRecord("log_x", T0, "m", REQUEST, Latencies(), {}, {}, (ok(0, 0.9, 0),))
    assert preference_pair(log) is None


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("metadata", "key", "reason"),
    [
        ({"k" * 65: "v"}, "k" * 65, "65 characters (limit 64)"),
        ({"ok": "v", "topic": "x" * 513}, "topic", "513 characters (limit 512)"),
        ({"topic": 3}, "topic", "must be a string, got int"),
        ({f"k{i}": "v" for i in range(17)}, "k16", "limit 16 keys"),
    ],
)
async def test_metadata_errors_name_the_key(store: LogStore, metadata: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(MetadataError) as info:
        await add(store, metadata=metadata)
    assert info.value.key == key and repr(key) in str(info.value) and reason in str(info.value)
    assert await all_logs(store) == []
    log = await add(store)
    with pytest.raises(MetadataError) as info:
        await store.update_metadata(log.id, metadata)
    assert info.value.key == key
    assert (await store.get_log(log.id)).metadata == {}


def test_metadata_at_the_limits_is_accepted() -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert validate_metadata(metadata) == metadata
    with pytest.raises(MetadataError, match="must be an object"):
        validate_metadata(["not", "a", "map"])


async def test_update_metadata_merges_removes_and_reindexes(store: LogStore) -> None:
    log = await add(store, metadata={"team": "a", "env": "prod"})
    updated = await store.update_metadata(log.id, {"env": "dev", "reviewed": "yes", "team": None})
    assert updated.metadata == {"env": "dev", "reviewed": "yes"}
    assert updated == await store.get_log(log.id)
    assert [x.id for x in await all_logs(store, LogQuery(metadata={"env": "dev"}))] == [log.id]
    assert await all_logs(store, LogQuery(metadata={"env": "prod"})) == []
    assert await all_logs(store, LogQuery(metadata={"team": "a"})) == []
    full = await add(store, metadata={f"k{i}": "v" for i in range(16)})
    with pytest.raises(MetadataError) as info:
        await store.update_metadata(full.id, {"k0": "changed", "one-more": "v"})
    assert info.value.key == "one-more"
    assert (await store.get_log(full.id)).metadata == full.metadata  # a refused update changes nothing
    with pytest.raises(LogNotFoundError):
        await store.update_metadata("log_missing", {"a": "b"})


async def test_update_metadata_where_patches_every_match_once(store: LogStore) -> None:
    """The matches are read before the first write: a patch of the filtered key itself reaches each log once."""
    one, two = await add(store, metadata={"prompt": "a"}), await add(store, metadata={"prompt": "a", "k": "v"})
    other = await add(store, metadata={"prompt": "b"}, model="other-model")
    assert await store.update_metadata_where(LogQuery(metadata={"prompt": "a"}), {"prompt": "z", "k": None}) == 2
    assert [(await store.get_log(x.id)).metadata for x in (one, two, other)] == [
        {"prompt": "z"},
        {"prompt": "z"},
        {"prompt": "b"},
    ]
    assert await store.update_metadata_where(LogQuery(metadata={"prompt": "a"}), {"x": "y"}) == 0
    assert await store.update_metadata_where(LogQuery(model="other-model"), {"x": "y"}) == 1


async def test_completion_ids_and_cache_hits_are_stored_and_filtered(store: LogStore) -> None:
    plain = await add(store)
    hit = await store.create_log(
        model="m", request=REQUEST, candidates=[ok(0, 0.5, 0)], latencies=Latencies(), completion_id="chatcmpl-7",
        cache_hit=True,
    )  # fmt: skip
    assert (plain.completion_id, plain.cache_hit) == (None, False)
    assert await store.get_log(hit.id) == hit and (hit.completion_id, hit.cache_hit) == ("chatcmpl-7", True)
    assert [x.id for x in await all_logs(store, LogQuery(completion_id="chatcmpl-7"))] == [hit.id]
    assert render(Log, hit)["completion_id"] == "chatcmpl-7" and render(Log, hit)["cache_hit"] is True


async def test_a_budgeted_best_of_n_keeps_what_it_generated_and_saved(store: LogStore) -> None:
    budget = {"strategy": "early_rejection", "requested_strategy": "early_rejection", "generated_tokens": 300,
              "plain_tokens": 800, "tokens_saved": 500, "candidates": 8, "rejected": 6, "checkpoints": [16, 32],
              "rounds": 1, "fallback": None, "keep": 0.25, "setting": "request"}  # fmt: skip
    rejected = replace(ok(1, 0.1, 1, "Par"), finish_reason="rejected")
    log = await store.create_log(
        model="m", request=REQUEST, candidates=[ok(0, 0.5, 0), rejected], latencies=Latencies(), budget=budget
    )
    again = await store.get_log(log.id)
    assert again == log and again.budget == budget and again.candidates[1].finish_reason == "rejected"
    assert render(Log, again)["budget"] == budget
    assert (await add(store)).budget is None and render(Log, await add(store))["budget"] is None


# ---------------------------------------------------------------- durability


async def test_data_survives_close_and_reopen(store_url: str) -> None:
    s = await open_store(store_url)
    logs = [await add(s, at=T0 + timedelta(seconds=i), metadata={"i": str(i)}) for i in range(3)]
    updated = await s.update_metadata(logs[0].id, {"reviewed": "yes"})
    await s.aclose()
    s = await open_store(store_url)
    assert await all_logs(s) == [logs[2], logs[1], updated]
    await s.aclose()


async def test_aclose_is_idempotent_and_later_calls_fail_clearly(store_url: str) -> None:
    s = await open_store(store_url)
    await add(s)
    await s.aclose()
    await s.aclose()
    with pytest.raises(StoreClosedError):
        await s.get_log("log_x")
    with pytest.raises(StoreClosedError):
        await add(s)


# ---------------------------------------------------------------- concurrency, locking, atomicity


async def test_fifty_concurrent_creates_all_land(store: LogStore) -> None:
    logs = await asyncio.gather(*(add(store, metadata={"n": str(i)}) for i in range(50)))
    assert len({log.id for log in logs}) == 50
    stored = await all_logs(store)
    assert {log.id for log in stored} == {log.id for log in logs}
    assert sorted(int(log.metadata["n"]) for log in stored) == list(range(50))


async def test_a_locked_database_gives_busy_error_not_a_hang(backend: Backend) -> None:
    s = await open_store(backend.url, busy_timeout_s=0.2)
    kept = await add(s)
    async with backend.write_lock():
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="locked"):
            await asyncio.wait_for(add(s), timeout=30)
        with pytest.raises(StoreBusyError):
            await asyncio.wait_for(s.update_metadata(kept.id, {"a": "b"}), timeout=30)
        assert time.monotonic() - started < 10  # two waits of 0.2 s each, with room for a loaded machine
        assert await s.get_log(kept.id) == kept  # readers are not blocked by the writer's lock
    after = await add(s)
    assert {log.id for log in await all_logs(s)} == {kept.id, after.id}
    await s.aclose()


_FAIL_SECOND = {  # the second candidate's INSERT fails inside the transaction
    "sqlite": ["CREATE TRIGGER fail_second BEFORE INSERT ON candidates WHEN NEW.idx = 1"
               " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"],
    "postgres": ["CREATE FUNCTION fail_second() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                 " RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = 'disk says no'; END $$",
                 "CREATE TRIGGER fail_second BEFORE INSERT ON candidates FOR EACH ROW WHEN (NEW.idx = 1)"
                 " EXECUTE FUNCTION fail_second()"],
}  # fmt: skip


async def test_a_failing_candidate_insert_leaves_no_trace(backend: Backend) -> None:
    s = await open_store(backend.url)
    for statement in _FAIL_SECOND[backend.name]:
        await backend.sql(statement)
    with pytest.raises(InvalidInputError, match="disk says no"):
        await add(s, metadata={"team": "a"}, candidates=[ok(0, 0.9, 0), ok(1, 0.5, 1), ok(2, 0.1, 2)])
    with pytest.raises(InvalidInputError):  # duplicate candidate index: the primary key refuses the third insert
        await add(s, candidates=[ok(0, 0.9, 0), ok(2, 0.5, 1), ok(2, 0.1, 2)])
    with pytest.raises(InvalidInputError, match=r"candidates\[2\].criteria_results"):
        bad = CandidateRecord(2, None, "error", criteria_results={"rm": {"score": {1, 2}}})
        await add(s, candidates=[ok(0, 0.9, 0), bad])
    for table in ("logs", "candidates", *(["log_metadata"] if backend.name == "sqlite" else [])):
        assert await backend.count(table) == 0
    assert await all_logs(s) == []
    await s.aclose()
