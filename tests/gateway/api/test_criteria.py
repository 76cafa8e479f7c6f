"""The criteria API and all three criterion kinds end to end over ASGI: definitions (create, versions, read,
list, errors), rule + LLM-judge + reward-model criteria mixed in one op-criteria header, the offline judge
endpoint, alignment, and the criteria file. The judge is the fake upstream's `judge` model reached through the
REAL router; the reward model is the embedded reward server with a tiny model. Nothing inside is mocked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from tests.gateway.fakes import ANSWERS, MESSAGES, FakeUpstream, Gateway, running_gateway

pytestmark = pytest.mark.anyio
NO_APOLOGY = {"type": "regex", "pattern": "cannot|sorry", "flags": "i", "must": "not_match"}
PASSWORD_JUDGE = {"model": "fake:judge", "instructions": "The answer must tell the user how to reset a password."}


async def define(gw: Gateway, slug: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    response = await gw.client.post("/v1/criteria", json={"slug": slug, "kind": kind, "spec": spec})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------- definitions


async def test_definitions_are_versioned_and_immutable(gw: Gateway) -> None:
    first = await define(gw, "no-apology", "rule", NO_APOLOGY)
    assert (first["id"], first["version"], first["kind"]) == ("no-apology@v1", "v1", "rule")
    assert first["spec"]["pattern"] == "cannot|sorry" and first["alignment"] is None
    stricter = {**NO_APOLOGY, "pattern": "cannot|sorry|unfortunately"}
    response = await gw.client.post("/v1/criteria/no-apology/versions", json={"spec": stricter})
    assert response.status_code == 201 and response.json()["id"] == "no-apology@v2"
    newest = (await gw.client.get("/v1/criteria/no-apology")).json()
    pinned = (await gw.client.get("/v1/criteria/no-apology@v1")).json()
    assert newest["version"] == "v2" and newest["spec"]["pattern"] == stricter["pattern"]
    assert pinned["version"] == "v1" and pinned["spec"]["pattern"] == "cannot|sorry"
    await define(gw, "mentions-password", "llm_judge", PASSWORD_JUDGE)
    listing = (await gw.client.get("/v1/criteria")).json()["data"]
    assert [d["id"] for d in listing] == ["mentions-password@v1", "no-apology@v1", "no-apology@v2"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"slug": "x", "kind": "rule", "spec": {"type": "regex", "pattern": "("}}, 400, "spec.pattern"),
        ({"slug": "x", "kind": "rule", "spec": {"type": "nope"}}, 400, "spec.type"),
        ({"slug": "x", "kind": "llm_judge", "spec": {"model": "fake:judge"}}, 400, "spec.instructions"),
        ({"slug": "x", "kind": "magic", "spec": {}}, 400, "kind"),
        ({"slug": "bad slug!", "kind": "rule", "spec": NO_APOLOGY}, 400, "slug"),
        ({"slug": "x", "kind": "rule", "spec": NO_APOLOGY, "colour": 1}, 400, "colour"),
        ({"slug": "tiny-rm", "kind": "rule", "spec": NO_APOLOGY}, 409, "slug"),  # a reward model's slug
    ],
)
async def test_bad_definitions_are_refused_naming_the_field(
    gw: Gateway, body: dict[str, Any], status: int, param: str
) -> None:
    response = await gw.client.post("/v1/criteria", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert (await gw.client.get("/v1/criteria")).json()["data"] == []  # nothing half-stored


async def test_duplicates_unknown_slugs_and_versions(gw: Gateway) -> None:
    await define(gw, "no-apology", "rule", NO_APOLOGY)
    again = await gw.client.post("/v1/criteria", json={"slug": "no-apology", "kind": "rule", "spec": NO_APOLOGY})
    assert again.status_code == 409 and "add a version" in again.json()["error"]["message"]
    for path in ("/v1/criteria/nothing", "/v1/criteria/no-apology@v7"):
        response = await gw.client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "criterion_not_found"
    response = await gw.client.post("/v1/criteria/nothing/versions", json={"spec": NO_APOLOGY})
    assert response.status_code == 404
    response = await gw.client.post("/v1/criteria/no-apology/versions", json={"spec": {"type": "json", "x": 1}})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("spec")


# ---------------------------------------------------------------- all kinds in one op-criteria header


async def test_rules_judges_and_reward_models_mix_in_one_header(gw: Gateway, upstream: FakeUpstream) -> None:
    await define(gw, "no-apology", "rule", NO_APOLOGY)
    await define(gw, "mentions-password", "llm_judge", PASSWORD_JUDGE)
    header = json.dumps(["tiny-rm", "no-apology", {"id": "mentions-password@v1", "weight": 2}])
    body = {"model": "ok", "messages": MESSAGES, "n": 5}
    response = await gw.client.post("/v1/chat/completions", json=body, headers={"op-criteria": header})
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["rewardgate"]["criteria"] == {"tiny-rm": "v1", "no-apology": "v1", "mentions-password": "v1"}
    judge_calls = [b for b in upstream.bodies if b["model"] == "judge"]
    assert len(judge_calls) == 5  # one judge call per candidate
    assert completion["usage"]["criteria"]["prompt_tokens"] == 5 * 50
    assert completion["usage"]["criteria"]["completion_tokens"] == 5 * 10
    for choice in completion["choices"]:
        text, results = choice["message"]["content"], choice["criteria_results"]
        assert results["no-apology"]["score"] == (0.0 if "cannot" in text.lower() else 1.0)
        judged = results["mentions-password"]
        assert judged["status"] == "success" and judged["version"] == "v1"
        assert math.isclose(judged["score"], 0.9 if "password" in text.lower() else 0.2)
        assert judged["explanation"].startswith("PASS" if "password" in text.lower() else "FAIL")
        rm = results["tiny-rm"]["score"]
        expected = (1 / (1 + math.exp(-rm)) + results["no-apology"]["score"] + 2 * judged["score"]) / 4
        assert math.isclose(choice["rewardgate"]["score"], expected, rel_tol=1e-6)
    scores = [c["rewardgate"]["score"] for c in completion["choices"]]
    assert scores == sorted(scores, reverse=True)
    assert "password" in completion["choices"][0]["message"]["content"].lower()


async def test_a_judge_that_answers_garbage_errors_per_candidate_not_the_request(gw: Gateway) -> None:
    await define(gw, "vague", "llm_judge", {**PASSWORD_JUDGE, "model": "fake:judge-garbage"})
    body = {"model": "ok", "messages": MESSAGES, "n": 2}
    response = await gw.client.post("/v1/chat/completions", json=body, headers={"op-criteria": '["vague", "tiny-rm"]'})
    assert response.status_code == 200
    for choice in response.json()["choices"]:
        error = choice["criteria_results"]["vague"]
        assert error["status"] == "error" and error["errorCode"] == "invalid_judge_output"
        assert choice["rewardgate"]["criteria_errors"] == 1 and choice["rewardgate"]["score"] is not None


# ---------------------------------------------------------------- the offline judge endpoint


async def test_judge_endpoint_scores_every_kind_in_openpipes_shape(gw: Gateway) -> None:
    await define(gw, "no-apology", "rule", NO_APOLOGY)
    await define(gw, "mentions-password", "llm_judge", PASSWORD_JUDGE)
    output = {"role": "assistant", "content": ANSWERS[0]}
    request = {"input": {"messages": MESSAGES}, "output": output}
    judged = (await gw.client.post("/v1/criteria/judge", json={"criterion_id": "mentions-password", **request})).json()
    assert math.isclose(judged["score"], 0.9) and judged["explanation"].startswith("PASS")
    assert judged["usage"] == {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
    assert judged["criterion"] == {"slug": "mentions-password", "version": "v1", "kind": "llm_judge"}
    ruled = await gw.client.post(
        "/v1/criteria/judge", json={"criterion_id": "no-apology", "criterion_version": "v1", **request}
    )
    assert ruled.json()["score"] == 1.0 and ruled.json()["usage"]["total_tokens"] == 0
    scored = (await gw.client.post("/v1/criteria/judge", json={"criterion_id": "tiny-rm@v1", **request})).json()
    conversation = [*MESSAGES, output]
    assert gw.reward is not None
    raw = await gw.reward.post("/v1/score", json={"model": "tiny-rm@v1", "conversations": [conversation]})
    assert math.isclose(scored["score"], raw.json()["data"][0]["score"], rel_tol=1e-6)
    assert math.isclose(scored["normalized"], 1 / (1 + math.exp(-scored["score"])), rel_tol=1e-6)


async def test_judge_endpoint_errors(gw: Gateway) -> None:
    await define(gw, "vague", "llm_judge", {**PASSWORD_JUDGE, "model": "fake:judge-garbage"})
    output = {"role": "assistant", "content": "hi"}
    cases = [
        ({"criterion_id": "vague", "output": output}, 502, "invalid_judge_output"),
        ({"criterion_id": "nothing", "output": output}, 400, "invalid_criteria"),
        ({"criterion_id": "vague", "output": {"role": "user", "content": "hi"}}, 400, None),
        ({"criterion_id": "vague", "output": {"role": "assistant", "content": ""}}, 400, None),
        ({"output": output}, 400, None),
    ]
    for body, status, code in cases:
        response = await gw.client.post("/v1/criteria/judge", json=body)
        assert response.status_code == status, (body, response.text)
        if code is not None:
            assert response.json()["error"]["code"] == code


async def test_a_bad_criterion_id_is_blamed_on_criterion_id_not_on_op_criteria(gw: Gateway) -> None:
    output = {"role": "assistant", "content": "hi"}
    for criterion_id in ("nothing", "-bad slug", "rm@2", "tiny-rm@v9"):
        response = await gw.client.post("/v1/criteria/judge", json={"criterion_id": criterion_id, "output": output})
        error = response.json()["error"]
        assert response.status_code == 400 and error["param"] == "criterion_id", (criterion_id, error)
        assert "op-criteria" not in error["message"]
    missing = await gw.client.post("/v1/criteria/nothing/alignment", json={"rows": [labelled("x", "PASS", "1")]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "id"


# ---------------------------------------------------------------- alignment


def labelled(content: str, label: str, row_id: str) -> dict[str, Any]:
    return {"id": row_id, "input": MESSAGES, "output": content, "label": label}


async def test_alignment_reports_precision_recall_f1_and_is_stored_with_the_version(gw: Gateway) -> None:
    await define(gw, "mentions-password", "llm_judge", PASSWORD_JUDGE)
    rows = [
        labelled("Reset your password from settings.", "PASS", "a"),  # judge PASS: true positive
        labelled("Click 'forgot password' on the login page.", "FAIL", "b"),  # judge PASS: false positive
        labelled("Your order ships tomorrow.", "FAIL", "c"),  # judge FAIL: true negative
        labelled("Ask support to reset it for you.", "PASS", "d"),  # judge FAIL: false negative
        labelled("The password link is in the email.", "PASS", "e"),  # true positive
    ]
    response = await gw.client.post("/v1/criteria/mentions-password/alignment", json={"rows": rows})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["confusion"] == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    assert math.isclose(report["precision"], 2 / 3) and math.isclose(report["recall"], 2 / 3)
    assert math.isclose(report["f1"], 2 / 3) and math.isclose(report["accuracy"], 3 / 5)
    assert sorted(d["id"] for d in report["disagreement_rows"]) == ["b", "d"]
    assert report["stored"] is True and report["criterion"]["version"] == "v1"
    stored = (await gw.client.get("/v1/criteria/mentions-password@v1")).json()["alignment"]
    assert stored["confusion"] == report["confusion"]

    jsonl = "\n".join(json.dumps(r) for r in rows[:2]).encode()
    headers = {"content-type": "application/x-ndjson"}
    response = await gw.client.post("/v1/criteria/mentions-password/alignment", content=jsonl, headers=headers)
    assert response.json()["confusion"] == {"tp": 1, "fp": 1, "tn": 0, "fn": 0}


async def test_bad_labelled_rows_are_reported_by_position(gw: Gateway) -> None:
    await define(gw, "mentions-password", "llm_judge", PASSWORD_JUDGE)
    rows = [labelled("fine", "PASS", "a"), {"input": MESSAGES, "output": "x", "label": "MAYBE"}]
    response = await gw.client.post("/v1/criteria/mentions-password/alignment", json={"rows": rows})
    assert response.status_code == 400 and "rows[1]: label" in response.json()["error"]["message"]
    bad = b'{"input": [], "output": "x", "label": "PASS"}\nnot json\n'
    headers = {"content-type": "application/x-ndjson"}
    response = await gw.client.post("/v1/criteria/mentions-password/alignment", content=bad, headers=headers)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "line 1: input" in message and "line 2: invalid JSON" in message
    assert (await gw.client.get("/v1/criteria/mentions-password")).json()["alignment"] is None


# ---------------------------------------------------------------- the criteria file


async def test_the_criteria_file_adds_a_version_only_when_an_entry_changes(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    path = tmp_path / "criteria.json"

    async def start(rule: dict[str, Any]) -> list[str]:
        entries = [{"slug": "no-apology", "kind": "rule", "spec": rule}, {"slug": "pw", "kind": "llm_judge",
                   "spec": PASSWORD_JUDGE, "description": "mentions a password reset"}]  # fmt: skip
        path.write_text(json.dumps(entries))
        settings = GatewaySettings(criteria_file=str(path))
        async with running_gateway(tmp_path / "gw", upstream, models_dir, settings=settings) as gw:
            return [d["id"] for d in (await gw.client.get("/v1/criteria")).json()["data"]]

    assert await start(NO_APOLOGY) == ["no-apology@v1", "pw@v1"]
    assert await start(NO_APOLOGY) == ["no-apology@v1", "pw@v1"]  # unchanged: nothing added
    assert await start({**NO_APOLOGY, "pattern": "sorry"}) == ["no-apology@v1", "no-apology@v2", "pw@v1"]


async def test_a_bad_criteria_file_stops_the_start_naming_the_entry(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    path = tmp_path / "criteria.toml"
    good = '[[criteria]]\nslug = "ok-rule"\nkind = "rule"\nspec = {type = "json"}\n\n'
    path.write_text(good + '[[criteria]]\nslug = "broken"\nkind = "rule"\nspec = {type = "regex", pattern = "("}\n')
    settings = GatewaySettings(criteria_file=str(path))
    with pytest.raises(ValueError, match=r"criteria\[1\] \('broken'\): spec.pattern"):
        async with running_gateway(tmp_path, upstream, models_dir, settings=settings):
            pass
