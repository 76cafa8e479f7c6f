"""How uvicorn runs both servers (this reward server, and the gateway, whose composition root imports this module):
a protocol that bounds the time a client has to send a request's headers, and an access-log filter that keeps
secrets a client put in a query string out of the log. Imports uvicorn and the stdlib only: no torch.

Headers: uvicorn times out only idle kept-alive connections, so a client that connects and sends nothing, or one
header byte at a time, holds a connection as long as it likes (slowloris). `bounded_protocol(header_timeout_s)` is
uvicorn's httptools protocol with one more timer, armed when a connection opens and when a request's first byte
arrives, disarmed when its headers are complete; when it fires the client gets 408 and the connection is closed.
Bodies are bounded by each app (`body_timeout_s`), where the route knows how much it reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)
# Query parameters whose value must never reach a log: how clients (wrongly) pass keys in a URL.
_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|secret)=)[^&#\s]*"
)


def bounded_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, answering 408 and closing when headers take longer than `header_timeout_s`."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.header_timer is None:  # the next request on a kept-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self.header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport.is_closing():
                return
            logger.info("%s: no complete request headers within %g s: 408, closed", self.client, header_timeout_s)
            message = f"request headers not received within {header_timeout_s:g} s".encode()
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[408],
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n",
                        message,
                    ]
                )
            )
            self.transport.close()

    return HeaderTimeoutProtocol


def redact_query_secrets(path: str) -> str:
    """`/v1/logs?api_key=sk-1&limit=5` -> `/v1/logs?api_key=***&limit=5`."""
    return _SECRET_PARAM.sub(r"\1***", path)


class RedactedAccessLog(logging.Filter):
    """On uvicorn's access logger: the request line's query secrets replaced by *** (its args are
    (client, method, path with query, http version, status))."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "=" in args[2]:
            record.args = (*args[:2], redact_query_secrets(args[2]), *args[3:])
        return True


def serving_config(app: Any, *, host: str, port: int, log_level: str, header_timeout_s: float) -> Any:
    """The uvicorn Config both servers run with: the lifespan on, headers bounded, query secrets kept out of the
    access log."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", http=bounded_protocol(header_timeout_s)
    )
    access = logging.getLogger("uvicorn.access")  # after Config, which sets up uvicorn's logging
    if not any(isinstance(f, RedactedAccessLog) for f in access.filters):
        access.addFilter(RedactedAccessLog())
    return config
