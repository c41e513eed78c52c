"""What a request must pass before it may deliberate, and who may read what it produced.

Deliberations are long and expensive, so the server refuses early and cheaply: bearer keys
(compared in constant time), a capped body that must arrive in time, request options within
the server's ranges, and a concurrency limit with a bounded FIFO queue whose overflow is
answered 429 rather than left to pile up.

Ownership: :func:`authorize` says who is calling (a :class:`Caller`) and :func:`may_read`
is the one rule every route applies to a trace (or a listing of traces): a trace belongs to
the key that created it; admin keys read every trace; with auth off anyone reads anything.
Owners are kept as key ids (a hash of the key), never as keys, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from nsed.server.errors import ApiError
from nsed.server.metrics import ServerMetrics
from nsed.server.protocol import ChatCompletionRequest
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


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the id of its key (None with auth off), and whether it is admin."""

    key_id: str | None
    admin: bool


def key_id(key: str) -> str:
    """The owner id stored with a trace: a hash of the key, never the key itself."""
    return hashlib.sha256(b"nsed-trace-owner\x00" + key.encode()).hexdigest()[:32]


def may_read(caller: Caller, owner: str | None) -> bool:
    """Whether ``caller`` may read a trace created by ``owner`` (a key id, or None when it was
    made with auth off). The one ownership rule of the server; compares in constant time."""
    if caller.admin:
        return True
    if owner is None or caller.key_id is None:
        return False
    return hmac.compare_digest(owner, caller.key_id)


def authorize(request: Request, settings: ServerSettings) -> Caller:
    """Bearer-key check in constant time (every key is compared, the match picked after); the
    key itself is never logged or echoed. With no keys configured, everyone is admin."""
    if not settings.api_keys and not settings.admin_keys:
        return Caller(key_id=None, admin=True)
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
    keys = [(key, False) for key in settings.api_keys] + [(k, True) for k in settings.admin_keys]
    matches = [
        (hmac.compare_digest(given_bytes, key.get_secret_value().encode()), admin)
        for key, admin in keys
    ]
    if not any(matched for matched, _ in matches):
        raise ApiError(
            401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"}
        )
    admin = any(matched and is_admin for matched, is_admin in matches)
    return Caller(key_id=key_id(given.strip()), admin=admin)


def check_request_limits(req: ChatCompletionRequest, settings: ServerSettings) -> None:
    """Options within this server's ranges (the protocol bounds the rest): 400 beyond."""
    opts = req.nsed
    for name in ("rounds", "min_rounds"):
        value = getattr(opts, name, None) if opts is not None else None
        if value is not None and value > settings.max_rounds:
            raise ApiError(
                400,
                f"nsed.{name}={value} is more than this server allows ({settings.max_rounds}); "
                "ask for fewer rounds (the operator sets it with --max-rounds)",
                param=f"nsed.{name}",
            )


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, refusing more than ``limit`` bytes (by Content-Length and by what arrives)
    and a body that takes longer than ``timeout_s`` to arrive (408: a slow drip)."""
    try:
        with anyio.fail_after(timeout_s):
            return await _read_capped(request, limit)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout_s:g} s",
            code="request_timeout",
        ) from None


async def _read_capped(request: Request, limit: int) -> bytes:
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
