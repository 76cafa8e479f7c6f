"""The training-jobs API (docs/LIFECYCLE.md, "Training jobs"): thin handlers over gateway.service.jobs, mounted
by gateway.proxy behind its middleware. Must not import torch or trainer.

    POST /v1/reward-models               {dataset, slug, base_model?, hyperparameters?}  -> 201 job (PENDING/QUEUED)
    POST /v1/reward-models/import        {source, slug, calibration_dataset?}  -> 201 job of kind "import"
    POST /v1/reward-models/distill       {criterion, slug, metadata?, model?, limit?, test_fraction?, dataset?,
                                         base_model?, hyperparameters?}  -> 201 job training on the judge's scores
    GET  /v1/reward-models               every job, newest first
    GET  /v1/reward-models/{id}          one job: state, progress, metrics, version
    POST /v1/reward-models/{id}/cancel   -> the job, ERROR "cancelled" (400 once finished)
    GET  /v1/base-models                 the trainer's offline aliases for the console's select
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import Route, Services
from gateway.api.bodies import read_json
from gateway.protocol import BaseModelAlias, Job, render
from gateway.service.training import base_models


async def create_job(request: Request, services: Services) -> Response:
    job = await services.jobs.create(await read_json(request, services.settings))
    return JSONResponse(render(Job, job), status_code=201)


async def import_job(request: Request, services: Services) -> Response:
    job = await services.jobs.create_import(await read_json(request, services.settings))
    return JSONResponse(render(Job, job), status_code=201)


async def distill_job(request: Request, services: Services) -> Response:
    job = await services.distill.create(await read_json(request, services.settings))
    return JSONResponse(render(Job, job), status_code=201)


async def list_jobs(request: Request, services: Services) -> Response:
    return JSONResponse({"object": "list", "data": [render(Job, job) for job in await services.jobs.list_jobs()]})


async def get_job(request: Request, services: Services) -> Response:
    return JSONResponse(render(Job, await services.jobs.get(request.path_params["id"])))


async def cancel_job(request: Request, services: Services) -> Response:
    return JSONResponse(render(Job, await services.jobs.cancel(request.path_params["id"])))


async def list_base_models(request: Request, services: Services) -> Response:
    data = [render(BaseModelAlias, b) for b in base_models()]
    return JSONResponse({"object": "list", "data": data})


ROUTES: tuple[Route, ...] = (
    ("/v1/reward-models", create_job, "POST"),
    ("/v1/reward-models/import", import_job, "POST"),
    ("/v1/reward-models/distill", distill_job, "POST"),
    ("/v1/reward-models", list_jobs, "GET"),
    ("/v1/reward-models/{id}", get_job, "GET"),
    ("/v1/reward-models/{id}/cancel", cancel_job, "POST"),
    ("/v1/base-models", list_base_models, "GET"),
)
