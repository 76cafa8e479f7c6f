"""Run by test_openpipe_sdk.py with the OpenPipe SDK's own venv (openpipe==5.0.0), against a gateway whose URL and key
are in OPENPIPE_BASE_URL / OPENPIPE_API_KEY: the calls the issue lists, as an OpenPipe user writes them. Asserts as it
goes; prints one JSON line per step, for the test to check. SCENARIO_BASE_MODEL names the base model to train."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import openai
from openpipe import OpenAI, OpenPipe
from openpipe.api_client.core.api_error import ApiError

BASE = os.environ["OPENPIPE_BASE_URL"]
GATEWAY = BASE.removesuffix("/api/v1")
AUTH = {"Authorization": f"Bearer {os.environ['OPENPIPE_API_KEY']}"}
MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]


def step(name: str, **facts: Any) -> None:
    print(json.dumps({"step": name, **facts}), flush=True)


def refused(call: Any, status: int) -> dict[str, Any]:
    """The SDK's ApiError: its status and a body naming the problem (OpenPipe's envelope)."""
    try:
        call()
    except ApiError as exc:
        assert exc.status_code == status, (exc.status_code, exc.body)
        assert exc.body["message"] and exc.body["code"], exc.body
        return dict(exc.body)
    raise AssertionError("no ApiError")


def main() -> None:
    op = OpenPipe()
    client = OpenAI()

    # datasets -> entries -> a reward model trained by openpipeReward, polled until DEPLOYED
    dataset = op.create_dataset(name="SDK pairs")
    pairs = [
        {
            "messages": [{"role": "user", "content": f"How do I reset my password, case {i}?"},
                         {"role": "assistant", "content": "Open settings, choose security, then reset it."}],
            "rejected_message": {"role": "assistant", "content": "I cannot help with that."},
            "split": "TRAIN" if i < 16 else "TEST",
            "metadata": {"case": str(i)},
        }
        for i in range(20)
    ]  # fmt: skip
    created = op.create_dataset_entries(dataset.id, entries=[*pairs, {"messages": MESSAGES}])
    assert created.entries_created == 20 and [e.entry_index for e in created.errors.data] == [20], created
    assert any(d.id == dataset.id and d.dataset_entry_count == 20 for d in op.list_datasets().data)
    config = {"provider": "openpipeReward", "baseModel": os.environ["SCENARIO_BASE_MODEL"],
              "hyperparameters": {"batch_size": 4, "num_epochs": 1, "learning_rate_multiplier": 2}}  # fmt: skip
    model = op.create_model(dataset_id=dataset.id, slug="sdk-rm", training_config=config)
    assert model.id == "sdk-rm" and model.openpipe.status in ("PENDING", "QUEUED", "TRAINING"), model
    deadline = time.monotonic() + 240
    while (model := op.get_model(model_slug="sdk-rm")).openpipe.status not in ("DEPLOYED", "ERROR"):
        assert time.monotonic() < deadline, model
        time.sleep(0.2)
    assert model.openpipe.status == "DEPLOYED", model.openpipe.error_message
    assert model.openpipe.dataset_id == dataset.id and model.openpipe.hyperparameters["num_epochs"] == 1
    assert "sdk-rm" in [m.id for m in op.list_models().data]
    step("trained", status=model.openpipe.status)

    # best-of-N through the SDK's OpenAI wrapper: the trained reward model and an LLM judge, ranked
    completion = client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=MESSAGES, n=4,
        openpipe={"criteria": ["sdk-rm", "highlight-format"], "tags": {"prompt_id": "sdk-best-of-4"}},
    )  # fmt: skip
    scores = [c.rewardgate["score"] for c in completion.choices]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True), scores
    for choice in completion.choices:
        results = choice.criteria_results
        assert results["sdk-rm"]["status"] == "success" and isinstance(results["sdk-rm"]["score"], float)
        assert results["highlight-format"]["status"] == "success" and results["highlight-format"]["explanation"]
    log = httpx.get(f"{GATEWAY}/v1/logs/{completion.rewardgate['log_id']}", headers=AUTH).json()
    assert log["metadata"]["prompt_id"] == "sdk-best-of-4" and log["metadata"]["$sdk"] == "python", log["metadata"]
    assert log["criteria_versions"] == {"sdk-rm": "v1", "highlight-format": "v1"} and len(log["candidates"]) == 4
    step("best_of_n", scores=scores)

    # the response cache: the same request again is a hit, logged as one, with no upstream call
    cached = client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=MESSAGES, n=4,
        openpipe={"criteria": ["sdk-rm", "highlight-format"], "cache": "readWrite"},
    )  # fmt: skip
    again = client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=MESSAGES, n=4,
        openpipe={"criteria": ["sdk-rm", "highlight-format"], "cache": "readWrite"},
    )  # fmt: skip
    assert again.rewardgate["cache_hit"] and not cached.rewardgate["cache_hit"]
    assert [c.message.content for c in again.choices] == [c.message.content for c in cached.choices]
    assert op.base_client.local_testing_only_get_latest_logged_call().cache_hit is True
    step("cache", hit=True)

    # report: a call made to OpenAI directly, then visible in GET /v1/logs like any stored completion
    direct = openai.OpenAI(base_url=os.environ["SCENARIO_UPSTREAM"], api_key="unused")
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "metadata": {"prompt_id": "sdk-report"}}
    response = direct.chat.completions.create(**payload)
    now = int(time.time() * 1000)
    reported = op.report(requested_at=now - 120, received_at=now, req_payload=payload, resp_payload=response,
                         status_code=200, tags={"attempt": 1})  # fmt: skip
    assert reported.status.value == "ok"
    listed = httpx.get(f"{GATEWAY}/v1/logs", params={"metadata.prompt_id": "sdk-report"}, headers=AUTH).json()
    (log,) = listed["data"]
    assert log["completion_id"] == response.id and log["metadata"]["attempt"] == "1"
    assert log["candidates"][0]["message"]["content"] == response.choices[0].message.content
    step("report", log_id=log["id"])

    # update_log_metadata by metadata and by completion id; the deprecated update_log_tags
    updated = op.update_log_metadata(filters=[{"field": "completionId", "equals": response.id}],
                                     metadata={"reviewed": "yes", "attempt": None})  # fmt: skip
    assert updated.matched_logs == 1
    log = httpx.get(f"{GATEWAY}/v1/logs/{log['id']}", headers=AUTH).json()
    assert log["metadata"].get("reviewed") == "yes" and "attempt" not in log["metadata"]
    tagged = op.update_log_tags(filters=[{"field": "tags.prompt_id", "equals": "sdk-report"}], tags={"k": 2})
    assert tagged.matched_logs == 1
    step("update_metadata", matched=updated.matched_logs)

    # get_criterion_judgement: the trained reward model (no explanation, as OpenPipe's) and the LLM judge
    output = {"role": "assistant", "content": "Reset your password in settings."}
    judged = op.get_criterion_judgement(criterion_id="sdk-rm", input={"messages": MESSAGES}, output=output)
    assert isinstance(judged.score, float) and judged.explanation is None
    judge = op.get_criterion_judgement(criterion_id="highlight-format@v1", input={"messages": MESSAGES}, output=output)
    assert judge.score > 0.5 and judge.explanation and judge.usage.total_tokens > 0
    step("judge", reward=judged.score, judge=judge.score)

    # bad calls, answered as OpenPipe answers them
    body = refused(lambda: op.get_model(model_slug="no-such-rm"), 404)
    assert "no-such-rm" in body["message"] and body["code"] == "NOT_FOUND"
    body = refused(lambda: op.create_model(dataset_id=dataset.id, slug="sft", training_config={
        "provider": "openpipe", "baseModel": "meta-llama/Meta-Llama-3.1-8B-Instruct"}), 400)  # fmt: skip
    assert "openpipeReward" in body["message"]
    refused(lambda: op.create_dataset_entries("ds_missing", entries=pairs[:1]), 404)
    refused(lambda: op.get_criterion_judgement(criterion_id="nope", input={"messages": MESSAGES}, output=output), 400)
    try:
        client.chat.completions.create(model="openai:gpt-4o-mini", messages=MESSAGES, openpipe={"criteria": ["nope"]})
        raise AssertionError("an unknown criterion was accepted")
    except openai.BadRequestError as exc:
        assert exc.status_code == 400 and "Criterion nope not found" in str(exc)
    step("errors", ok=True)

    # delete: the model and the dataset
    assert op.delete_model(model_slug="sdk-rm").deleted
    refused(lambda: op.get_model(model_slug="sdk-rm"), 404)
    assert op.delete_dataset(dataset_id=dataset.id).deleted
    step("deleted", ok=True)


if __name__ == "__main__":
    main()
