"""Server-sent events for a streamed deliberation: the encoding and the ASGI writer.

Progress goes out as SSE comments (``: ...``, which every SSE client skips) or, on request, as
chunks with an ``nsed_event`` field, or as ``delta.reasoning_content`` lines that chat UIs
(Open WebUI, LibreChat) show in their "thinking" pane while the content stays the answer. A
keep-alive comment is sent while nothing happens so proxies do not close a long deliberation.
Headers are held back until the first write so that a failure before the first round still
gets a real status code.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
from starlette.types import Send

from nsed.orchestrator.events import (
    AgentFailed,
    CallTruncated,
    Event,
    Finished,
    ProposalReceived,
    ReviewReceived,
    RoundScored,
    RoundStarted,
)

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def sse_comment(text: str) -> bytes:
    """``text`` as one SSE comment line (newlines folded: a comment cannot span lines)."""
    return f": {' '.join(text.split())}\n\n".encode()


def progress_comment(event: Event) -> str | None:
    """One line of SSE comment for a progress event (None: not shown)."""
    if isinstance(event, RoundStarted):
        return f"round {event.round} started: {len(event.agents)} agents"
    if isinstance(event, ProposalReceived):
        return f"round {event.round}: proposal from {event.proposal.agent}"
    if isinstance(event, ReviewReceived):
        return f"round {event.round}: reviews from {event.reviewer}"
    if isinstance(event, AgentFailed):
        return f"round {event.round}: {event.agent} failed to {event.phase}"
    if isinstance(event, CallTruncated):
        return f"round {event.round}: {event.agent}'s {event.phase} was cut at max_tokens"
    if isinstance(event, RoundScored):
        r = event.record
        return f"round {r.index} scored: winner {r.winner}, conviction {r.conviction:.2f}"
    if isinstance(event, Finished):
        return None
    return str(getattr(event, "type", "event"))


def event_payload(event: Event) -> dict[str, Any]:
    """An event as JSON; ``Finished`` is summarised (the trace is at /v1/deliberations/{id})."""
    if isinstance(event, Finished):
        d = event.deliberation
        return {
            "type": "finished",
            "rounds": len(d.rounds),
            "stopped_because": d.stopped_because,
            "winner": d.winner,
            "final": d.final,
        }
    return event.model_dump(mode="json")


def pieces(text: str, size: int = 80) -> list[str]:
    """``text`` in deltas of about ``size`` characters, split after whitespace when possible."""
    out: list[str] = []
    current = ""
    for word in re.findall(r"\S+\s*|\s+", text):
        if current and len(current) + len(word) > size:
            out.append(current)
            current = ""
        current += word
    if current:
        out.append(current)
    return out


class ResponseWriter:
    """The ASGI send side of one response: a JSON body, or SSE headers and then events.

    Writes are serialised by a lock (the event pump and the keep-alive task write at once). A
    client that has gone stops every further write and cancels ``scope``, which ends the
    deliberation and its backend calls.
    """

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.send: Send | None = None
        self.scope: anyio.CancelScope | None = None
        self.started = False
        self.finished = False
        self.client_gone = False
        self._lock = anyio.Lock()

    def _header_list(self, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
        headers = {**self.headers, **extra}
        return [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]

    async def send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        extra = {"content-type": "application/json", "content-length": str(len(body))}
        async with self._lock:
            await self._raw_send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": self._header_list({**extra, **(headers or {})}),
                }
            )
            self.finished = True
            await self._raw_send({"type": "http.response.body", "body": body, "more_body": False})

    async def start_sse(self, first: bytes) -> None:
        """Send the SSE headers and then ``first``, once."""
        if self.started:
            return
        async with self._lock:
            if self.started:
                return
            self.started = True
            headers = {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            }
            await self._raw_send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": self._header_list(headers),
                }
            )
        await self.write(first)

    async def write(self, data: bytes, *, more: bool = True) -> None:
        async with self._lock:
            if not more:
                self.finished = True
            await self._raw_send({"type": "http.response.body", "body": data, "more_body": more})

    async def _raw_send(self, message: dict[str, Any]) -> None:
        """Send one ASGI message; a client that has gone cancels the whole response."""
        assert self.send is not None
        if self.client_gone:
            return
        try:
            await self.send(message)
        except OSError:  # uvicorn's ClientDisconnected
            self.client_gone = True
            if self.scope is not None:
                self.scope.cancel()
