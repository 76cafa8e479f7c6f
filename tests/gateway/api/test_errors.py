"""gateway.api.errors.error_reply: the one mapping from any exception to (status, OpenAI envelope, headers)."""

from __future__ import annotations

import pytest

from gateway.api.errors import error_reply
from gateway.criteria import UnknownCriterionError
from gateway.errors import (
    AuthenticationError,
    ClientGoneError,
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from gateway.store import InvalidInputError, LogNotFoundError, MetadataError, StoreBusyError, StoreError
from gateway.upstream.providers import (
    ForbiddenFieldError,
    UnknownModelError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeout,
)


@pytest.mark.parametrize(
    ("exc", "status", "type_", "param", "code"),
    [
        (InvalidRequestError("n out of range", param="n"), 400, "invalid_request_error", "n", None),
        (RequestTooLargeError("too big"), 413, "invalid_request_error", "body", None),
        (RequestTimeoutError("slow body"), 408, "invalid_request_error", "body", "request_timeout"),
        (ClientGoneError("left"), 499, "client_closed_request", None, "client_closed_request"),
        (AuthenticationError("no key"), 401, "authentication_error", "authorization", "invalid_api_key"),
        (UpstreamAuthError("openai: refused (401)"), 502, "api_error", None, "upstream_auth_error"),
        (ForbiddenFieldError("no", field="api_base"), 400, "invalid_request_error", "api_base", "forbidden_field"),
        (UnknownModelError("unknown provider"), 404, "not_found_error", "model", "model_not_found"),
        (UpstreamError(429, "slow down"), 429, "rate_limit_error", None, "upstream_error"),
        (UpstreamTimeout("late"), 504, "api_error", None, "timeout"),
        (UnknownCriterionError("rm@v9"), 400, "invalid_request_error", "op-criteria", "invalid_criteria"),
        (
            UnknownCriterionError("rm", param="criterion_id"),
            400,
            "invalid_request_error",
            "criterion_id",
            "invalid_criteria",
        ),
        (MetadataError("k", "too long"), 400, "invalid_request_error", "metadata.k", "invalid_metadata"),
        (InvalidInputError("bad cursor"), 400, "invalid_request_error", None, "invalid_value"),
        (LogNotFoundError("log_x"), 404, "not_found_error", "id", "log_not_found"),
        (StoreBusyError("locked"), 503, "api_error", None, "store_unavailable"),
        (StoreError("disk full"), 500, "api_error", None, "store_error"),
        (RuntimeError("secret internals"), 500, "api_error", None, "internal_error"),
    ],
)
def test_error_reply(exc: BaseException, status: int, type_: str, param: str | None, code: str | None) -> None:
    got_status, body, _ = error_reply(exc)
    assert got_status == status
    assert body == {"error": {"message": body["error"]["message"], "type": type_, "param": param, "code": code}}
    assert "secret internals" not in body["error"]["message"] and "disk full" not in body["error"]["message"]


def test_retry_after_is_passed_on() -> None:
    assert error_reply(UpstreamError(429, "slow", retry_after="3"))[2] == {"Retry-After": "3"}
    assert error_reply(StoreBusyError("locked"))[2] == {"Retry-After": "1"}
