"""A real OpenAI-compatible HTTP server on 127.0.0.1 whose replies are scripted by the test.

Why: protocol tests must exercise nsed's real HTTP path (retries, timeouts, concurrency limits,
structured output, streaming) without monkeypatching internals and without a GPU. Each test
registers plain Python callables per model id; the server parses every chat request into a
:class:`ChatRequest`, calls the callable and answers in the exact OpenAI response shape.

Design:

* uvicorn (h11) runs in a daemon thread with its own asyncio loop
  (:func:`nsed.serving.serve_in_thread`), so a test talks to it with any sync or async client.
  Handlers are *sync* callables run on that loop one at a time, so a script may keep state
  (counters, lists) without locks; a reply's ``delay_s`` is an ``asyncio.sleep`` and never
  blocks other requests.
* The listening socket is bound before the thread starts, so the port is known and free.
* Everything the test thread reads or writes (routes, recorded requests, stats) is guarded by a
  lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from nsed.serving import ThreadedServer, serve_in_thread

__all__ = [
    "ChatRequest",
    "Handler",
    "Reply",
    "ScriptedServer",
    "openai_error",
]

_CANDIDATE_RE = re.compile(r"^=== Candidate (?P<label>.+?) ===[ \t]*$")
_CANDIDATES_END = "=== End of candidates ==="
_STREAM_PIECES = 4


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        ]
        return "".join(texts)
    return str(content)


def _estimate_tokens(text_length: int) -> int:
    """Deterministic token estimate: about four characters per token."""
    return (text_length + 3) // 4


def _find_candidate_enum(node: Any) -> list[str] | None:
    """Depth-first search of a JSON schema for a property ``candidate`` that has an ``enum``."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            candidate = props.get("candidate")
            if isinstance(candidate, dict) and isinstance(candidate.get("enum"), list):
                return [str(v) for v in candidate["enum"]]
        for value in node.values():
            found = _find_candidate_enum(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _find_candidate_enum(value)
            if found is not None:
                return found
    return None


@dataclass
class ChatRequest:
    """One ``POST /v1/chat/completions`` as the handler sees it."""

    model: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    headers: dict[str, str]
    response_format: dict[str, Any] | None = None
    schema_name: str | None = None
    received_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_body(cls, body: dict[str, Any], headers: dict[str, str]) -> ChatRequest:
        response_format = body.get("response_format")
        if not isinstance(response_format, dict):
            response_format = None
        schema_name = None
        if response_format is not None:
            json_schema = response_format.get("json_schema")
            if isinstance(json_schema, dict) and isinstance(json_schema.get("name"), str):
                schema_name = json_schema["name"]
        messages = body.get("messages")
        return cls(
            model=str(body.get("model", "")),
            messages=[m for m in messages if isinstance(m, dict)]
            if isinstance(messages, list)
            else [],
            body=body,
            headers=headers,
            response_format=response_format,
            schema_name=schema_name,
        )

    @property
    def system(self) -> str:
        """All system (and developer) messages, joined by newlines."""
        return "\n".join(
            _text_of(m.get("content"))
            for m in self.messages
            if m.get("role") in ("system", "developer")
        )

    @property
    def user(self) -> str:
        """The last user message ("" when there is none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """``response_format.json_schema.schema`` when structured output was requested."""
        if self.response_format is None:
            return None
        json_schema = self.response_format.get("json_schema")
        if isinstance(json_schema, dict) and isinstance(json_schema.get("schema"), dict):
            return json_schema["schema"]
        return None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def prompt_chars(self) -> int:
        return sum(len(_text_of(m.get("content"))) for m in self.messages)

    def candidates(self, text: str | None = None) -> dict[str, str]:
        """Candidate blocks of a review prompt (default: the last user message), label -> text.

        A block starts at a line ``=== Candidate <LABEL> ===`` and runs to the next such line or
        to ``=== End of candidates ===`` (or the end of the text); surrounding blank lines are
        stripped, inner text is kept verbatim.
        """
        source = self.user if text is None else text
        found: dict[str, str] = {}
        label: str | None = None
        lines: list[str] = []
        for line in source.splitlines():
            match = _CANDIDATE_RE.match(line)
            if match is not None or line.strip() == _CANDIDATES_END:
                if label is not None:
                    found[label] = "\n".join(lines).strip("\n")
                label, lines = None, []
                if match is None:
                    break
                label = match.group("label").strip()
                continue
            if label is not None:
                lines.append(line)
        if label is not None:
            found[label] = "\n".join(lines).strip("\n")
        return found

    def candidate_enum(self) -> list[str] | None:
        """Labels of the ``candidate`` enum in the requested JSON schema, if any."""
        if self.response_format is None:
            return None
        return _find_candidate_enum(self.response_format)


_UNSET: Any = object()


@dataclass
class Reply:
    """What a handler answers; a non-200 ``status`` makes an OpenAI error reply.

    Reasoning-style replies: ``reasoning`` goes out as ``message.<reasoning_field>`` (vLLM's
    ``reasoning``, or ``reasoning_content`` as older vLLM and llama.cpp send it), and
    ``reasoning_tokens`` as ``usage.completion_tokens_details.reasoning_tokens``. For replies a
    real server should never send, ``message`` replaces the whole message object and ``usage``
    the whole usage value (``None`` leaves it out), verbatim; ``finish_reason`` may be any JSON.
    """

    content: str = ""
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_body: dict[str, Any] | None = None
    drop_connection: bool = False
    finish_reason: Any = "stop"
    tool_calls: list[dict[str, Any]] | None = None  # native tool calls, in the OpenAI shape
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    reasoning_tokens: int | None = None
    raw_message: Any = _UNSET
    usage: Any = _UNSET

    def finish(self) -> Any:
        """The finish reason sent: ``tool_calls`` for a reply that calls tools, unless set."""
        if self.tool_calls and self.finish_reason == "stop":
            return "tool_calls"
        return self.finish_reason

    def message(self) -> Any:
        """The message object sent (``raw_message`` verbatim when a test scripted one)."""
        if self.raw_message is not _UNSET:
            return self.raw_message
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
            message["content"] = self.content or None
        if self.reasoning is not None:
            message[self.reasoning_field] = self.reasoning
        return message


Handler = Callable[[ChatRequest], Reply | str | dict[str, Any] | list[Any]]


def _as_reply(value: Any) -> Reply:
    """A handler's return value as a Reply (str -> content; dict/list -> JSON content)."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(content=value)
    if isinstance(value, dict | list):
        return Reply(content=json.dumps(value))
    raise TypeError(f"handler returned {type(value).__name__}; return Reply, str or dict")


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int, message: str | None = None, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The JSON body OpenAI sends with an error status."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {
        "error": {
            "message": message or f"scripted error {status}",
            "type": error_type,
            "param": param,
            "code": code,
        }
    }


@dataclass
class _Failure:
    status: int
    retry_after: float | None


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 whose behaviour each test scripts.

    ``route(model, handler)`` decides the replies; ``fail_next`` injects error statuses;
    ``requests`` records what arrived; ``max_in_flight`` / ``in_flight_by_model()`` measure
    the concurrency a client really achieved.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port  # 0: a free one, chosen when it starts
        self._lock = threading.Lock()
        self._routes: dict[str, Handler] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._models: list[str] | None = None
        self._metrics: str | None = None
        self._requests: list[ChatRequest] = []
        self._handler_errors: list[BaseException] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._in_flight_model: dict[str, int] = {}
        self._max_in_flight_model: dict[str, int] = {}
        self._seq = 0
        self._server: ThreadedServer | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # ---------------------------------------------------------------- addresses

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (ends in ``/v1``)."""
        return f"{self.root}/v1"

    # ---------------------------------------------------------------- scripting

    def route(self, model: str, handler: Handler) -> None:
        """Answer chat requests for ``model`` with ``handler``; ``"*"`` is the fallback."""
        with self._lock:
            self._routes[model] = handler

    def fail_next(self, model: str, statuses: list[int], retry_after: float | None = None) -> None:
        """The next ``len(statuses)`` requests for ``model`` get these statuses, in order.

        They are answered before the handler runs (the handler is not called); ``"*"`` applies
        to any model without its own queue. ``retry_after`` sets a Retry-After header.
        """
        with self._lock:
            queue = self._failures.setdefault(model, deque())
            queue.extend(_Failure(int(s), retry_after) for s in statuses)

    def set_models(self, ids: list[str] | None) -> None:
        """What ``GET /v1/models`` lists; None lists the routed ids (without ``"*"``)."""
        with self._lock:
            self._models = None if ids is None else list(ids)

    def set_metrics(self, text: str | None) -> None:
        """The ``GET /metrics`` body (Prometheus text); None answers 404."""
        with self._lock:
            self._metrics = text

    def reset(self, *, keep_routes: bool = False) -> None:
        """Forget recorded requests, pending failures, stats, models, metrics (and routes)."""
        with self._lock:
            if not keep_routes:
                self._routes.clear()
            self._failures.clear()
            self._models = None
            self._metrics = None
            self._requests.clear()
            self._handler_errors.clear()
            self._max_in_flight = self._in_flight
            self._max_in_flight_model = dict(self._in_flight_model)

    # ---------------------------------------------------------------- observations

    @property
    def requests(self) -> list[ChatRequest]:
        """A snapshot of every chat request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[ChatRequest]:
        with self._lock:
            return [r for r in self._requests if r.model == model]

    @property
    def handler_errors(self) -> list[BaseException]:
        """Exceptions raised by handlers (each was answered with a 500)."""
        with self._lock:
            return list(self._handler_errors)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Most chat requests processed at once since start (or the last reset)."""
        with self._lock:
            return self._max_in_flight

    def in_flight_by_model(self) -> dict[str, int]:
        """Most chat requests processed at once, per model id."""
        with self._lock:
            return dict(self._max_in_flight_model)

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 10.0) -> ScriptedServer:
        """Bind a free port and serve in a daemon thread; returns once the server accepts."""
        if self._server is not None:
            return self
        # Bound to the server's loop on first use (asyncio.Event takes no loop when created).
        self._stopping = asyncio.Event()
        try:
            self._server = serve_in_thread(
                self._asgi,
                host=self.host,
                port=self._port,
                name="scripted-server",
                timeout_s=timeout_s,
                loop="asyncio",
                http="h11",
                lifespan="off",
                interface="asgi3",
                proxy_headers=False,
                timeout_keep_alive=30,
                timeout_graceful_shutdown=1,
            )
        except RuntimeError as exc:
            self._stopping = None
            raise RuntimeError(f"scripted server did not start: {exc}") from None
        self.port = self._server.port
        return self

    async def _stopped_during(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless stop() is called first; True when it was."""
        stopping = self._stopping
        if stopping is None:
            await asyncio.sleep(delay_s)
            return False
        try:
            await asyncio.wait_for(stopping.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and close the port; requests still in their delay are dropped."""
        server, stopping = self._server, self._stopping
        if server is not None and server.loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                server.loop.call_soon_threadsafe(stopping.set)
        if server is not None:
            server.stop(timeout_s)
        self._server = None
        self._stopping = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- HTTP

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        response: Response | None
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                response = _error(405, f"use POST for {path}")
            else:
                response = await self._chat(scope, Request(scope, receive))
        elif method != "GET":
            response = _error(405, f"use GET for {path}")
        elif path in ("/v1/models", "/models"):
            response = JSONResponse(self._models_body())
        elif path == "/health":
            response = JSONResponse({"status": "ok"})
        elif path == "/metrics":
            with self._lock:
                metrics = self._metrics
            response = (
                _error(404, "no metrics scripted")
                if metrics is None
                else PlainTextResponse(metrics, media_type="text/plain; version=0.0.4")
            )
        else:
            response = _error(404, f"no route {method} {path}")
        if response is not None:
            await response(scope, receive, send)

    def _models_body(self) -> dict[str, Any]:
        with self._lock:
            ids = self._models
            if ids is None:
                ids = [m for m in self._routes if m != "*"]
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "scripted"}
                for m in ids
            ],
        }

    async def _chat(self, scope: Scope, request: Request) -> Response | None:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return _error(400, "request body needs 'model' (string) and 'messages' (list)")
        headers = {k.lower(): v for k, v in request.headers.items()}
        chat = ChatRequest.from_body(body, headers)
        model = chat.model
        with self._lock:
            self._requests.append(chat)
            self._seq += 1
            seq = self._seq
            failure = self._pop_failure(model)
            handler = self._routes.get(model, self._routes.get("*"))
            self._enter(model)
        streaming = False  # once True, the SSE generator releases the in-flight slot
        try:
            if failure is not None:
                extra = {}
                if failure.retry_after is not None:
                    extra["retry-after"] = _format_seconds(failure.retry_after)
                return _error(failure.status, "scripted failure", headers=extra)
            if handler is None:
                return _error(
                    404,
                    f"The model `{model}` does not exist",
                    code="model_not_found",
                    param="model",
                )
            replies = self._call_handler(handler, chat)
            if isinstance(replies, Response):
                return replies
            delay = max(r.delay_s for r in replies)
            if delay > 0 and await self._stopped_during(delay):
                # stop() came first: die like a real server, without a reply.
                await self._drop(scope)
                return None
            bad = next((r for r in replies if r.status != 200 or r.drop_connection), None)
            if bad is not None and bad.drop_connection:
                await self._drop(scope)
                return None
            if bad is not None:
                error_body = bad.error_body or openai_error(bad.status)
                return JSONResponse(error_body, bad.status, headers=bad.headers)
            completion_id = f"chatcmpl-scripted-{seq}"
            if not chat.stream:
                payload = _completion(chat, replies, completion_id)
                # allow_nan: a test may script a reply with Infinity in it, as Python writes it
                body = json.dumps(payload, allow_nan=True)
                return Response(body, media_type="application/json", headers=replies[0].headers)
            streaming = True
            return StreamingResponse(
                self._sse(chat, replies, completion_id),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", **replies[0].headers},
            )
        finally:
            if not streaming:
                self._exit(model)

    def _call_handler(self, handler: Handler, chat: ChatRequest) -> list[Reply] | Response:
        n = chat.body.get("n", 1)
        count = n if isinstance(n, int) and n >= 1 else 1
        replies: list[Reply] = []
        try:
            for _ in range(count):
                replies.append(_as_reply(handler(chat)))
        except Exception as exc:
            with self._lock:
                self._handler_errors.append(exc)
            return _error(500, f"scripted handler raised {type(exc).__name__}: {exc}")
        return replies

    async def _sse(
        self,
        chat: ChatRequest,
        replies: list[Reply],
        completion_id: str,
    ) -> AsyncIterator[bytes]:
        try:
            for chunk in _stream_chunks(chat, replies, completion_id):
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            self._exit(chat.model)

    async def _drop(self, scope: Scope) -> None:
        """Abort the TCP connection of this request so the client gets no response at all."""
        client = scope.get("client")
        server = self._server
        if server is None or client is None:
            return
        for connection in list(server.uvicorn.server_state.connections):
            if getattr(connection, "client", None) == tuple(client):
                connection.transport.abort()
        # Let connection_lost run so uvicorn sees the disconnect and sends nothing.
        await asyncio.sleep(0.01)

    # ---------------------------------------------------------------- accounting (locked)

    def _pop_failure(self, model: str) -> _Failure | None:
        for key in (model, "*"):
            queue = self._failures.get(key)
            if queue:
                return queue.popleft()
        return None

    def _enter(self, model: str) -> None:
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        now = self._in_flight_model.get(model, 0) + 1
        self._in_flight_model[model] = now
        self._max_in_flight_model[model] = max(self._max_in_flight_model.get(model, 0), now)

    def _exit(self, model: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self._in_flight_model[model] = self._in_flight_model.get(model, 1) - 1


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        openai_error(status, message, code=code, param=param), status, headers=headers
    )


def _usage(chat: ChatRequest, replies: list[Reply]) -> dict[str, Any]:
    first = replies[0]
    prompt = (
        first.prompt_tokens
        if first.prompt_tokens is not None
        else _estimate_tokens(chat.prompt_chars())
    )
    completion = sum(
        r.completion_tokens
        if r.completion_tokens is not None
        else _estimate_tokens(len(r.content) + len(r.reasoning or ""))
        for r in replies
    )
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if first.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": first.reasoning_tokens}
    return usage


def _completion(chat: ChatRequest, replies: list[Reply], completion_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [
            {
                "index": i,
                "message": r.message(),
                "logprobs": None,
                "finish_reason": r.finish(),
            }
            for i, r in enumerate(replies)
        ],
        "usage": _usage(chat, replies),
    }
    usage = replies[0].usage
    if usage is None:
        del payload["usage"]
    elif usage is not _UNSET:
        payload["usage"] = usage
    return payload


def _pieces(text: str) -> list[str]:
    """Split ``text`` into a few chunks (at most _STREAM_PIECES), concatenating back to it."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // _STREAM_PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _stream_chunks(
    chat: ChatRequest, replies: list[Reply], completion_id: str
) -> Iterator[dict[str, Any]]:
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "choices": choices,
            **extra,
        }

    for i, reply in enumerate(replies):
        first = {"role": "assistant", "content": ""}
        yield chunk([{"index": i, "delta": first, "logprobs": None, "finish_reason": None}])
        if reply.reasoning:
            for piece in _pieces(reply.reasoning):
                delta = {reply.reasoning_field: piece}
                yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for piece in _pieces(reply.content):
            delta: dict[str, Any] = {"content": piece}
            yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for j, call in enumerate(reply.tool_calls or []):
            delta = {"tool_calls": [{"index": j, **call}]}
            yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish()}])
    options = chat.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield chunk([], usage=_usage(chat, replies))
