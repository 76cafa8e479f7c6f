"""Training jobs in the store, on both backends: create, get, list newest first, updates of JOB_FIELDS (JSON ones
included, set and cleared) with updated_at from the clock, and the errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from gateway.protocol import Job, render
from gateway.store import InvalidInputError, JobNotFoundError, JobRecord, LogStore, open_store
from tests.gateway.store.conftest import T0

pytestmark = pytest.mark.anyio
T1 = T0 + timedelta(hours=1)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LogStore]:
    s = await open_store(store_url, clock=lambda: T1)
    yield s
    await s.aclose()


def job(job_id: str = "job_1", seconds: int = 0) -> JobRecord:
    at = T0 + timedelta(seconds=seconds)
    hyperparameters = {"learning_rate": 1e-5, "epochs": 2, "note": "ünïcode"}
    return JobRecord(job_id, "support-rm", "ds_1", "tiny-base", hyperparameters, "/data/ds_1.jsonl", at, at)


async def test_a_job_is_stored_read_and_listed_newest_first(store: LogStore) -> None:
    first, second = job(), job("job_2", seconds=1)
    assert await store.create_job(first) == first
    await store.create_job(second)
    assert await store.get_job("job_1") == first
    assert [j.id for j in await store.list_jobs()] == ["job_2", "job_1"]
    assert [j.id for j in await store.list_jobs(limit=1)] == ["job_2"]
    with pytest.raises(JobNotFoundError) as info:
        await store.get_job("job_x")
    assert info.value.job_id == "job_x"
    with pytest.raises(InvalidInputError):  # the id is taken
        await store.create_job(first)


async def test_updates_set_and_clear_fields_and_stamp_updated_at(store: LogStore) -> None:
    await store.create_job(job())
    training = await store.update_job("job_1", state="TRAINING", progress={"step": 1, "total": 10, "loss": 0.5})
    assert (training.state, training.progress) == ("TRAINING", {"step": 1, "total": 10, "loss": 0.5})
    assert (training.created_at, training.updated_at) == (T0, T1)
    assert await store.get_job("job_1") == training
    deployed = await store.update_job(
        "job_1", state="DEPLOYED", version="v1", metrics={"accuracy": 0.9}, reward_stats={"mean": 0.1}, progress=None
    )
    assert deployed.progress is None and deployed.metrics == {"accuracy": 0.9} and deployed.version == "v1"
    assert render(Job, deployed)["model"] == "support-rm@v1" and deployed.hyperparameters == job().hyperparameters
    resumed = await store.update_job("job_1", resumed=1)
    assert resumed.resumed == 1 and resumed.state == "DEPLOYED"
    with pytest.raises(JobNotFoundError):
        await store.update_job("job_x", state="ERROR")
    with pytest.raises(InvalidInputError):  # the schema's CHECK on state
        await store.update_job("job_1", state="LOST")
    assert await store.get_job("job_1") == resumed


async def test_delete_jobs_removes_every_job_of_one_slug(store: LogStore) -> None:
    await store.create_job(job())
    await store.create_job(job("job_2", seconds=1))
    other = JobRecord("job_3", "tone-rm", "ds_1", "tiny-base", {}, "/data/ds_1.jsonl", T0, T0)
    await store.create_job(other)
    assert await store.delete_jobs("support-rm") == 2
    assert [j.id for j in await store.list_jobs()] == ["job_3"]
    assert await store.delete_jobs("support-rm") == 0


async def test_a_jobs_kind_is_stored_train_by_default(store: LogStore) -> None:
    imported = JobRecord("job_i", "acme-rm", "", "acme/rm-8b", {}, "", T0, T0, kind="import")
    await store.create_job(imported)
    await store.create_job(job())
    assert (await store.get_job("job_i")).kind == "import" and (await store.get_job("job_1")).kind == "train"
    assert render(Job, await store.get_job("job_i"))["kind"] == "import"
