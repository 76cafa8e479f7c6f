"""The ONE mapping from any exception to (status, OpenAI error envelope, extra headers): the gateway's own tree
(gateway.errors) and the errors of the other layers, each mapped where it is raised, never re-wrapped there.

    gateway.errors.GatewayError       its own `.status`, `.type`, `.param`, `.code`
    upstream.ProviderError            its own `.status` and `.code` (UnknownModelError 404, ForbiddenFieldError 400,
                                      UpstreamError: the upstream's status, timeouts 504, AllCandidatesFailed ...)
    criteria.CriteriaError            400, param "op-criteria" or the field that named the criterion (its `.param`)
    criteria.CriterionSpecError       400, param "spec.FIELD" (a definition's spec is invalid)
    store.MetadataError               400, param "metadata.KEY" (or "metadata")
    store.CriterionExistsError        409 (the slug is taken, or a new version would change its kind)
    store.DatasetExistsError          409, code dataset_exists (the name is taken)
    store.InvalidEntriesError         400, code invalid_entries, + top-level "invalid": [{index, line, error}]
    store.InvalidInputError           400 (bad cursor, limit, datetime)
    store.LogNotFoundError            404
    store.CriterionNotFoundError      404
    store.DatasetNotFoundError        404, code dataset_not_found
    store.JobNotFoundError            404, code job_not_found
    store.EntryNotFoundError          404, code entry_not_found
    store.StoreBusyError / Closed     503 + Retry-After: 1
    store.StoreError                  500
    anything else                     500, logged with its traceback, answered without internals

The /api/v1 mount (OpenPipe's API) answers the same errors in OpenPipe's shape: `openpipe_envelope`.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.criteria import CriteriaError, CriterionSpecError
from gateway.errors import GatewayError
from gateway.store import (
    CriterionExistsError,
    CriterionNotFoundError,
    DatasetExistsError,
    DatasetNotFoundError,
    EntryNotFoundError,
    InvalidEntriesError,
    JobNotFoundError,
    LogNotFoundError,
    MetadataError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
)
from gateway.store import InvalidInputError as StoreInputError
from gateway.upstream.providers import ForbiddenFieldError, ProviderError, UpstreamError
from gateway.upstream.router import AllCandidatesFailed

logger = logging.getLogger(__name__)

Reply = tuple[int, dict[str, Any], dict[str, str]]


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def _type_for(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def _envelope(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_reply(exc: BaseException) -> Reply:
    """(status, {"error": {message, type, param, code}}, extra headers) for any exception; the only decider."""
    if isinstance(exc, GatewayError):
        return exc.status, _envelope(exc.message, exc.type, exc.param, exc.code), {}
    if isinstance(exc, ProviderError):
        retry_after = exc.retry_after if isinstance(exc, UpstreamError | AllCandidatesFailed) else None
        headers = {"Retry-After": retry_after} if retry_after else {}
        param = "model" if exc.code == "model_not_found" else None
        if isinstance(exc, ForbiddenFieldError):
            param = exc.field
        return exc.status, _envelope(str(exc), _type_for(exc.status), param, exc.code), headers
    if isinstance(exc, CriteriaError):
        return 400, _envelope(str(exc), "invalid_request_error", exc.param, "invalid_criteria"), {}
    if isinstance(exc, CriterionSpecError):
        return 400, _envelope(str(exc), "invalid_request_error", exc.field, "invalid_criterion_spec"), {}
    if isinstance(exc, CriterionExistsError):
        return 409, _envelope(str(exc), "invalid_request_error", "slug", "criterion_exists"), {}
    if isinstance(exc, CriterionNotFoundError):
        return 404, _envelope(str(exc), "not_found_error", "id", "criterion_not_found"), {}
    if isinstance(exc, DatasetExistsError):
        return 409, _envelope(str(exc), "invalid_request_error", "name", "dataset_exists"), {}
    if isinstance(exc, InvalidEntriesError):
        body = _envelope(str(exc), "invalid_request_error", "entries", "invalid_entries")
        return 400, {**body, "invalid": [{"index": e.index, "line": e.line, "error": e.error} for e in exc.invalid]}, {}
    if isinstance(exc, JobNotFoundError):
        return 404, _envelope(str(exc), "not_found_error", "id", "job_not_found"), {}
    if isinstance(exc, DatasetNotFoundError):
        return 404, _envelope(str(exc), "not_found_error", "dataset", "dataset_not_found"), {}
    if isinstance(exc, EntryNotFoundError):
        return 404, _envelope(str(exc), "not_found_error", "entry_id", "entry_not_found"), {}
    if isinstance(exc, MetadataError):
        param = "metadata" if exc.key is None else f"metadata.{exc.key}"
        return 400, _envelope(str(exc), "invalid_request_error", param, "invalid_metadata"), {}
    if isinstance(exc, StoreInputError):
        return 400, _envelope(str(exc), "invalid_request_error", None, "invalid_value"), {}
    if isinstance(exc, LogNotFoundError):
        return 404, _envelope(str(exc), "not_found_error", "id", "log_not_found"), {}
    if isinstance(exc, StoreBusyError | StoreClosedError):
        return (
            503,
            _envelope("the log store is busy; retry shortly", "api_error", None, "store_unavailable"),
            {"Retry-After": "1"},
        )
    if isinstance(exc, StoreError):
        logger.error("log store error", exc_info=exc)
        return 500, _envelope("the log store failed", "api_error", None, "store_error"), {}
    logger.error("unexpected error", exc_info=exc)
    return 500, _envelope("internal server error", "api_error", None, "internal_error"), {}


# tRPC's codes, which OpenPipe's API answers with; others by class (4xx BAD_REQUEST, 5xx INTERNAL_SERVER_ERROR)
_TRPC = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE",
         429: "TOO_MANY_REQUESTS", 502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "TIMEOUT"}  # fmt: skip


def openpipe_envelope(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An error_reply body as OpenPipe's API answers it: `{"message", "code"}` (what its SDK's ApiError carries
    as `.body`), with OpenAI's `error` object kept beside them (what the openai client reads)."""
    code = _TRPC.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_SERVER_ERROR")
    return {"message": body["error"]["message"], "code": code, **body}
