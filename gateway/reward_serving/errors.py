"""The reward server's exception tree and the ONE mapping from an exception to its HTTP reply.

Imports nothing from the project; every other module of the package raises these.

    RewardServerError                 500 internal_error
     ├── InvalidRequestError          400 invalid_request_error   (`param` names the field)
     │    ├── RequestTooLargeError    413 invalid_request_error
     │    └── RequestTimeoutError     408 invalid_request_error   (the body did not come within body_timeout_s)
     ├── ModelNotFoundError           404 model_not_found         (unknown slug or version)
     ├── ModelLoadError               500 model_load_error        (the directory exists but does not load)
     ├── InferenceError               500 inference_error         (the forward pass failed)
     ├── OverloadedError              429 overloaded              (+ Retry-After: the queue is full)
     ├── UnavailableError             503 unavailable             (+ Retry-After: shutting down, unloading)
     └── ClientDisconnectedError      499 client_closed_request   (the client went away; nobody reads it)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

logger = logging.getLogger(__name__)


class RewardServerError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(RewardServerError):
    status = 400
    type = "invalid_request_error"


class RequestTooLargeError(InvalidRequestError):
    status = 413


class RequestTimeoutError(InvalidRequestError):
    status = 408


class ModelNotFoundError(RewardServerError):
    status = 404
    type = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = "model_not_found") -> None:
        super().__init__(message, param=param, code=code)


class ModelLoadError(RewardServerError):
    type = "model_load_error"


class InferenceError(RewardServerError):
    type = "inference_error"


class RetryableError(RewardServerError):
    """Base of the errors a client should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class OverloadedError(RetryableError):
    status = 429
    type = "overloaded"


class UnavailableError(RetryableError):
    status = 503
    type = "unavailable"


class ClientDisconnectedError(RewardServerError):
    status = 499
    type = "client_closed_request"


def error_reply(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error envelope, extra headers) for any exception; the only place that decides.

    Anything outside the tree is a bug: logged with its traceback, answered 500 without internals.
    """
    if not isinstance(exc, RewardServerError):
        logger.error("unexpected error", exc_info=exc)
        exc = RewardServerError("internal server error")
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RetryableError) else {}
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    return exc.status, body, headers
