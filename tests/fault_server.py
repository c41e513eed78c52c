"""An OpenAI-compatible server whose replies can be made hostile, one request at a time.

Why: a hostile or broken backend must cost one agent one failed call, never a deliberation
(issue 14). The hardening tests and the chaos suite (``perf/chaos.py``) need replies that the
scripted server (:mod:`tests.scripted_server`, which shapes every reply correctly) cannot
send: a body dripped a byte at a time, 50 MB of content, malformed 200 bodies, a server that
never answers, a server killed mid-run. This is a raw ASGI app, so it controls every byte.

A request is answered as a sound council member would (a proposal whose final answer is
``answer(question)``, or a review of every candidate it is shown, scored by whether the
candidate holds that answer), unless ``fault(request)`` names one of :data:`FAULTS` for it.
Runs under :func:`nsed.serving.serve_in_thread` like the other servers of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from nsed.serving import ThreadedServer, serve_in_thread
from tests.council_scripts import is_review
from tests.scripted_server import ChatRequest

__all__ = ["FAULTS", "MALFORMED", "FaultServer", "sound_answer"]

# Malformed 200 replies: the shapes of issue 14, item 5, and two more of the same family.
MALFORMED = (
    "content_parts",  # content as a list of {"type": "text", "text": ...} parts (gateways)
    "content_int",
    "usage_string",
    "tokens_string",
    "tokens_inf",
    "tokens_negative",
    "finish_reason_int",
    "not_json",
    "deep_json",
)
FAULTS = ("hang", "drip", "huge", "http_500", "http_429", *MALFORMED)
HUGE_BYTES = 50_000_000  # the reply of item 7
DRIP_INTERVAL_S = 0.2  # one byte per interval: a 1 kB reply takes minutes
HANG_S = 3600.0

_TASK = re.compile(r"Task:\s*\n(.*)", re.DOTALL)


def sound_answer(question: str) -> str:
    """The default answer: the sum of the integers in the question (``'2 + 3'`` -> ``'5'``)."""
    return str(sum(int(n) for n in re.findall(r"-?\d+", question.split("?")[0])))


class FaultServer:
    """A council member's endpoint on 127.0.0.1 that injects ``fault(request)``'s fault.

    ``injected`` counts the faults sent, ``answered`` the sound replies; ``kill()`` stops the
    server mid-run (every later call is refused a connection).
    """

    def __init__(
        self,
        *,
        fault: Callable[[ChatRequest], str | None] | None = None,
        answer: Callable[[str], str] = sound_answer,
        huge_bytes: int = HUGE_BYTES,
        drip_interval_s: float = DRIP_INTERVAL_S,
    ) -> None:
        self.fault = fault or (lambda request: None)
        self.answer = answer
        self.huge_bytes = huge_bytes
        self.drip_interval_s = drip_interval_s
        self.models_body = json.dumps({"object": "list", "data": []}).encode()  # GET /models
        self.injected: Counter[str] = Counter()
        self.answered = 0
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        self._stopping = asyncio.Event()
        self._server = serve_in_thread(
            self._asgi,
            name="fault-server",
            http="h11",
            lifespan="off",
            interface="asgi3",
            timeout_keep_alive=30,
            log_level="critical",  # a hostile reply cut short is the point, not an error
        )
        self.port = self._server.port
        return self

    def kill(self) -> None:
        """Stop answering at once: open requests are dropped, new connections refused."""
        server, stopping = self._server, self._stopping
        if server is not None and server.loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):
                server.loop.call_soon_threadsafe(stopping.set)
        if server is not None:
            server.stop(5.0)
        self._server = None

    stop = kill

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # --- HTTP ------------------------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path.endswith("/models"):
            await _send(send, 200, self.models_body)
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await _send(send, 404, b'{"error": {"message": "no route"}}')
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client gave up before its request was complete
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        request = ChatRequest.from_body(body, {})
        fault = self.fault(request)
        with self._lock:
            if fault is None:
                self.answered += 1
            else:
                self.injected[fault] += 1
        if fault is None:
            await _send(
                send, 200, json.dumps(self._completion(request, self._content(request))).encode()
            )
        elif fault == "hang":
            await self._wait(receive, HANG_S)
        elif fault == "drip":
            await self._drip(
                send,
                receive,
                json.dumps(self._completion(request, self._content(request))).encode(),
            )
        elif fault == "huge":
            await self._huge(send, receive, request)
        elif fault in ("http_500", "http_429"):
            status = int(fault.removeprefix("http_"))
            error = json.dumps({"error": {"message": f"injected {status}", "type": "server_error"}})
            await _send(
                send, status, error.encode(), {"retry-after": "0"} if status == 429 else None
            )
        else:
            await _send(
                send, 200, _malformed(fault, self._completion(request, self._content(request)))
            )

    def _content(self, request: ChatRequest) -> str:
        match = _TASK.search(request.user)
        question = match.group(1).strip() if match else request.user
        final = self.answer(question)
        if is_review(request):
            token = f"\\boxed{{{final}}}"
            reviews = [
                {"candidate": label, "score": 80 if token in text else -40, "critique": "checked"}
                for label, text in request.candidates().items()
            ]
            return json.dumps({"reviews": reviews})
        return json.dumps(
            {"reasoning": "I added the numbers.", "answer": f"The answer is \\boxed{{{final}}}."}
        )

    @staticmethod
    def _completion(request: ChatRequest, content: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
        }

    async def _wait(self, receive: Receive, seconds: float) -> bool:
        """Sleep ``seconds`` unless the client goes or the server stops; True if it slept."""
        stopping = self._stopping
        assert stopping is not None

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [
            asyncio.ensure_future(asyncio.sleep(seconds)),
            asyncio.ensure_future(gone()),
            asyncio.ensure_future(stopping.wait()),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return tasks[0] in done

    async def _pieces(self, send: Send, receive: Receive, pieces: Any, pause_s: float) -> None:
        """Send body pieces, pausing ``pause_s`` after each, until done or the client goes."""
        for piece, more in pieces:
            try:
                await send({"type": "http.response.body", "body": piece, "more_body": more})
            except OSError:
                return
            if more and not await self._wait(receive, pause_s):
                return

    async def _drip(self, send: Send, receive: Receive, body: bytes) -> None:
        """Headers at once, then one byte per ``drip_interval_s`` (never a read timeout)."""
        await send(_start(200, len(body)))
        pieces = ((body[i : i + 1], i + 1 < len(body)) for i in range(len(body)))
        await self._pieces(send, receive, pieces, self.drip_interval_s)

    async def _huge(self, send: Send, receive: Receive, request: ChatRequest) -> None:
        """A completion whose content is ``huge_bytes`` of text, in 1 MB pieces, no length."""
        head, tail = json.dumps(self._completion(request, "\x00")).encode().split(b"\\u0000")
        await send(_start(200, None))  # chunked: only counting what arrives can stop it
        sizes = [1_000_000] * (self.huge_bytes // 1_000_000) + [self.huge_bytes % 1_000_000]
        pieces = [(head, True), *((b"x" * n, True) for n in sizes if n), (tail, False)]
        await self._pieces(send, receive, pieces, 0.001)


def _malformed(fault: str, payload: dict[str, Any]) -> bytes:
    choice = payload["choices"][0]
    usage = payload["usage"]
    if fault == "content_parts":
        choice["message"]["content"] = [{"type": "text", "text": choice["message"]["content"]}]
    elif fault == "content_int":
        choice["message"]["content"] = 42
    elif fault == "usage_string":
        payload["usage"] = "lots"
    elif fault == "tokens_string":
        usage["prompt_tokens"], usage["completion_tokens"] = "100", "forty"
    elif fault == "tokens_inf":
        usage["completion_tokens"] = math.inf  # json.dumps writes Infinity, json.loads reads it
    elif fault == "tokens_negative":
        usage["prompt_tokens"] = -5
    elif fault == "finish_reason_int":
        choice["finish_reason"] = 7
    elif fault == "not_json":
        return b'{"choices": [{"message": {"content": "unterminated'
    elif fault == "deep_json":
        return b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return json.dumps(payload).encode()


def _start(
    status: int, length: int | None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    pairs = [(b"content-type", b"application/json")]
    if length is not None:
        pairs.append((b"content-length", str(length).encode()))
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": pairs}


async def _send(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    with contextlib.suppress(OSError):
        await send(_start(status, len(body), headers))
        await send({"type": "http.response.body", "body": body, "more_body": False})
