"""Where reward models come from (README), end to end through the gateway: each source produces a model, the
embedded reward server serves it by slug without a restart, and it ranks a best-of-N request. Ratings (feedback with
a `rating`) and a distilled judge train through the real trainer subprocess on a tiny base; a published model is
imported through the real importer subprocess. (Pairs, the first source, run end to end in tests/gateway/api/
test_jobs.py.) Nothing waits by sleeping: jobs are polled with a deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from gateway.store import LogQuery
from tests import tiny
from tests.gateway.fakes import FakeUpstream, Gateway, running_gateway
from trainer.config import SAMPLE_DATA

pytestmark = pytest.mark.anyio
FAST = ("--threads=1", "--precision=fp32", "--log-every=1")
RUN_S = 180.0
TRAIN = {"epochs": 6, "learning_rate": 0.002, "batch_size": 8}


@pytest.fixture
async def gw(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        upstream_models=("fake:ok",),
        jobs_dir=str(tmp_path / "jobs"),
        trainer_args=FAST,
        criteria_timeout_s=30.0,
        base_model_dirs=(str(tmp_path.parent),),  # the session's temp folder: the tests' tiny bases are there
    )
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings) as gateway:
        yield gateway


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"How do I get back into my account? (ticket {i})"}]


async def chat(gw: Gateway, i: int, criteria: list[str], **extra: Any) -> dict[str, Any]:
    body = {"model": "ok", "messages": question(i), "n": 4, "store": True, **extra}
    response = await gw.client.post("/v1/chat/completions", json=body, headers={"op-criteria": json.dumps(criteria)})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def deployed(gw: Gateway, job: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_S
    while (seen := (await gw.client.get(f"/v1/reward-models/{job['id']}")).json())["state"] != "DEPLOYED":
        assert seen["state"] != "ERROR" and loop.time() < deadline, f"job {seen['state']}: {seen['error']}"
        await asyncio.sleep(0.05)
    return seen


async def ranks_best_of_n(gw: Gateway, model: str) -> list[dict[str, Any]]:
    """The served model in op-criteria: every candidate scored by it, choices best first."""
    reply = await chat(gw, 99, [model])
    choices: list[dict[str, Any]] = reply["choices"]
    slug, version = model.split("@")
    results = [c["criteria_results"][slug] for c in choices]
    assert len(choices) == 4 and all(r["status"] == "success" and r["version"] == version for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and [c["index"] for c in choices] == [0, 1, 2, 3]
    return choices


def says_password(choice: dict[str, Any]) -> bool:
    return "password" in choice["message"]["content"].lower()


async def test_ratings_from_feedback_train_a_pointwise_model_that_ranks_best_of_n(gw: Gateway, base: Path) -> None:
    define = {"slug": "short", "kind": "rule", "spec": {"type": "length", "max_chars": 500}}
    assert (await gw.client.post("/v1/criteria", json=define)).status_code == 201
    for i in range(12):  # ranked logs; a user rates every choice: 5 stars for a password answer, else 1 or 2
        reply = await chat(gw, i, ["short"])
        for choice in reply["choices"]:
            stars = 5 if says_password(choice) else 1 + choice["index"] % 2
            body = {
                "log_id": reply["rewardgate"]["log_id"],
                "choice_index": choice["index"],
                "rating": stars,
                "dataset": "ratings",
            }
            added = await gw.client.post("/v1/feedback", json=body)
            assert added.status_code == 200 and added.json()["added"] == 1, added.text
    dataset = (await gw.client.get("/v1/datasets/ratings")).json()
    assert dataset["entries"] == 48
    entry = (await gw.client.get("/v1/datasets/ratings/entries", params={"limit": 1})).json()["data"][0]
    assert entry["pair"]["reward"] in (1, 2, 5) and entry["pair"]["metadata"]["feedback"] == "rating"
    body = {"dataset": "ratings", "slug": "stars-rm", "base_model": str(base), "hyperparameters": TRAIN}
    job = await deployed(gw, (await gw.client.post("/v1/reward-models", json=body)).json())
    card = json.loads(
        (Path(gw.app.state.services.settings.models_dir) / "stars-rm" / "v1" / "rewardgate.json").read_text()
    )
    assert card["objective"]["loss"] == "regression" and card["data"]["rows"] == 48  # the loss the data called for
    assert job["metrics"]["count"] == dataset["counts"]["TEST"] and "spearman" in job["metrics"]
    choices = await ranks_best_of_n(gw, "stars-rm@v1")
    assert says_password(choices[0])  # it learnt what the ratings reward


async def test_a_published_model_is_imported_through_the_api_and_ranks_best_of_n(gw: Gateway, tmp_path: Path) -> None:
    published = tiny.save_base(tmp_path / "hub" / "acme-rm", "llama", seed=7)
    assert (await gw.client.post("/v1/datasets", json={"name": "calib"})).status_code == 201
    pairs = "".join(Path(SAMPLE_DATA).read_text().splitlines(keepends=True)[:30]).encode()
    headers = {"content-type": "application/x-ndjson"}
    assert (await gw.client.post("/v1/datasets/calib/entries", content=pairs, headers=headers)).status_code == 200
    body = {"source": str(published), "slug": "acme-rm", "calibration_dataset": "calib"}
    created = await gw.client.post("/v1/reward-models/import", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "import" and created.json()["base_model"] == str(published)
    job = await deployed(gw, created.json())
    assert job["version"] == "v1" and job["metrics"]["count"] == 30 and job["reward_stats"]["count"] == 60
    await ranks_best_of_n(gw, "acme-rm@v1")
    refused = await gw.client.post("/v1/reward-models/import", json={"source": "/no/such/dir", "slug": "x-rm"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "source"
    causal = tiny.save_causal_lm(tmp_path / "hub" / "causal")
    failed = await gw.client.post("/v1/reward-models/import", json={"source": str(causal), "slug": "causal-rm"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_S
    while (seen := (await gw.client.get(f"/v1/reward-models/{failed.json()['id']}")).json())["state"] != "ERROR":
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert "found LlamaForCausalLM, not a *ForSequenceClassification" in seen["error"]  # the refusal, verbatim


async def test_a_judge_is_distilled_served_ranked_aligned_and_compared(gw: Gateway, base: Path) -> None:
    spec = {"model": "fake:judge", "instructions": "PASS answers that tell the user how to reset the password."}
    assert (
        await gw.client.post("/v1/criteria", json={"slug": "pw-judge", "kind": "llm_judge", "spec": spec})
    ).status_code == 201
    for i in range(12):  # best-of-N logs the judge scored: PASS 0.9 for a password answer, else FAIL (0.2)
        await chat(gw, i, ["pw-judge"], metadata={"app": "support"})
    body = {"criterion": "pw-judge", "slug": "pw-rm", "metadata": {"app": "support"}, "base_model": str(base),
            "hyperparameters": TRAIN}  # fmt: skip
    created = await gw.client.post("/v1/reward-models/distill", json=body)
    assert created.status_code == 201, created.text
    job = await deployed(gw, created.json())
    rows = (await gw.client.get("/v1/datasets/pw-rm-distill")).json()
    assert rows["entries"] == 48 and rows["counts"]["TEST"] >= 4  # whole prompts held back
    assert job["metrics"]["pass_threshold"] == 0.5 and job["metrics"]["spearman"] > 0.5
    assert job["metrics"]["pass_accuracy"] >= 0.75
    choices = await ranks_best_of_n(gw, "pw-rm@v1")
    assert says_password(choices[0])
    labelled = [{"input": question(0), "output": text, "label": "PASS" if "password" in text else "FAIL"}
                for text in ("Reset your password in settings.", "I cannot help with that. Please ask someone else.",
                             "Go to the login page and click 'forgot password'.")]  # fmt: skip
    aligned = await gw.client.post("/v1/criteria/pw-rm/alignment", json={"rows": labelled})
    assert aligned.status_code == 200 and aligned.json()["criterion"]["version"] == "v1", aligned.text
    # The CLI's flow (rewardgate distill): trains here, then times and prices the judge beside the model.
    report = await gw.app.state.services.distill.distil(
        "pw-judge", "pw-rm", LogQuery({"app": "support"}), base_model=str(base), epochs=6, judge_sample=3
    )
    assert report["state"] == "DEPLOYED" and report["model"] == "pw-rm@v2" and report["data"]["rows"] == 48
    assert report["objective"]["loss"] == "regression" and report["agreement"]["spearman"] is not None
    judge, model = report["cost_and_latency"]["judge"], report["cost_and_latency"]["reward_model"]
    assert judge["candidates"] == 3 and judge["tokens_per_candidate"] == {"prompt": 50, "completion": 10}
    assert judge["usd_per_candidate"] is None and judge["model"] == "fake:judge"  # not in LiteLLM's price map
    assert model["candidates"] == report["data"]["test"] and model["usd_per_candidate"] == 0.0
    assert model["latency_ms_per_candidate"] > 0
