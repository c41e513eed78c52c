"""Connections before a request exists: a deadline for the headers and a cap on connections.

Why: uvicorn starts timing a connection only once a response is complete (keep-alive), so a
client that opens a socket and sends half a header line, then a byte now and then
(slowloris), holds it forever, and nothing limits how many it holds. An ASGI app cannot help:
it is called only once the headers are complete. So the server speaks HTTP/1.1 through
:func:`guarded_protocol`, uvicorn's h11 protocol with two rules added:

* the request line and headers must arrive within ``header_timeout_s`` of the connection
  opening or of the previous response ending (an idle kept-alive connection is closed by
  uvicorn's own keep-alive timeout first); a late one is answered 408 and closed;
* beyond ``max_connections`` open connections a new one is answered 503 and closed at once.

The body has its own deadline in the app (:func:`nsed.server.limits.read_body`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

# Run ids are capabilities to read traces: the access log shows the route, not the id.
_TRACE_PATH = re.compile(r"(/v1/deliberations/)[^/?\s]+")


def _raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (set by subclass)."""

    header_timeout_s: float = 10.0
    max_connections: int = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_since_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(
                _raw_response(
                    503,
                    "Service Unavailable",
                    f"the server holds its limit of {self.max_connections} connections; retry",
                    "retry-after: 1\r\n",
                )
            )
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._waiting_since_cycle = self.cycle  # a new request replaces this object
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.cycle is not self._waiting_since_cycle or self.transport.is_closing():
            return  # a request arrived in time (or the connection is already going)
        self.transport.write(
            _raw_response(
                408,
                "Request Timeout",
                f"the request headers did not arrive within {self.header_timeout_s:g} s",
            )
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class to pass as uvicorn's ``http=`` for these limits."""
    return type(
        "GuardedH11Protocol",
        (_GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


def mask_trace_ids(path: str) -> str:
    """``/v1/deliberations/<id>`` with the id replaced (for access logs)."""
    return _TRACE_PATH.sub(r"\1{id}", path)


class AccessLogIdFilter:
    """A logging filter for ``uvicorn.access`` that hides run ids in request paths."""

    def filter(self, record: Any) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], mask_trace_ids(args[2]), *args[3:])
        return True


__all__ = ["AccessLogIdFilter", "guarded_protocol", "mask_trace_ids"]
