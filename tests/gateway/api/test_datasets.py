"""The datasets and feedback API end to end over ASGI (docs/LIFECYCLE.md): datasets, uploads (JSONL and JSON, bad
entries rejected whole or skipped), entries, export, pairs from logs and both feedback rules. Logs come from real
best-of-N and pass-through requests through the gateway (fake upstream, REAL router, SQLite store and embedded
reward server with a tiny model); nothing inside is mocked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.formats import load_pairs, parse_pair, split_for_prompt
from gateway.store import preference_pair
from tests.gateway.fakes import ANSWERS, MESSAGES, Gateway

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}
JSONL = {"content-type": "application/x-ndjson"}


def seed(i: int, split: str | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"good {i}"}],
        "rejected_message": {"role": "assistant", "content": f"bad {i}"},
        **extra,
    }
    return record if split is None else {**record, "split": split}


GOOD = [
    seed(0, "TRAIN"),
    seed(1, "TEST"),
    seed(2),
    seed(3),
    {"prompt": "question 4", "chosen": "yes", "rejected": "no"},
]


def jsonl(records: list[Any]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records) + b"\n"


async def make(gw: Gateway, name: str, **extra: Any) -> dict[str, Any]:
    response = await gw.client.post("/v1/datasets", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_entries(gw: Gateway, dataset: str) -> list[dict[str, Any]]:
    body = (await gw.client.get(f"/v1/datasets/{dataset}/entries", params={"limit": "1000"})).json()
    data: list[dict[str, Any]] = body["data"]
    return data


async def chat(gw: Gateway, n: int, metadata: dict[str, str], criteria: bool = True) -> dict[str, Any]:
    body = {"model": "ok", "messages": MESSAGES, "n": n, "store": True, "metadata": metadata}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=CRITERIA if criteria else {})
    assert response.status_code == 200, response.text
    completion: dict[str, Any] = response.json()
    return completion


# ---------------------------------------------------------------- datasets


async def test_create_list_get_delete(gw: Gateway) -> None:
    support = await make(gw, "support", description="tickets")
    assert support["id"].startswith("ds_") and support["object"] == "dataset"
    assert (support["entries"], support["counts"]) == (0, {"TRAIN": 0, "TEST": 0})
    sales = await make(gw, "sales")
    taken = await gw.client.post("/v1/datasets", json={"name": "support"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "dataset_exists"
    listing = (await gw.client.get("/v1/datasets")).json()
    assert listing["object"] == "list" and [d["id"] for d in listing["data"]] == [sales["id"], support["id"]]
    assert (await gw.client.get(f"/v1/datasets/{support['id']}")).json() == support
    assert (await gw.client.get("/v1/datasets/support")).json() == support
    await gw.client.post("/v1/datasets/support/entries", json={"entries": GOOD})
    deleted = await gw.client.delete("/v1/datasets/support")
    assert deleted.json() == {"id": support["id"], "deleted": True}
    for response in (
        await gw.client.get("/v1/datasets/support"),
        await gw.client.get(f"/v1/datasets/{support['id']}/entries"),
        await gw.client.delete("/v1/datasets/support"),
        await gw.client.post("/v1/datasets/nothing/entries", json={"entries": GOOD}),
        await gw.client.get("/v1/datasets/nothing/export"),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"
    assert [d["name"] for d in (await gw.client.get("/v1/datasets")).json()["data"]] == ["sales"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "ds_01HZZZZZZZZZZZZZZZZZZZZZZZ"}, "name"),  # shaped like an id
        ({}, "name"),
        ({"name": "ok", "description": 3}, "description"),
        ({"name": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_bad_creates_are_400_naming_the_field(gw: Gateway, body: dict[str, Any], param: str) -> None:
    response = await gw.client.post("/v1/datasets", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert (await gw.client.get("/v1/datasets")).json()["data"] == []


# ---------------------------------------------------------------- uploads, entries, export


async def test_uploads_jsonl_and_json_fix_the_split_and_export_round_trips(gw: Gateway) -> None:
    await make(gw, "d")
    response = await gw.client.post("/v1/datasets/d/entries", content=jsonl(GOOD[:3]), headers=JSONL)
    assert response.status_code == 200, response.text
    assert (response.json()["added"], response.json()["invalid"]) == (3, [])
    response = await gw.client.post("/v1/datasets/d/entries", json={"entries": GOOD[3:]})
    expected = [parse_pair(r).to_json() for r in GOOD]  # normalised, every split fixed
    counts = {s: sum(1 for p in expected if p["split"] == s) for s in ("TRAIN", "TEST")}
    assert response.json()["added"] == 2 and response.json()["dataset"]["counts"] == counts
    assert response.json()["dataset"]["entries"] == 5
    entries = await all_entries(gw, "d")
    assert [e["pair"] for e in entries] == expected
    assert {(e["source"], e["source_ref"]) for e in entries} == {("upload", None)}
    assert [e["split"] for e in entries] == [p["split"] for p in expected]
    missing = parse_pair(GOOD[2])
    assert entries[2]["split"] == split_for_prompt(missing.prompt)  # the hash split, stored
    assert entries[4]["pair"]["messages"][-1] == {"role": "assistant", "content": "yes"}  # seed shape

    export = await gw.client.get("/v1/datasets/d/export")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="d.jsonl"' in export.headers["content-disposition"]
    assert [p.to_json() for p in load_pairs(export.text.splitlines()).pairs] == expected
    tests = (await gw.client.get("/v1/datasets/d/export", params={"split": "TEST"})).text.splitlines()
    assert [json.loads(line) for line in tests] == [p for p in expected if p["split"] == "TEST"]


async def test_a_byte_order_mark_at_the_start_of_an_upload_is_accepted(gw: Gateway) -> None:
    """Editors on Windows (Notepad) start a UTF-8 file with one; anywhere else it is still a bad line."""
    await make(gw, "d")
    body = b"\xef\xbb\xbf" + jsonl(GOOD[:2])
    response = await gw.client.post("/v1/datasets/d/entries", content=body, headers=JSONL)
    assert response.status_code == 200 and response.json()["added"] == 2, response.text
    later = jsonl(GOOD[:1]) + b"\xef\xbb\xbf" + jsonl(GOOD[1:2])
    refused = await gw.client.post("/v1/datasets/d/entries", content=later, headers=JSONL)
    assert refused.status_code == 400 and [e["line"] for e in refused.json()["invalid"]] == [2]


async def test_bad_entries_reject_the_whole_upload_listing_every_one(gw: Gateway) -> None:
    await make(gw, "d")
    lines = [
        json.dumps(seed(0)),
        "not json",
        "",  # blank lines are skipped, not entries
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "rejected_message": "no"}),
        json.dumps(seed(1)),
        json.dumps(seed(2, "VALID")),
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],'
        ' "rejected_message": "b", "metadata": {"x": NaN}}',
    ]
    body = "\n".join(lines).encode()
    response = await gw.client.post("/v1/datasets/d/entries", content=body, headers=JSONL)
    assert response.status_code == 400
    reply = response.json()
    assert reply["error"]["code"] == "invalid_entries" and reply["error"]["param"] == "entries"
    assert [(e["index"], e["line"]) for e in reply["invalid"]] == [(1, 2), (2, 4), (4, 6), (5, 7)]
    errors = [e["error"] for e in reply["invalid"]]
    assert errors[0].startswith("invalid JSON") and "last message must be the assistant" in errors[1]
    assert "split" in errors[2] and "not storable as JSON" in errors[3]
    assert "4 invalid" in reply["error"]["message"]
    assert (await gw.client.get("/v1/datasets/d")).json()["entries"] == 0  # nothing added

    entries = [seed(0), {"messages": []}, seed(1), seed(1, rejected_message={"role": "user", "content": "x"})]
    response = await gw.client.post("/v1/datasets/d/entries", json={"entries": entries})
    assert [(e["index"], e["line"]) for e in response.json()["invalid"]] == [(1, 2), (3, 4)]
    assert (await gw.client.get("/v1/datasets/d")).json()["entries"] == 0

    kept = await gw.client.post("/v1/datasets/d/entries?skip_invalid=true", content=body, headers=JSONL)
    assert kept.status_code == 200 and kept.json()["added"] == 2
    assert [(e["index"], e["line"]) for e in kept.json()["invalid"]] == [(1, 2), (2, 4), (4, 6), (5, 7)]
    assert [e["pair"] for e in await all_entries(gw, "d")] == [parse_pair(seed(0)).to_json(),
                                                                parse_pair(seed(1)).to_json()]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "headers", "param"),
    [
        (b"", JSONL, "entries"),  # an empty upload
        (b"\n\n", JSONL, "entries"),
        (b'{"entries": []}', {}, "entries"),
        (b'{"entries": {"a": 1}}', {}, "entries"),
        (b'{"rows": []}', {}, "rows"),
        (b"[1]", {}, "body"),
    ],
)
async def test_malformed_uploads_are_400(gw: Gateway, content: bytes, headers: dict[str, str], param: str) -> None:
    await make(gw, "d")
    response = await gw.client.post("/v1/datasets/d/entries", content=content, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_entries_paginate_filter_and_delete(gw: Gateway) -> None:
    await make(gw, "d")
    records = [seed(i, "TEST" if i in (1, 4) else "TRAIN") for i in range(6)]
    await gw.client.post("/v1/datasets/d/entries", json={"entries": records})
    pages, cursor = [], None
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = (await gw.client.get("/v1/datasets/d/entries", params=params)).json()
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p["data"]) for p in pages] == [4, 2] and [p["has_more"] for p in pages] == [True, False]
    ids = [e["id"] for p in pages for e in p["data"]]
    assert all(i.startswith("dse_") for i in ids)
    assert [e["pair"]["messages"][0]["content"] for p in pages for e in p["data"]] == [
        f"question {i}" for i in range(6)
    ]
    tests = (await gw.client.get("/v1/datasets/d/entries", params={"split": "TEST"})).json()["data"]
    assert [e["id"] for e in tests] == [ids[1], ids[4]]
    for params in ({"limit": "x"}, {"limit": "0"}, {"split": "DEV"}, {"cursor": "???"}):
        assert (await gw.client.get("/v1/datasets/d/entries", params=params)).status_code == 400
    assert (await gw.client.get("/v1/datasets/d/export", params={"split": "DEV"})).status_code == 400

    deleted = await gw.client.delete(f"/v1/datasets/d/entries/{ids[1]}")
    assert deleted.json() == {"id": ids[1], "deleted": True}
    dataset = (await gw.client.get("/v1/datasets/d")).json()
    assert dataset["entries"] == 5 and dataset["counts"] == {"TRAIN": 4, "TEST": 1}
    again = await gw.client.delete(f"/v1/datasets/d/entries/{ids[1]}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "entry_not_found"
    await make(gw, "other")
    assert (await gw.client.delete(f"/v1/datasets/other/entries/{ids[2]}")).status_code == 404


# ---------------------------------------------------------------- pairs from logs


async def test_from_logs_by_ids_and_by_filter_once_per_log(gw: Gateway) -> None:
    await make(gw, "d")
    ranked = [(await chat(gw, 3, {"team": "a"}))["rewardgate"]["log_id"] for _ in range(2)]
    other = (await chat(gw, 3, {"team": "b"}))["rewardgate"]["log_id"]
    plain = (await chat(gw, 1, {"team": "a"}, criteria=False))["rewardgate"]["log_id"]  # one unscored candidate

    response = await gw.client.post("/v1/datasets/d/entries/from-logs", json={"log_ids": [ranked[0], "log_nope"]})
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1
    assert response.json()["skipped"] == [{"log_id": "log_nope", "reason": "no log with that id"}]

    response = await gw.client.post("/v1/datasets/d/entries/from-logs", json={"metadata": {"team": "a"}})
    skipped = {s["log_id"]: s["reason"] for s in response.json()["skipped"]}
    assert response.json()["added"] == 1  # ranked[1]; ranked[0] is in already
    assert skipped == {plain: "fewer than two scored candidates (0)", ranked[0]: "already in the dataset"}

    entries = await all_entries(gw, "d")
    assert [(e["source"], e["source_ref"]) for e in entries] == [("log", ranked[0]), ("log", ranked[1])]
    for entry in entries:
        made = preference_pair(await gw.store.get_log(entry["source_ref"]))
        assert made is not None and entry["pair"] == parse_pair(made).to_json()
        assert entry["pair"]["messages"][-1]["content"] in ANSWERS
        assert entry["pair"]["metadata"]["chosen_score"] > entry["pair"]["metadata"]["rejected_score"]

    since = {"metadata": {}, "model": "ok", "since": "2000-01-01T00:00:00Z", "before": "2999-01-01T00:00:00Z"}
    response = await gw.client.post("/v1/datasets/d/entries/from-logs", json=since)
    assert response.json()["added"] == 1 and other not in {s["log_id"] for s in response.json()["skipped"]}
    for bad in (
        {},
        {"log_ids": []},
        {"log_ids": [ranked[0]], "metadata": {}},
        {"metadata": {"team": 1}},
        {"metadata": {}, "since": "yesterday"},
        {"metadata": {}, "since": "2026-01-01T00:00:00"},  # no timezone
        {"metadata": {}, "colour": "red"},
    ):
        assert (await gw.client.post("/v1/datasets/d/entries/from-logs", json=bad)).status_code == 400, bad


# ---------------------------------------------------------------- feedback


async def test_feedback_choice_pairs_it_with_every_other_produced_candidate(gw: Gateway) -> None:
    completion = await chat(gw, 3, {"team": "a"})
    log_id, choices = completion["rewardgate"]["log_id"], completion["choices"]
    body = {"log_id": log_id, "choice_index": 2, "dataset": "prefs"}
    response = await gw.client.post("/v1/feedback", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 2 and response.json()["skipped"] == []
    assert response.json()["dataset"]["name"] == "prefs"  # created on the way
    entries = await all_entries(gw, "prefs")
    assert {(e["source"], e["source_ref"]) for e in entries} == {("feedback", log_id)}
    chosen = choices[2]["message"]["content"]
    assert [e["pair"]["messages"][-1]["content"] for e in entries] == [chosen, chosen]
    assert [e["pair"]["rejected_message"]["content"] for e in entries] == [c["message"]["content"] for c in choices[:2]]
    assert entries[0]["pair"]["messages"][:-1] == MESSAGES
    assert entries[0]["pair"]["metadata"] == {"log_id": log_id, "feedback": "choice", "chosen_choice": 2,
                                              "rejected_choice": 0}  # fmt: skip

    # six candidates from the fake upstream's five answers: one text comes twice and cannot pair with its twin
    completion = await chat(gw, 6, {"team": "a"})
    texts = [c["message"]["content"] for c in completion["choices"]]
    twin = next(i for i, text in enumerate(texts) if texts.count(text) == 2)
    body = {"log_id": completion["rewardgate"]["log_id"], "choice_index": twin, "dataset": "prefs"}
    response = (await gw.client.post("/v1/feedback", json=body)).json()
    assert response["added"] == 4 and response["dataset"]["entries"] == 6
    (skipped,) = response["skipped"]
    assert skipped["reason"] == "chosen and rejected answers are identical"


async def test_feedback_that_makes_no_pair_is_400_and_creates_nothing(gw: Gateway) -> None:
    ranked = (await chat(gw, 2, {"team": "a"}))["rewardgate"]["log_id"]
    plain = (await chat(gw, 1, {"team": "a"}, criteria=False))["rewardgate"]["log_id"]
    cases = [
        ({"log_id": plain, "choice_index": 0, "dataset": "prefs"}, 400, "no_pair"),  # one produced candidate
        ({"log_id": ranked, "choice_index": 2, "dataset": "prefs"}, 400, None),  # no such choice
        ({"log_id": ranked, "choice_index": True, "dataset": "prefs"}, 400, None),
        ({"log_id": ranked, "dataset": "prefs"}, 400, None),
        ({"log_id": ranked, "choice_index": 0}, 400, None),  # no dataset
        ({"log_id": ranked, "choice_index": 0, "dataset": "bad name!"}, 404, "dataset_not_found"),
        ({"log_id": ranked, "choice_index": 0, "dataset": "prefs", "thread": "t"}, 400, None),
        ({"log_id": ranked, "choice_index": 0, "dataset": "prefs", "colour": 1}, 400, None),
        ({"log_id": "log_nope", "choice_index": 0, "dataset": "prefs"}, 404, "log_not_found"),
    ]
    for body, status, code in cases:
        response = await gw.client.post("/v1/feedback", json=body)
        assert response.status_code == status, (body, response.text)
        if code is not None:
            assert response.json()["error"]["code"] == code
    assert (await gw.client.get("/v1/datasets")).json()["data"] == []


async def test_feedback_thread_pairs_the_accepted_response_with_the_first(gw: Gateway) -> None:
    logs = [(await chat(gw, 1, {"rg_thread": "t1"}, criteria=False))["rewardgate"]["log_id"] for _ in range(3)]
    await chat(gw, 1, {"rg_thread": "other"}, criteria=False)
    await make(gw, "prefs")
    response = await gw.client.post("/v1/feedback", json={"thread": "t1", "dataset": "prefs"})
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1 and response.json()["dataset"]["entries"] == 1
    # pass-through answers come in ANSWERS order: the first log got ANSWERS[0], the newest ANSWERS[2]
    (entry,) = await all_entries(gw, "prefs")
    assert (entry["source"], entry["source_ref"]) == ("feedback", logs[2])
    assert entry["pair"]["messages"] == [*MESSAGES, {"role": "assistant", "content": ANSWERS[2]}]
    assert entry["pair"]["rejected_message"] == {"role": "assistant", "content": ANSWERS[0]}
    assert entry["pair"]["metadata"] == {"thread": "t1", "feedback": "thread", "accepted_log_id": logs[2],
                                         "first_log_id": logs[0]}  # fmt: skip

    body = {"thread": "t1", "dataset": "prefs", "accepted_log_id": logs[1]}
    assert (await gw.client.post("/v1/feedback", json=body)).json()["added"] == 1
    second = (await all_entries(gw, "prefs"))[1]["pair"]
    assert (second["messages"][-1]["content"], second["rejected_message"]["content"]) == (ANSWERS[1], ANSWERS[0])

    cases = [
        ({"thread": "other", "dataset": "prefs"}, 400, "no_pair"),  # one log
        ({"thread": "t1", "dataset": "prefs", "accepted_log_id": logs[0]}, 400, "no_pair"),  # the first itself
        ({"thread": "t1", "dataset": "prefs", "accepted_log_id": "log_nope"}, 404, "log_not_found"),
        ({"thread": "nobody", "dataset": "prefs"}, 404, "thread_not_found"),
        ({"thread": "", "dataset": "prefs"}, 400, None),
        ({"thread": "t1", "dataset": "prefs", "choice_index": 0}, 400, None),
    ]
    for body, status, code in cases:
        response = await gw.client.post("/v1/feedback", json=body)
        assert response.status_code == status, (body, response.text)
        if code is not None:
            assert response.json()["error"]["code"] == code
    other_log = (await gw.client.get("/v1/logs", params={"metadata.rg_thread": "other"})).json()["data"][0]["id"]
    body = {"thread": "t1", "dataset": "prefs", "accepted_log_id": other_log}
    response = await gw.client.post("/v1/feedback", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "accepted_log_id"
    assert (await gw.client.get("/v1/datasets/prefs")).json()["entries"] == 2
