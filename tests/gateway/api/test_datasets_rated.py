"""Datasets of rated responses over ASGI (gateway/service/datasets.py, feedback.py): uploads of rated responses with
the same per-line report as pairs, one kind per dataset, export for the trainer, and feedback with a `rating`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.formats import load_rated
from tests.gateway.fakes import MESSAGES, Gateway

pytestmark = pytest.mark.anyio
JSONL = {"content-type": "application/x-ndjson"}
PAIR = {"prompt": "question", "chosen": "yes", "rejected": "no"}


def rated(i: int, reward: object = 1.0, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    return {"messages": messages, "reward": reward, **extra}


def jsonl(records: list[Any]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records) + b"\n"


async def test_rated_responses_upload_with_every_bad_line_reported_and_export(gw: Gateway) -> None:
    assert (await gw.client.post("/v1/datasets", json={"name": "ratings"})).status_code == 201
    body = jsonl([rated(0, 5, split="TRAIN"), rated(1, "high"), rated(2, 1, weight=-1), rated(3, 0.5, split="TEST")])
    refused = await gw.client.post("/v1/datasets/ratings/entries", content=body, headers=JSONL)
    assert refused.status_code == 400
    assert [(e["line"], e["error"]) for e in refused.json()["invalid"]] == [
        (2, "reward: must be a number"),
        (3, "weight: must be positive"),
    ]
    added = await gw.client.post("/v1/datasets/ratings/entries?skip_invalid=true", content=body, headers=JSONL)
    assert added.status_code == 200 and added.json()["added"] == 2
    kto = {"prompt": "question 9", "completion": "answer 9", "label": False}  # TRL's unpaired shape
    assert (await gw.client.post("/v1/datasets/ratings/entries", json={"entries": [kto]})).json()["added"] == 1
    exported = (await gw.client.get("/v1/datasets/ratings/export")).content.splitlines()
    loaded = load_rated(exported)
    assert [r.reward for r in loaded.rows] == [5.0, 0.5, 0.0] and len(loaded.split("TEST")) >= 1


async def test_a_dataset_holds_one_kind_the_first_entry_decides(gw: Gateway) -> None:
    await gw.client.post("/v1/datasets", json={"name": "mixed"})
    both = await gw.client.post("/v1/datasets/mixed/entries", json={"entries": [rated(0), PAIR]})
    assert both.status_code == 400 and both.json()["error"]["code"] == "mixed_kinds"
    assert (await gw.client.post("/v1/datasets/mixed/entries", json={"entries": [PAIR]})).status_code == 200
    later = await gw.client.post("/v1/datasets/mixed/entries", json={"entries": [rated(1)]})
    assert later.status_code == 400 and "the first entry decides" in later.json()["error"]["message"]


async def test_feedback_with_a_rating_adds_that_choice_as_a_rated_response(gw: Gateway) -> None:
    body = {"model": "ok", "messages": MESSAGES, "n": 3, "store": True}
    completion = (
        await gw.client.post("/v1/chat/completions", json=body, headers={"op-criteria": '["tiny-rm"]'})
    ).json()
    log_id = completion["rewardgate"]["log_id"]
    rating = {"log_id": log_id, "choice_index": 1, "rating": 4, "dataset": "stars"}
    response = await gw.client.post("/v1/feedback", json=rating)
    assert response.status_code == 200 and response.json()["added"] == 1, response.text
    (entry,) = (await gw.client.get("/v1/datasets/stars/entries")).json()["data"]
    assert (entry["source"], entry["source_ref"]) == ("feedback", log_id)
    assert entry["pair"]["reward"] == 4 and entry["pair"]["messages"][:-1] == MESSAGES
    assert entry["pair"]["messages"][-1]["content"] == completion["choices"][1]["message"]["content"]
    assert entry["pair"]["metadata"] == {"log_id": log_id, "feedback": "rating", "choice": 1}
    for bad, param in (({"rating": "5"}, "rating"), ({"rating": True}, "rating"), ({"choice_index": 9}, "choice_index"),
                       ({"rating": None}, "rating"), ({"extra": 1}, "extra")):  # fmt: skip
        refused = await gw.client.post("/v1/feedback", content=json.dumps({**rating, **bad}).encode())
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, (bad, refused.text)
    pairs = await gw.client.post("/v1/feedback", json={"log_id": log_id, "choice_index": 0, "dataset": "stars"})
    assert pairs.status_code == 400 and pairs.json()["error"]["code"] == "mixed_kinds"  # pairs into a rated dataset
