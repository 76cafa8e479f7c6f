"""The gateway's own exception tree: the errors its layers raise for a client's request. Imports nothing; the ONE
mapping from any exception (these, and the store's, the providers' and the criteria's) to a response is
gateway.api.errors.error_reply.

    GatewayError                      500 internal_error
     ├── InvalidRequestError          400 invalid_request_error  (`param` names the field: n, stream, body...)
     │    ├── RequestTooLargeError    413 invalid_request_error  (param "body")
     │    ├── RequestTimeoutError     408 invalid_request_error  (the body did not arrive within body_timeout_s)
     │    └── HeadersTooLargeError    431 invalid_request_error  (the request's header fields, all together)
     ├── AuthenticationError          401 authentication_error   (param "authorization", code invalid_api_key)
     ├── ClientGoneError              499 client_closed_request  (the client left: its work was cancelled)
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

    def __init__(self, message: str, *, param: str | None = "body", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class RequestTimeoutError(InvalidRequestError):
    """The client did not send its whole body within `body_timeout_s`."""

    status = 408

    def __init__(self, message: str) -> None:
        super().__init__(message, param="body", code="request_timeout")


class ClientGoneError(GatewayError):
    """The client went away (mid-body, or while its answer was being made): its work was dropped. Counted as 499,
    nginx's status for it; nobody reads the answer."""

    status = 499
    type = "client_closed_request"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="client_closed_request")


class HeadersTooLargeError(InvalidRequestError):
    status = 431


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="authorization", code="invalid_api_key")


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"


class CriterionFailedError(GatewayError):
    """The criterion could not judge the output (judge unavailable, malformed verdict, reward server down)."""

    status = 502
    type = "api_error"
