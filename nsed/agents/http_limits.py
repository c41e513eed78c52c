"""Bounds on one model call over HTTP: a total deadline and a cap on the reply's size.

Why: httpx's timeout applies to each read, so a server that drips one byte a second never
times out, and httpx reads whatever it is sent into memory, so a 50 MB reply becomes a 50 MB
proposal in every trace and row. A hostile or broken backend must cost one agent one failed
call, never the deliberation:

* :func:`call_deadline` bounds the whole call (connecting, waiting, reading, retries and their
  backoff) and turns its expiry into ``BackendTimeout``; :func:`seconds_left` lets a retry loop
  give up instead of sleeping past it;
* :func:`request_capped` reads the body (after decompression) up to ``max_bytes`` and fails
  with ``ReplyTooLarge`` beyond it, whatever ``Content-Length`` says or omits; its ``.json()``
  turns a body nested too deeply for the parser (``[`` × 100,000: RecursionError) into the
  ValueError every caller already handles as "not JSON".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx

from nsed.errors import BackendError, BackendTimeout, redact_url

# Hop-by-hop framing of the reply as received; the rebuilt response holds the decoded body.
_FRAMING_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class ReplyTooLarge(BackendError):
    """The reply body exceeded the model's ``max_reply_bytes``; it was dropped unread."""


class BoundedResponse(httpx.Response):
    """A fully read reply whose ``json()`` fails as ValueError on any unreadable body."""

    def json(self, **kwargs: Any) -> Any:
        try:
            return super().json(**kwargs)
        except RecursionError:
            raise ValueError("the body is nested too deeply to be read as JSON") from None


@contextmanager
def call_deadline(seconds: float, endpoint: str) -> Iterator[None]:
    """Fail the enclosed call with BackendTimeout once ``seconds`` have passed."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise BackendTimeout(
            f"{redact_url(endpoint)} did not answer within {seconds:g} s (the deadline of the "
            "whole call: connecting, waiting, reading the reply and any retries)",
            endpoint=endpoint,
        ) from None


def seconds_left() -> float:
    """Seconds until the innermost deadline (inf when there is none)."""
    deadline = anyio.current_effective_deadline()
    return math.inf if math.isinf(deadline) else deadline - anyio.current_time()


async def request_capped(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    max_bytes: int,
    endpoint: str,
    **options: Any,
) -> httpx.Response:
    """``client.request(method, url, **options)`` with the body read up to ``max_bytes``.

    The returned response is complete (``.json()``, ``.text`` work); httpx errors propagate
    unchanged, so callers keep their own retry rules for them.
    """
    request = client.build_request(method, url, **options)
    response = await client.send(request, stream=True)
    try:
        declared = response.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else 0
        body = bytearray()
        if size <= max_bytes:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    break
        if size > max_bytes or len(body) > max_bytes:
            raise ReplyTooLarge(
                f"{redact_url(endpoint)} sent a reply larger than {max_bytes} bytes "
                "(max_reply_bytes); it was dropped",
                endpoint=endpoint,
                status=response.status_code,
            )
    finally:
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in _FRAMING_HEADERS]
    return BoundedResponse(
        response.status_code, headers=headers, content=bytes(body), request=request
    )


__all__ = ["BoundedResponse", "ReplyTooLarge", "call_deadline", "request_capped", "seconds_left"]
