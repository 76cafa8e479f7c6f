"""The gateway's own exception tree: the errors its layers raise for a client's request. Imports nothing; the ONE
mapping from any exception (these, and the store's, the providers' and the criteria's) to a response is
gateway.api.errors.error_reply.

    GatewayError                      500 internal_error
     ├── InvalidRequestError          400 invalid_request_error  (`param` names the field: n, stream, body...)
     │    ├── RequestTooLargeError    413 invalid_request_error
     │    └── HeadersTooLargeError    431 invalid_request_error  (the request's header fields, all together)
     ├── AuthenticationError          401 authentication_error   (code invalid_api_key)
     ├── NotFoundError                404 not_found_error
     └── CriterionFailedError         502 api_error              (a criterion could not judge: /v1/criteria/judge)
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class RequestTooLargeError(InvalidRequestError):
    status = 413


class HeadersTooLargeError(InvalidRequestError):
    status = 431


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"


class CriterionFailedError(GatewayError):
    """The criterion could not judge the output (judge unavailable, malformed verdict, reward server down)."""

    status = 502
    type = "api_error"
