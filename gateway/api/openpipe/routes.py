"""The /api/v1 handlers: each parses OpenPipe's body (a strict model of gateway.api.openpipe.protocol), calls the
service /v1 uses, and renders OpenPipe's answer. Decisions where OpenPipe and rewardgate differ are the README's
("OpenPipe API"); the ones a handler makes:

- chat/completions is /v1's pipeline, with OpenPipe's default: a request is stored unless `op-log-request: false`
  (or `store: false`) says otherwise.
- report stores the call as a log (arrival time; receivedAt - requestedAt as its latency), tags merged under
  reqPayload.metadata; a statusCode >= 400 or an errorMessage makes its candidates errors.
- logs/update-metadata filters on `model`, `completionId` (a completion's `id`), `metadata.KEY` and `tags.KEY`.
- models are reward models: one per slug, its newest training job's status; a slug deployed outside the API (the
  trainer's CLI) is listed as DEPLOYED with no job.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import Route, Services, chat, criteria
from gateway.api.bodies import read_json, tag_values, validated
from gateway.api.openpipe.protocol import (
    DatasetCreateRequest,
    EntriesCreated,
    EntriesCreateRequest,
    EntryCreationError,
    EntryCreationErrors,
    JudgementUsage,
    LoggedCall,
    LogsFilter,
    MatchedLogs,
    ModelCreateRequest,
    ModelInfo,
    ModelTraining,
    OpenPipeDataset,
    OpenPipeDatasetList,
    OpenPipeDeleted,
    OpenPipeJudgement,
    OpenPipeModel,
    OpenPipeModelList,
    ReportAnswer,
    ReportInfo,
    ReportRequest,
    UpdateMetadataRequest,
    UpdateTagsRequest,
)
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.protocol import TIME_FORMAT
from gateway.reward_serving.protocol import ModelCard
from gateway.service.datasets import read_entries
from gateway.service.handoffs import Reported
from gateway.service.training import DEFAULT_LEARNING_RATE, base_models
from gateway.store import DatasetRecord, JobRecord, LogQuery, validate_metadata

PREFIX = "/api/v1"


def _json(model: Any) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True))


def _time(record: DatasetRecord | JobRecord, name: str = "created_at") -> str:
    return str(getattr(record, name).strftime(TIME_FORMAT))


# ---------------------------------------------------------------- chat and logs


async def chat_completions(request: Request, services: Services) -> Response:
    return await chat.chat_completions(request, services, log_by_default=True)


async def report(request: Request, services: Services) -> Response:
    body = validated(ReportRequest, await read_json(request, services.settings))
    payload = body.req_payload or {}
    tags = tag_values(body.tags or {}, "tags")
    if payload.get("metadata") is not None:
        tags |= tag_values(payload["metadata"], "reqPayload.metadata")
    failed = body.error_message is not None or (body.status_code is not None and body.status_code >= 400)
    status = "error" if body.status_code is None else f"{body.status_code:g}"
    error = f"HTTP {status}: {body.error_message or 'the call failed'}" if failed else None
    latency = None
    if body.requested_at is not None and body.received_at is not None:
        latency = max(0.0, float(body.received_at - body.requested_at))
    response = body.resp_payload if isinstance(body.resp_payload, dict) else None
    model = payload.get("model") if isinstance(payload.get("model"), str) else ""
    metadata = validate_metadata({k: v for k, v in tags.items() if v is not None})
    log = await services.chat.report(Reported(str(model), payload, response, error, latency, metadata))
    return _json(ReportAnswer(rewardgate=ReportInfo(log_id=log.id)))


def _log_query(filters: list[LogsFilter]) -> LogQuery:
    """OpenPipe's log filters (all must hold) as a LogQuery."""
    metadata: dict[str, str] = {}
    fields: dict[str, str] = {}
    for i, f in enumerate(filters):
        value = tag_values({"equals": f.equals}, f"filters[{i}]")["equals"]
        assert value is not None, "equals is never null"
        namespace, _, key = f.field.partition(".")
        if f.field in ("model", "completionId"):
            target, name = fields, f.field
        elif namespace in ("metadata", "tags") and key:
            target, name = metadata, key
        else:
            raise InvalidRequestError(
                f"filters[{i}].field: expected model, completionId, metadata.KEY or tags.KEY, got {f.field!r}",
                param=f"filters[{i}].field",
            )
        if name in target:
            raise InvalidRequestError(f"filters[{i}]: {f.field!r} is filtered twice", param=f"filters[{i}].field")
        target[name] = value
    return LogQuery(metadata=metadata, model=fields.get("model"), completion_id=fields.get("completionId"))


async def update_metadata(request: Request, services: Services) -> Response:
    body = validated(UpdateMetadataRequest, await read_json(request, services.settings))
    patch = tag_values(body.metadata, "metadata")
    return _json(MatchedLogs(matched_logs=await services.store.update_metadata_where(_log_query(body.filters), patch)))


async def update_tags(request: Request, services: Services) -> Response:
    body = validated(UpdateTagsRequest, await read_json(request, services.settings))
    patch = tag_values(body.tags, "tags")
    return _json(MatchedLogs(matched_logs=await services.store.update_metadata_where(_log_query(body.filters), patch)))


async def latest_logged_call(request: Request, services: Services) -> Response:
    """OpenPipe's local-testing endpoint (its SDK's tests read it): the newest log, in OpenPipe's shape."""
    page = await services.store.list_logs(limit=1)
    if not page.logs:
        return JSONResponse(None)
    log = page.logs[0]
    produced = [c for c in log.candidates if c.message is not None]
    errors = [c.error for c in log.candidates if c.error]
    choices = [{"index": i, "message": c.message, "finish_reason": c.finish_reason} for i, c in enumerate(produced)]
    response = {"id": log.completion_id, "object": "chat.completion", "model": log.model, "choices": choices}
    return _json(
        LoggedCall(
            created_at=log.created_at.strftime(TIME_FORMAT),
            cache_hit=log.cache_hit,
            status_code=None if errors or not produced else 200,
            error_message=errors[0] if errors else None,
            req_payload=log.request,
            resp_payload=response if produced else None,
            tags=log.metadata,
            metadata=log.metadata,
        )
    )


async def judge(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    criterion, result = await criteria.run_judge(body, services)
    assert result.score is not None, "a successful result has a score"
    prompt = int((result.usage or {}).get("prompt_tokens", 0))
    completion = int((result.usage or {}).get("completion_tokens", 0))
    return _json(
        OpenPipeJudgement(
            score=result.score,
            explanation=None if criterion.kind == "reward_model" else result.explanation,
            usage=JudgementUsage(total_tokens=prompt + completion, prompt_tokens=prompt, completion_tokens=completion),
            normalized=result.normalized,
            criterion={"slug": criterion.slug, "version": criterion.version, "kind": criterion.kind},
        )
    )


# ---------------------------------------------------------------- datasets


def _dataset(dataset: DatasetRecord, fine_tunes: int) -> OpenPipeDataset:
    created = _time(dataset)
    return OpenPipeDataset(
        id=dataset.id,
        name=dataset.name,
        created=created,
        updated=created,
        dataset_entry_count=dataset.train + dataset.test,
        fine_tune_count=fine_tunes,
    )


async def create_dataset(request: Request, services: Services) -> Response:
    body = validated(DatasetCreateRequest, await read_json(request, services.settings))
    return _json(_dataset(await services.datasets.create(name=body.name, display_name=True), 0))


async def list_datasets(request: Request, services: Services) -> Response:
    jobs = Counter(job.dataset_id for job in await services.jobs.list_jobs())
    datasets = [_dataset(d, jobs[d.id]) for d in await services.datasets.list_datasets()]
    return _json(OpenPipeDatasetList(data=datasets))


async def delete_dataset(request: Request, services: Services) -> Response:
    deleted = await services.datasets.delete(request.path_params["dataset_id"])
    return _json(OpenPipeDeleted(id=deleted, object="dataset"))


async def create_entries(request: Request, services: Services) -> Response:
    """OpenPipe adds the good entries and reports the bad ones: `skip_invalid` on /v1's upload."""
    body = validated(EntriesCreateRequest, await read_json(request, services.settings))
    added = await services.datasets.upload(
        request.path_params["dataset_id"], read_entries(body.entries), skip_invalid=True
    )
    errors = [EntryCreationError(entry_index=e.index, message=e.error) for e in added.invalid]
    return _json(EntriesCreated(entries_created=added.added, errors=EntryCreationErrors(data=errors)))


# ---------------------------------------------------------------- models (reward models and their training jobs)


def _model(slug: str, job: JobRecord | None, card: ModelCard | None) -> OpenPipeModel:
    """A slug as OpenPipe shows a fine-tuned model: its newest job's status, or DEPLOYED without one."""
    if job is not None:
        hp = job.hyperparameters
        shown = {"batch_size": hp.get("batch_size", "auto"), "num_epochs": hp.get("epochs")}
        if hp.get("learning_rate") is not None:
            shown["learning_rate_multiplier"] = round(hp["learning_rate"] / DEFAULT_LEARNING_RATE, 6)
        base = job.base_model or next(b.id for b in base_models() if b.default)
        training = ModelTraining(
            base_model=base,
            hyperparameters={k: v for k, v in shown.items() if v is not None},
            status=job.state,
            dataset_id=job.dataset_id,
            error_message=job.error,
        )
        created, updated = _time(job), _time(job, "updated_at")
    else:
        assert card is not None, "a model has a job or a deployed version"
        training = ModelTraining(
            base_model=card.base_model or "", hyperparameters={}, status="DEPLOYED", dataset_id="", error_message=None
        )
        created = updated = card.created_at or ""
    version = None if card is None else card.version
    return OpenPipeModel(
        id=slug,
        name=slug,
        description=f"reward model {slug}" + (f" ({version} deployed)" if version else ""),
        created=created,
        updated=updated,
        openpipe=training,
        context_window=(card.max_length or 0) if card else 0,
        rewardgate=ModelInfo(job_id=None if job is None else job.id, version=version),
    )


async def _models(services: Services) -> list[OpenPipeModel]:
    """Every slug with a training job (newest job first) or a deployed version."""
    newest: dict[str, JobRecord] = {}
    for job in await services.jobs.list_jobs():  # newest first
        newest.setdefault(job.slug, job)
    deployed = {card.slug: card for card in await services.criteria.reward_models() if card.latest}
    stale = [
        j
        for j in newest.values()
        if j.state == "DEPLOYED" and j.version != getattr(deployed.get(j.slug), "version", None)
    ]
    if stale:  # just deployed: DEPLOYED must mean op-criteria takes it now
        services.criteria.forget_reward_models()
        deployed = {card.slug: card for card in await services.criteria.reward_models() if card.latest}
    slugs = [*newest, *(slug for slug in deployed if slug not in newest)]
    return [_model(slug, newest.get(slug), deployed.get(slug)) for slug in slugs]


async def list_models(request: Request, services: Services) -> Response:
    return _json(OpenPipeModelList(data=await _models(services)))


async def get_model(request: Request, services: Services) -> Response:
    slug = request.path_params["slug"]
    for model in await _models(services):
        if model.id == slug:
            return _json(model)
    raise NotFoundError(f"model {slug!r} not found", param="slug", code="model_not_found")


async def create_model(request: Request, services: Services) -> Response:
    raw = await read_json(request, services.settings)
    config = raw.get("trainingConfig")
    provider = config.get("provider") if isinstance(config, dict) else None
    if provider is not None and provider != "openpipeReward":
        raise InvalidRequestError(
            f"trainingConfig.provider: rewardgate trains reward models only ('openpipeReward'), got {provider!r}",
            param="trainingConfig.provider",
        )
    body = validated(ModelCreateRequest, raw)
    hp = body.training_config.hyperparameters
    hyperparameters: dict[str, Any] = {"batch_size": (hp.batch_size if hp else None) or "auto"}
    if hp is not None and hp.learning_rate_multiplier is not None:
        hyperparameters["learning_rate"] = hp.learning_rate_multiplier * DEFAULT_LEARNING_RATE
    if hp is not None and hp.num_epochs is not None:
        hyperparameters["epochs"] = hp.num_epochs
    job = await services.jobs.create(
        {
            "dataset": body.dataset_id,
            "slug": body.slug,
            "base_model": body.training_config.base_model,
            "hyperparameters": hyperparameters,
        }
    )
    return _json(_model(job.slug, job, None))


async def delete_model(request: Request, services: Services) -> Response:
    slug = request.path_params["slug"]
    if not await services.jobs.delete_model(slug):
        raise NotFoundError(f"model {slug!r} not found (no training job, no version in the models directory)",
                            param="slug", code="model_not_found")  # fmt: skip
    services.criteria.forget_reward_models()  # op-criteria no longer takes it, from now on
    return _json(OpenPipeDeleted(id=slug, object="model"))


ROUTES: tuple[Route, ...] = (
    (f"{PREFIX}/chat/completions", chat_completions, "POST"),
    (f"{PREFIX}/report", report, "POST"),
    (f"{PREFIX}/logs/update-metadata", update_metadata, "POST"),
    (f"{PREFIX}/logs/update-tags", update_tags, "POST"),
    (f"{PREFIX}/local-testing-only-get-latest-logged-call", latest_logged_call, "GET"),
    (f"{PREFIX}/criteria/judge", judge, "POST"),
    (f"{PREFIX}/datasets", create_dataset, "POST"),
    (f"{PREFIX}/datasets", list_datasets, "GET"),
    (f"{PREFIX}/datasets/{{dataset_id}}", delete_dataset, "DELETE"),
    (f"{PREFIX}/datasets/{{dataset_id}}/entries", create_entries, "POST"),
    (f"{PREFIX}/models", list_models, "GET"),
    (f"{PREFIX}/models", create_model, "POST"),
    (f"{PREFIX}/models/{{slug}}", get_model, "GET"),
    (f"{PREFIX}/models/{{slug}}", delete_model, "DELETE"),
)
