"""Reward-model training jobs as a product flow (docs/LIFECYCLE.md): a job is created from a dataset (or, kind
"import", from a published reward model's source and an optional calibration dataset), stored,
run by gateway.service.training's JobRunner in a trainer subprocess, and every state change the runner reports is
written to the store. Owns the validation of a new job, the dataset export the trainer reads, cancellation, and
recovery at start-up (jobs that were TRAINING resume from their checkpoint, PENDING/QUEUED ones are queued
again). Must not import torch, transformers or trainer: training happens in the subprocess.

Several replicas on one store: exactly one runs with `training_worker` (the default; set it false on the
others). Every replica creates and cancels jobs in the store; the worker queues PENDING jobs within POLL_S and
stops jobs marked cancelled. The jobs directory (dataset snapshots) must be shared with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import shutil
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import GatewaySettings
from gateway.errors import InvalidRequestError
from gateway.metrics import GatewayMetrics
from gateway.service.datasets import DatasetService
from gateway.service.training import Hyperparameters, JobRunner, JobSpec, JobState, JobUpdate, base_models
from gateway.store import MAX_PAGE, CriterionExistsError, JobRecord, LogStore, new_id

logger = logging.getLogger(__name__)
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # the trainer's rule for --slug
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_HYPERPARAMETERS = ("batch_size", "learning_rate", "epochs")
_FINISHED = ("DEPLOYED", "ERROR")
POLL_S = 2.0  # how often the worker looks for jobs created or cancelled by other replicas


class JobService:
    """Create, list, read and cancel training jobs; an async context manager that owns the JobRunner."""

    def __init__(
        self, settings: GatewaySettings, *, store: LogStore, datasets: DatasetService, metrics: GatewayMetrics
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._states: dict[str, str] = {}  # the last state reported per job, to count jobs on changes only
        self._store = store
        self._datasets = datasets
        self._jobs_dir = Path(settings.jobs_dir)
        self._poller: asyncio.Task[None] | None = None
        self._runner = JobRunner(
            settings.models_dir,
            self._on_update,
            concurrency=settings.training_concurrency,
            trainer_args=settings.trainer_args,
        )

    async def __aenter__(self) -> JobService:
        if self._settings.training_worker:  # the worker alone exports the jobs gauge: the others' would go stale
            await self._recover()
            await self._count()
            self._poller = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._runner.aclose()  # running trainers stop unreported: the store keeps TRAINING for the restart

    def _mine(self, job_id: str) -> bool:
        return job_id in self._runner.queued or job_id in self._runner.running

    async def _poll(self) -> None:
        """The worker's view of other replicas (one store): it queues the PENDING jobs they created and stops
        the jobs they cancelled (marked ERROR in the store)."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                for job in reversed(await self._store.list_jobs(limit=MAX_PAGE)):
                    if job.state == "PENDING" and not self._mine(job.id):
                        await self._submit(job, resume=False)
                    elif job.state == "ERROR" and self._mine(job.id):
                        await self._runner.cancel(job.id)
            except Exception:  # a store hiccup or a job that cannot start: logged, tried again next round
                logger.exception("training-job poll failed")

    async def _count(self) -> None:
        jobs = await self._store.list_jobs(limit=MAX_PAGE)
        self._metrics.set_training_jobs(Counter(job.state for job in jobs))

    async def _recover(self) -> None:
        for job in reversed(await self._store.list_jobs(limit=MAX_PAGE)):  # oldest first: the queue order
            if job.state == "TRAINING":
                await self._store.update_job(job.id, resumed=job.resumed + 1)
                logger.info("job %s was training when the gateway stopped: resuming from its checkpoint", job.id)
                await self._submit(job, resume=True)
            elif job.state in ("PENDING", "QUEUED"):
                await self._submit(job, resume=False)

    async def _submit(self, job: JobRecord, *, resume: bool) -> None:
        hp = job.hyperparameters
        spec = JobSpec(job.id, job.slug, job.data_path, job.base_model, Hyperparameters(**hp), kind=job.kind)
        await self._runner.submit(spec, resume=resume)

    async def _on_update(self, job_id: str, update: JobUpdate) -> None:
        if (
            update.state in (JobState.QUEUED, JobState.TRAINING)
            and (await self._store.get_job(job_id)).state == "ERROR"
        ):
            await self._runner.cancel(job_id)  # cancelled through another replica: never write it back to life
            return
        progress = None
        if update.progress is not None:
            p = update.progress
            progress = {"step": p.step, "total": p.total, "loss": p.loss, "accuracy": p.accuracy}
        changes: dict[str, Any] = {"state": str(update.state), "error": update.error, "progress": progress}
        if update.state == JobState.DEPLOYED:
            changes |= {"version": update.version, "metrics": _finite(update.metrics)}
            changes["reward_stats"] = _finite(update.reward_stats)
        await self._store.update_job(job_id, **{k: v for k, v in changes.items() if v is not None or k == "error"})
        if self._states.get(job_id) != update.state:  # state changes, not every progress tick
            self._states[job_id] = update.state
            await self._count()

    # ------------------------------------------------------------ the API

    async def create(self, body: Mapping[str, Any]) -> JobRecord:
        """Validate, export the dataset for the trainer, store the job (PENDING) and queue it."""
        unknown = sorted(set(body) - {"dataset", "slug", "base_model", "hyperparameters"})
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r}", param=unknown[0])
        slug = await self._new_slug(body.get("slug"))
        base = self._base_model(body.get("base_model", ""))
        hyperparameters = _hyperparameters(body.get("hyperparameters") or {})
        if not isinstance(body.get("dataset"), str):
            raise InvalidRequestError("dataset: the id or name of a dataset is required", param="dataset")
        dataset = await self._datasets.get(body["dataset"])
        if dataset.train < 1:
            raise InvalidRequestError(f"dataset {dataset.name!r} has no TRAIN pairs", param="dataset")
        now = datetime.now(UTC)
        job_id = new_id("job", now)
        data_path = await self._export(dataset.id, job_id, "data.jsonl")
        job = JobRecord(job_id, slug, dataset.id, base, hyperparameters, str(data_path), now, now)
        await self._store.create_job(job)
        if self._settings.training_worker:  # else the worker replica picks it up from the store
            await self._submit(job, resume=False)
        return await self._store.get_job(job_id)

    async def create_import(self, body: Mapping[str, Any]) -> JobRecord:
        """`{source, slug, calibration_dataset?}`: a job (kind "import") running `rewardgate-rm import SOURCE` into
        the models directory, calibrated on the dataset's records when one is named (exported like a training
        job's data)."""
        unknown = sorted(set(body) - {"source", "slug", "calibration_dataset"})
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r}", param=unknown[0])
        slug = await self._new_slug(body.get("slug"))
        source = body.get("source")
        if not isinstance(source, str):
            raise InvalidRequestError("source: a hub id 'owner/name' or a model directory", param="source")
        if not _HUB_ID.fullmatch(source):  # a path: only inside base_model_dirs, refused alike otherwise
            allowed = self._allowed_base_dir(source)
            if allowed is None:
                raise InvalidRequestError(
                    "source: not a hub id 'owner/name' or a model directory under the configured base_model_dirs",
                    param="source",
                )
            source = allowed
        now = datetime.now(UTC)
        job_id = new_id("job", now)
        dataset_id, data_path = "", ""
        if body.get("calibration_dataset") is not None:
            if not isinstance(body["calibration_dataset"], str):
                raise InvalidRequestError("calibration_dataset: a dataset id or name", param="calibration_dataset")
            dataset = await self._datasets.get(body["calibration_dataset"])
            dataset_id, data_path = dataset.id, str(await self._export(dataset.id, job_id, "calibration.jsonl"))
        job = JobRecord(job_id, slug, dataset_id, source, {}, data_path, now, now, kind="import")
        await self._store.create_job(job)
        if self._settings.training_worker:
            await self._submit(job, resume=False)
        return await self._store.get_job(job_id)

    async def _new_slug(self, slug: object) -> str:
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            raise InvalidRequestError(
                f"slug: 1 to 128 lowercase letters, digits, '.', '_' or '-', got {slug!r}", param="slug"
            )
        if await self._store.criterion_versions(slug):
            raise CriterionExistsError(f"{slug!r} is a criterion's slug: choose another")
        return slug

    async def _export(self, dataset_id: str, job_id: str, name: str) -> Path:
        path = self._jobs_dir / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:  # a snapshot: later uploads do not change this job
            async for line in self._datasets.export(dataset_id):
                out.write(line)
        return path.resolve()

    def _base_model(self, value: object) -> str:
        """An offline alias, a hub id, or a directory inside one of `base_model_dirs`. Any other path is refused
        with the same answer whether it exists or not: a key holder must not learn the server's file system."""
        if not isinstance(value, str):
            raise InvalidRequestError("base_model: expected a string", param="base_model")
        known = {alias for b in base_models() for alias in (b.id, *b.aliases)}
        if value == "" or value in known or _HUB_ID.fullmatch(value):
            return value
        allowed = self._allowed_base_dir(value)
        if allowed is not None:
            return allowed
        choices = ", ".join(b.id for b in base_models())
        where = " or a model directory under the configured base_model_dirs" if self._settings.base_model_dirs else ""
        raise InvalidRequestError(
            f"base_model: not an offline alias ({choices}), a hub id (org/name){where}", param="base_model"
        )

    def _allowed_base_dir(self, value: str) -> str | None:
        """`value` resolved, when it is an existing directory inside a configured base-model folder."""
        if "\0" in value:
            return None
        path = Path(value).resolve()
        for root in (Path(d).resolve() for d in self._settings.base_model_dirs):
            if path.is_relative_to(root) and path != root and path.is_dir():
                return str(path)
        return None

    async def get(self, job_id: str) -> JobRecord:
        return await self._store.get_job(job_id)

    async def list_jobs(self) -> list[JobRecord]:
        return list(await self._store.list_jobs(limit=MAX_PAGE))

    async def delete_model(self, slug: str) -> bool:
        """Retire a reward model (OpenPipe's DELETE /models/{slug}): stop its unfinished jobs, then delete its jobs
        and its versions under models_dir, so the slug no longer resolves. False when neither existed."""
        if not _SLUG.fullmatch(slug):  # also keeps the path below inside models_dir
            return False
        for job in await self._store.list_jobs(limit=MAX_PAGE):
            if job.slug == slug and job.state not in _FINISHED:
                await self.cancel(job.id)
        folder = Path(self._settings.models_dir) / slug
        found = folder.is_dir()
        if found:
            await asyncio.to_thread(shutil.rmtree, folder)
        found = await self._store.delete_jobs(slug) > 0 or found
        if self._settings.training_worker:
            await self._count()
        return found

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self._store.get_job(job_id)
        if job.state in _FINISHED:
            raise InvalidRequestError(f"job {job_id} already finished ({job.state})", param="id")
        if not await self._runner.cancel(job_id):  # not in this process: the worker replica's poll stops it
            await self._store.update_job(job_id, state="ERROR", error="cancelled")
        return await self._store.get_job(job_id)


def _hyperparameters(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError("hyperparameters: expected an object", param="hyperparameters")
    unknown = sorted(set(raw) - set(_HYPERPARAMETERS))
    if unknown:
        allowed = ", ".join(_HYPERPARAMETERS)
        raise InvalidRequestError(
            f"hyperparameters.{unknown[0]}: unknown (allowed: {allowed})", param="hyperparameters"
        )
    out: dict[str, Any] = {}
    batch = raw.get("batch_size", "auto")
    if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096):
        raise InvalidRequestError("hyperparameters.batch_size: 'auto' or an integer 1..4096", param="batch_size")
    out["batch_size"] = batch
    rate = raw.get("learning_rate")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
            raise InvalidRequestError("hyperparameters.learning_rate: a number in (0, 1)", param="learning_rate")
        out["learning_rate"] = float(rate)
    epochs = raw.get("epochs")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 100:
            raise InvalidRequestError("hyperparameters.epochs: an integer 1..100", param="epochs")
        out["epochs"] = epochs
    return out


def _finite(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-storable copy: non-finite numbers (a metric of an empty TEST split) become null."""
    if value is None:
        return None
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in value.items()}
