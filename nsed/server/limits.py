"""What a request must pass before it may deliberate: a key, a body size, a free slot.

Deliberations are long and expensive, so the server refuses early and cheaply: bearer keys
(compared in constant time), a capped body, and a concurrency limit with a bounded FIFO queue
whose overflow is answered 429 rather than left to pile up.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.requests import Request

from nsed.server.errors import ApiError
from nsed.server.metrics import ServerMetrics
from nsed.server.settings import ServerSettings


class QueueFull(Exception):
    """All slots are busy and the queue is full."""


class Admission:
    """At most ``limit`` holders at once, at most ``max_queue`` waiting (FIFO)."""

    def __init__(self, limit: int, max_queue: int, metrics: ServerMetrics) -> None:
        self._slots = anyio.Semaphore(limit)
        self._max_queue = max_queue
        self._metrics = metrics
        self.waiting = 0
        self.running = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            if self.waiting >= self._max_queue:
                raise QueueFull from None
            self.waiting += 1
            self._metrics.queued.set(self.waiting)
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
                self._metrics.queued.set(self.waiting)
        self.running += 1
        self._metrics.in_flight.set(self.running)
        try:
            yield
        finally:
            self.running -= 1
            self._metrics.in_flight.set(self.running)
            self._slots.release()


def authorize(request: Request, settings: ServerSettings) -> None:
    """Bearer-key check in constant time; the key itself is never logged or echoed."""
    if not settings.api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' (api_key= in the OpenAI SDK)",
            code="missing_api_key",
            headers={"www-authenticate": "Bearer"},
        )
    given_bytes = given.strip().encode()
    matches = [
        hmac.compare_digest(given_bytes, key.get_secret_value().encode())
        for key in settings.api_keys
    ]
    if not any(matches):
        raise ApiError(
            401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"}
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (by Content-Length and by what arrives)."""
    too_large = ApiError(
        413,
        f"request body is larger than {limit} bytes; shorten the conversation",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
