"""Budgeted best-of-N (`op-bon`) end to end over ASGI: the fake upstream's `drip` model streams each candidate word
by word and holds after DRIP_HOLD words until released, so a test sees which streams the gateway closed while the
others were still generating. The REAL router, store and embedded reward server (tiny-rm) as `rewardgate serve`
wires them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from tests.gateway.fakes import ANSWERS, DRIP_HOLD, FakeUpstream, Gateway, chat_body, running_gateway, until

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}


def bon(**policy: Any) -> dict[str, str]:
    return {**CRITERIA, "op-bon": json.dumps(policy)}


def words(seed: int) -> int:
    return len(ANSWERS[seed % len(ANSWERS)].split(" "))


async def test_early_rejection_closes_the_rejected_streams_while_the_others_generate(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    headers = bon(strategy="early_rejection", checkpoints=[2], keep=0.5)
    body = chat_body("drip", n=4, seed=0, store=True)
    call = asyncio.create_task(gw.client.post("/v1/chat/completions", json=body, headers=headers))
    # the two rejected streams are closed (the fake's handlers cancelled) before any stream may go on
    await until(lambda: upstream.cancelled == 2, timeout=30)
    assert not call.done() and sum(upstream.dripped.values()) == 4 * DRIP_HOLD
    upstream.release.set()
    response = await call
    assert response.status_code == 200, response.text
    completion = response.json()
    assert [b["seed"] for b in upstream.bodies] == [0, 1, 2, 3]  # one stream per candidate, each its own sample
    assert all(b["stream"] and "n" not in b for b in upstream.bodies)

    choices = completion["choices"]
    assert [c["finish_reason"] for c in choices] == ["stop", "stop", "rejected", "rejected"]
    kept = [c["rewardgate"]["candidate_index"] for c in choices[:2]]
    for choice in choices[2:]:
        seed = choice["rewardgate"]["candidate_index"]
        assert seed not in kept
        # the partial answer that was scored (DRIP_HOLD words), its partial scores, and what it cost
        assert choice["message"]["content"] == " ".join(ANSWERS[seed].split(" ")[:DRIP_HOLD])
        assert choice["criteria_results"]["tiny-rm"]["status"] == "success"
        assert choice["rewardgate"]["rejected_at"] == DRIP_HOLD == choice["rewardgate"]["tokens"]
        assert upstream.dripped[seed] == DRIP_HOLD
    for choice in choices[:2]:
        seed = choice["rewardgate"]["candidate_index"]
        assert choice["message"]["content"] == ANSWERS[seed]
        assert choice["rewardgate"]["tokens"] == words(seed) and choice["rewardgate"]["rejected_at"] is None

    budget = completion["usage"]["rewardgate"]
    generated = 2 * DRIP_HOLD + sum(words(c["rewardgate"]["candidate_index"]) for c in choices[:2])
    plain = round(4 * sum(words(c["rewardgate"]["candidate_index"]) for c in choices[:2]) / 2)
    assert budget == {
        "strategy": "early_rejection",
        "requested_strategy": "early_rejection",
        "generated_tokens": generated,
        "plain_tokens": plain,
        "tokens_saved": plain - generated,
        "candidates": 4,
        "rejected": 2,
        "checkpoints": [2],
        "rounds": 1,
        "fallback": None,
        "keep": 0.5,
        "setting": "request",
    }
    assert completion["usage"]["completion_tokens"] == generated

    stored = (await gw.client.get(f"/v1/logs/{completion['rewardgate']['log_id']}")).json()
    reasons = [c["finish_reason"] for c in stored["candidates"]]
    assert reasons == ["stop", "stop", "rejected", "rejected"]
    assert stored["budget"] == budget  # the console shows it on the log
    rejected = stored["candidates"][2]
    assert rejected["status"] == "ok" and rejected["score"] is not None
    assert rejected["criteria_results"]["tiny-rm"]["status"] == "success"

    metrics = (await gw.client.get("/metrics")).text
    assert f'rewardgate_bon_tokens_total{{kind="saved",strategy="early_rejection"}} {plain - generated}.0' in metrics
    assert "rewardgate_bon_rejected_candidates_total 2.0" in metrics


async def test_a_candidate_that_finished_before_a_checkpoint_is_never_rejected(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    upstream.release.set()  # every stream runs to its end at once: nothing is left to cancel
    headers = bon(strategy="early_rejection", checkpoints=[50], keep=0.25)
    response = await gw.client.post("/v1/chat/completions", json=chat_body("drip", n=3), headers=headers)
    completion = response.json()
    assert [c["finish_reason"] for c in completion["choices"]] == ["stop"] * 3
    assert upstream.cancelled == 0 and completion["usage"]["rewardgate"]["tokens_saved"] == 0


async def test_adaptive_n_stops_once_the_best_score_reaches_the_threshold(gw: Gateway, upstream: FakeUpstream) -> None:
    upstream.release.set()
    headers = bon(strategy="adaptive", per_round=2, threshold=0.0)  # any score passes: one round
    response = await gw.client.post("/v1/chat/completions", json=chat_body("drip", n=6, seed=0), headers=headers)
    completion = response.json()
    assert len(completion["choices"]) == 2 and len(upstream.bodies) == 2
    budget = completion["usage"]["rewardgate"]
    assert budget["strategy"] == "adaptive" and budget["rounds"] == 1 and budget["candidates"] == 2
    assert budget["plain_tokens"] == round(6 * (words(0) + words(1)) / 2)
    assert budget["tokens_saved"] == budget["plain_tokens"] - (words(0) + words(1))


async def test_adaptive_n_asks_for_rounds_until_n_when_the_threshold_is_not_reached(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    upstream.release.set()
    headers = bon(strategy="adaptive", per_round=2, threshold=1.0)
    response = await gw.client.post("/v1/chat/completions", json=chat_body("drip", n=5, seed=10), headers=headers)
    completion = response.json()
    assert sorted(b["seed"] for b in upstream.bodies) == [10, 11, 12, 13, 14]
    assert completion["usage"]["rewardgate"]["rounds"] == 3 and len(completion["choices"]) == 5
    assert completion["usage"]["rewardgate"]["tokens_saved"] == 0


async def test_adaptive_n_stops_when_its_token_budget_is_spent(gw: Gateway, upstream: FakeUpstream) -> None:
    upstream.release.set()
    headers = bon(strategy="adaptive", per_round=1, threshold=1.0, max_tokens=1)
    response = await gw.client.post("/v1/chat/completions", json=chat_body("drip", n=4), headers=headers)
    assert len(response.json()["choices"]) == 1 and len(upstream.bodies) == 1


async def test_uncalibrated_reward_model_falls_back_to_plain_best_of_n(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"criteria": {"tiny-rm@v1": {"checkpoints": {"2": 0.1, "64": 0.9}}}}))
    settings = GatewaySettings(bon_calibration_file=str(calibration), bon_min_rank_correlation=0.5)
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        headers = bon(strategy="early_rejection", checkpoints=[2, 8])
        response = await gw.client.post("/v1/chat/completions", json=chat_body("ok", n=3), headers=headers)
        completion = response.json()
        budget = completion["usage"]["rewardgate"]
        assert budget["strategy"] == "best_of_n" and budget["requested_strategy"] == "early_rejection"
        assert "tiny-rm@v1 at 2 tokens: rank correlation 0.10" in budget["fallback"]
        assert "at 8 tokens: rank correlation 0.10" in budget["fallback"]
        assert budget["tokens_saved"] == 0 and budget["generated_tokens"] == 12
        assert upstream.bodies[-1]["n"] == 3 and not upstream.bodies[-1].get("stream")  # plain: one native-n call
        assert "rewardgate_bon_fallbacks_total 1.0" in (await gw.client.get("/metrics")).text

        # a checkpoint the model predicts at is kept, the others dropped
        upstream.release.set()
        headers = bon(strategy="early_rejection", checkpoints=[2, 64])
        response = await gw.client.post("/v1/chat/completions", json=chat_body("drip", n=2), headers=headers)
        assert response.json()["usage"]["rewardgate"]["checkpoints"] == [64]


async def test_a_reward_model_s_measured_setting_runs_when_op_bon_leaves_the_setting_out(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    calibration = tmp_path / "calibration.json"
    measured = {"within_pct": 2.0, "setting": {"checkpoints": [2], "keep": 0.25}}
    entry = {"checkpoints": {"2": 0.1, "64": 0.9}, "early_rejection": measured}
    calibration.write_text(json.dumps({"criteria": {"tiny-rm@v1": entry}}))
    settings = GatewaySettings(bon_calibration_file=str(calibration), bon_min_rank_correlation=0.5)
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        # measured as a whole, the setting runs as measured, though 2 tokens is below the correlation floor
        call = asyncio.create_task(
            gw.client.post("/v1/chat/completions", json=chat_body("drip", n=4), headers=bon(strategy="early_rejection"))
        )
        await until(lambda: upstream.cancelled == 3, timeout=30)
        upstream.release.set()
        budget = (await call).json()["usage"]["rewardgate"]
        assert budget["strategy"] == "early_rejection" and budget["rejected"] == 3
        assert (budget["checkpoints"], budget["keep"], budget["setting"]) == ([2], 0.25, "calibration tiny-rm@v1")

        # a request that sets its own checkpoints gets the correlation floor instead: 2 tokens is not trusted
        headers = bon(strategy="early_rejection", checkpoints=[2])
        budget = (await gw.client.post("/v1/chat/completions", json=chat_body("ok", n=2), headers=headers)).json()
        assert budget["usage"]["rewardgate"]["strategy"] == "best_of_n"
        assert "rank correlation 0.10" in budget["usage"]["rewardgate"]["fallback"]

    # measured, and no setting kept the reward: plain best-of-N, saying so
    entry["early_rejection"] = {"within_pct": 2.0, "setting": None}
    calibration.write_text(json.dumps({"criteria": {"tiny-rm@v1": entry}}))
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        headers = bon(strategy="early_rejection")
        budget = (await gw.client.post("/v1/chat/completions", json=chat_body("ok", n=2), headers=headers)).json()
        assert budget["usage"]["rewardgate"]["strategy"] == "best_of_n"
        assert budget["usage"]["rewardgate"]["fallback"] == (
            "calibration of tiny-rm@v1: no early-rejection setting kept the pick's reward within 2 %"
        )


async def test_without_op_bon_the_answer_has_no_budget_keys(gw: Gateway, upstream: FakeUpstream) -> None:
    completion = (await gw.client.post("/v1/chat/completions", json=chat_body(n=2), headers=CRITERIA)).json()
    assert "rewardgate" not in completion["usage"]
    stored = await gw.client.post("/v1/chat/completions", json=chat_body(n=2, store=True), headers=CRITERIA)
    assert (await gw.client.get(f"/v1/logs/{stored.json()['rewardgate']['log_id']}")).json()["budget"] is None
    assert all(
        set(c["rewardgate"]) == {"candidate_index", "score", "criteria_errors", "model"} for c in completion["choices"]
    )


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("nope", "op-bon"),
        ("[1]", "op-bon"),
        ('{"strategy": "fastest"}', "op-bon.strategy"),
        ('{"strategy": "early_rejection", "checkpoints": [64, 32]}', "op-bon.checkpoints"),
        ('{"strategy": "early_rejection", "checkpoints": []}', "op-bon.checkpoints"),
        ('{"strategy": "early_rejection", "keep": 0}', "op-bon.keep"),
        ('{"strategy": "early_rejection", "keep": 1.5}', "op-bon.keep"),
        ('{"strategy": "early_rejection", "min_keep": 0}', "op-bon.min_keep"),
        ('{"strategy": "early_rejection", "per_round": 2}', "op-bon.per_round"),
        ('{"strategy": "adaptive", "threshold": true}', "op-bon.threshold"),
        ('{"strategy": "adaptive", "per_round": 17}', "op-bon.per_round"),
        ('{"strategy": "adaptive", "max_latency_s": 0}', "op-bon.max_latency_s"),
    ],
)
async def test_a_bad_op_bon_is_a_400_naming_the_field(
    gw: Gateway, upstream: FakeUpstream, value: str, param: str
) -> None:
    response = await gw.client.post("/v1/chat/completions", json=chat_body(n=2), headers={**CRITERIA, "op-bon": value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param + ":")
    assert upstream.bodies == []


async def test_op_bon_needs_op_criteria(gw: Gateway, upstream: FakeUpstream) -> None:
    response = await gw.client.post(
        "/v1/chat/completions", json=chat_body(), headers={"op-bon": '{"strategy": "adaptive"}'}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "op-bon"
