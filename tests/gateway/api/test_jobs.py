"""The seed's product flow over ASGI with the real trainer as a subprocess on a tiny base model: a dataset ->
POST /v1/reward-models -> QUEUED -> TRAINING -> DEPLOYED -> the new slug in op-criteria, served by the embedded
reward server without a restart; cancellation; a gateway restart in the middle of a job; and bad requests.
Nothing waits by sleeping: job states are polled with a deadline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from tests.gateway.fakes import MESSAGES, FakeUpstream, Gateway, running_gateway, until

pytestmark = pytest.mark.anyio
FAST = ("--threads=1", "--precision=fp32", "--log-every=1")
RUN_S = 120.0  # a tiny run takes seconds; the deadline allows for a loaded 2-core machine


def settings_for(tmp_path: Path, *extra_args: str) -> GatewaySettings:
    return GatewaySettings(
        models_dir=str(tmp_path / "models"),
        jobs_dir=str(tmp_path / "jobs"),
        trainer_args=(*FAST, *extra_args),
        base_model_dirs=(str(tmp_path.parent),),  # the session's temp folder: the `base` fixture's model is there
    )


def pairs(n_train: int = 16, n_test: int = 4) -> bytes:
    rows = [
        {
            "messages": [{"role": "user", "content": f"How do I reset my password, case {i}?"},
                         {"role": "assistant", "content": "Open settings, choose security, then reset."}],
            "rejected_message": {"role": "assistant", "content": "I cannot help with that."},
            "split": "TRAIN" if i < n_train else "TEST",
        }
        for i in range(n_train + n_test)
    ]  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def make_dataset(gw: Gateway, name: str = "support") -> None:
    assert (await gw.client.post("/v1/datasets", json={"name": name})).status_code == 201
    headers = {"content-type": "application/x-ndjson"}
    response = await gw.client.post(f"/v1/datasets/{name}/entries", content=pairs(), headers=headers)
    assert response.status_code == 200, response.text


async def job(gw: Gateway, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await gw.client.get(f"/v1/reward-models/{job_id}")).json()
    return body


async def wait_for(gw: Gateway, job_id: str, *states: str, timeout: float = RUN_S) -> dict[str, Any]:
    """Poll the job until it is in one of `states`; fail after `timeout` seconds naming where it stuck."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await job(gw, job_id))["state"] not in states:
        assert loop.time() < deadline, f"job stuck in {seen['state']}: {seen['error']}"
        await asyncio.sleep(0.05)
    return seen


async def test_a_dataset_becomes_a_deployed_reward_model_used_by_op_criteria(
    tmp_path: Path, upstream: FakeUpstream, base: Path
) -> None:
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings_for(tmp_path)) as gw:
        await make_dataset(gw)
        body = {"dataset": "support", "slug": "support-rm", "base_model": str(base),
                "hyperparameters": {"batch_size": 4, "epochs": 2, "learning_rate": 1e-3}}  # fmt: skip
        response = await gw.client.post("/v1/reward-models", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["state"] in ("PENDING", "QUEUED", "TRAINING") and created["version"] is None
        assert created["id"].startswith("job_") and len(created["id"]) == len("job_") + 26
        done = await wait_for(gw, created["id"], "DEPLOYED", "ERROR")
        assert done["state"] == "DEPLOYED", done["error"]
        assert done["version"] == "v1" and done["model"] == "support-rm@v1"
        assert done["progress"]["step"] == done["progress"]["total"] == 8  # 16 TRAIN pairs / 4, two epochs
        assert done["metrics"]["count"] == 4 and 0.0 <= done["metrics"]["accuracy"] <= 1.0
        assert done["reward_stats"]["split"] == "TEST" and sum(done["reward_stats"]["histogram"]["counts"]) == 8
        assert (tmp_path / "models" / "support-rm" / "v1" / "rewardgate.json").is_file()
        listing = (await gw.client.get("/v1/reward-models")).json()["data"]
        assert [j["id"] for j in listing] == [created["id"]]

        # the new model is served at once: no restart of the gateway or of the reward server
        chat = {"model": "ok", "messages": MESSAGES, "n": 3}
        ranked = await gw.client.post("/v1/chat/completions", json=chat, headers={"op-criteria": '["support-rm"]'})
        assert ranked.status_code == 200, ranked.text
        results = [c["criteria_results"]["support-rm"] for c in ranked.json()["choices"]]
        assert all(r["status"] == "success" and r["version"] == "v1" for r in results)


async def test_cancel_a_running_job_and_refuse_to_cancel_a_finished_one(
    tmp_path: Path, upstream: FakeUpstream, base: Path
) -> None:
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings_for(tmp_path)) as gw:
        await make_dataset(gw)
        body = {"dataset": "support", "slug": "long-rm", "base_model": str(base), "hyperparameters": {"epochs": 100}}
        created = (await gw.client.post("/v1/reward-models", json=body)).json()
        await wait_for(gw, created["id"], "TRAINING")
        cancelled = (await gw.client.post(f"/v1/reward-models/{created['id']}/cancel")).json()
        assert cancelled["state"] == "ERROR" and cancelled["error"] == "cancelled"
        again = await gw.client.post(f"/v1/reward-models/{created['id']}/cancel")
        assert again.status_code == 400 and "already finished" in again.json()["error"]["message"]
        assert not (tmp_path / "models" / "long-rm" / "v1").exists()  # no half-written version is left
        unknown = await gw.client.post("/v1/reward-models/job_nothing/cancel")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


async def test_a_job_interrupted_by_a_gateway_restart_resumes_from_its_checkpoint(
    tmp_path: Path, upstream: FakeUpstream, base: Path
) -> None:
    settings = settings_for(tmp_path, "--save-steps=2")
    body = {"dataset": "support", "slug": "resumed-rm", "base_model": str(base),
            "hyperparameters": {"batch_size": 4, "epochs": 30}}  # fmt: skip  # 120 steps
    version_dir = tmp_path / "models" / "resumed-rm" / "v1"
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings) as gw:
        await make_dataset(gw)
        created = (await gw.client.post("/v1/reward-models", json=body)).json()
        await wait_for(gw, created["id"], "TRAINING")
        await until(lambda: any(version_dir.glob("**/step-*.pt")), timeout=RUN_S)
    # the gateway stopped mid-job: the store still says TRAINING
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings) as gw:
        interrupted = await job(gw, created["id"])
        assert interrupted["resumed"] == 1
        done = await wait_for(gw, created["id"], "DEPLOYED", "ERROR")
        assert done["state"] == "DEPLOYED", done["error"]
        assert done["version"] == "v1" and done["progress"]["step"] == 120
        assert not (tmp_path / "models" / "resumed-rm" / "v2").exists()


async def test_base_model_paths_outside_the_configured_folders_are_refused_alike(
    tmp_path: Path, upstream: FakeUpstream, base: Path
) -> None:
    """A key holder must not learn the server's file system: every path outside `base_model_dirs` gets one answer,
    whether it exists, is a folder, or climbs out of an allowed one."""
    allowed = tmp_path / "bases"
    inside = allowed / "tiny"
    inside.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    settings = settings_for(tmp_path).replace(base_model_dirs=(str(allowed),))
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings) as gw:
        await make_dataset(gw)
        answers = set()
        for path in ("/etc", "../../..", str(tmp_path / "elsewhere"), str(tmp_path / "missing"), str(allowed),
                     f"{allowed}/../elsewhere", str(base)):  # fmt: skip
            response = await gw.client.post(
                "/v1/reward-models", json={"dataset": "support", "slug": "p", "base_model": path}
            )
            assert response.status_code == 400 and response.json()["error"]["param"] == "base_model", path
            answers.add(response.json()["error"]["message"])
        assert len(answers) == 1 and "/etc" not in answers.pop()
        accepted = await gw.client.post(
            "/v1/reward-models", json={"dataset": "support", "slug": "p", "base_model": str(inside)}
        )
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["base_model"] == str(inside.resolve())


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"dataset": "nothing", "slug": "x"}, 404, "dataset"),
        ({"dataset": "support", "slug": "Bad Slug"}, 400, "slug"),
        ({"dataset": "support", "slug": "x", "base_model": "gpt-17"}, 400, "base_model"),
        ({"dataset": "support", "slug": "x", "hyperparameters": {"epochs": 0}}, 400, "epochs"),
        ({"dataset": "support", "slug": "x", "hyperparameters": {"batch_size": "big"}}, 400, "batch_size"),
        ({"dataset": "support", "slug": "x", "hyperparameters": {"dropout": 1}}, 400, "hyperparameters"),
        ({"dataset": "support", "slug": "x", "priority": 1}, 400, "priority"),
        ({"dataset": "support", "slug": "a-rule"}, 409, "slug"),  # a criterion's slug
    ],
)
async def test_bad_jobs_are_refused_before_anything_runs(
    tmp_path: Path, upstream: FakeUpstream, body: dict[str, Any], status: int, param: str
) -> None:
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings_for(tmp_path)) as gw:
        await make_dataset(gw)
        rule = {"slug": "a-rule", "kind": "rule", "spec": {"type": "json"}}
        assert (await gw.client.post("/v1/criteria", json=rule)).status_code == 201
        response = await gw.client.post("/v1/reward-models", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == param
        assert (await gw.client.get("/v1/reward-models")).json()["data"] == []
        models = (await gw.client.get("/v1/base-models")).json()["data"]
        assert [m["id"] for m in models if m["default"]] == ["minilm"]


async def test_training_jobs_are_counted_by_state_in_the_metrics(
    tmp_path: Path, upstream: FakeUpstream, base: Path
) -> None:
    async with running_gateway(tmp_path, upstream, tmp_path / "models", settings=settings_for(tmp_path)) as gw:
        await make_dataset(gw)
        body = {"dataset": "support", "slug": "counted-rm", "base_model": str(base),
                "hyperparameters": {"batch_size": 4, "epochs": 1}}  # fmt: skip
        created = (await gw.client.post("/v1/reward-models", json=body)).json()
        await wait_for(gw, created["id"], "DEPLOYED")
        text = (await gw.client.get("/metrics")).text
        assert 'rewardgate_training_jobs{state="DEPLOYED"} 1.0' in text
        assert 'rewardgate_training_jobs{state="TRAINING"} 0.0' in text
        chat = {"model": "ok", "messages": MESSAGES, "n": 2}
        await gw.client.post("/v1/chat/completions", json=chat, headers={"op-criteria": '["counted-rm"]'})
        text = (await gw.client.get("/metrics")).text
        assert 'rewardgate_criterion_score_count{criterion="counted-rm"} 2.0' in text


async def test_with_two_replicas_the_worker_runs_what_the_other_creates_and_stops_what_it_cancels(
    tmp_path: Path, upstream: FakeUpstream, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.service.jobs

    monkeypatch.setattr(gateway.service.jobs, "POLL_S", 0.05)
    front = settings_for(tmp_path).replace(training_worker=False)
    models = tmp_path / "models"
    async with (
        running_gateway(tmp_path, upstream, models, settings=settings_for(tmp_path)) as worker,
        running_gateway(tmp_path, upstream, models, settings=front) as replica,
    ):
        await make_dataset(replica)
        body = {"dataset": "support", "slug": "shared-rm", "base_model": str(base),
                "hyperparameters": {"batch_size": 4, "epochs": 1}}  # fmt: skip
        created = (await replica.client.post("/v1/reward-models", json=body)).json()
        assert created["state"] == "PENDING"  # the replica does not train
        done = await wait_for(replica, created["id"], "DEPLOYED", "ERROR")
        assert done["state"] == "DEPLOYED" and done["version"] == "v1", done["error"]

        body = {**body, "slug": "stopped-rm", "hyperparameters": {"epochs": 100}}
        long = (await replica.client.post("/v1/reward-models", json=body)).json()
        await wait_for(worker, long["id"], "TRAINING")
        cancelled = (await replica.client.post(f"/v1/reward-models/{long['id']}/cancel")).json()
        assert cancelled["state"] == "ERROR"
        await until(lambda: not (models / "stopped-rm" / "v1").exists(), timeout=RUN_S)  # the worker stopped it
        assert (await job(worker, long["id"]))["state"] == "ERROR"
