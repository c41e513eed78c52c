"""The council as an OpenAI-compatible model: ``POST /v1/chat/completions`` over a Council.

Why: agent apps already speak the OpenAI API, so the cheapest way to embed nsed is to point an
existing client at a council (``base_url=http://host:8000/v1``, ``model="nsed/council"``).

Endpoints: ``GET /v1/models`` (one model ``nsed/<name>`` per configured council),
``POST /v1/chat/completions`` (plain or SSE), ``GET /v1/deliberations/{id}`` (the full trace, the
same JSON as ``nsed ask --json``), ``GET /health`` and ``GET /metrics`` (Prometheus; both open,
everything under ``/v1`` needs a bearer key when keys are configured), and the web page under
``/ui/`` with the JSON it reads (``GET /v1/councils``, ``/v1/deliberations``, ``/v1/bench/runs``).

A chat request maps onto one deliberation (``translate``): the last user message is the
question, system messages are shared context, sampling options apply to every agent, and
``"nsed": {...}`` (``extra_body`` in the SDK) sets rounds, kind, budgets, qv_mode and
stream_events. ``n`` must be 1; tools, logprobs and non-text formats are a 400 (``protocol``).
Streams (``streaming``) send progress as SSE comments or ``nsed_event`` chunks, keep-alives,
then the answer; failures after the first byte arrive as an ``{"error": {...}}`` event.

Limits (``limits``): ``max_concurrent`` deliberations at once, ``max_queue`` more waiting
(FIFO), beyond that 429 with ``Retry-After``; ``request_timeout_s`` covers queueing and
deliberating (504). A client that disconnects cancels its deliberation and its backend calls.
Before that (``connections``): headers within ``header_timeout_s`` (408), at most
``max_connections`` open (503); the body within ``body_timeout_s`` (408). A trace belongs to
the key that made it; admin keys read every trace (``limits.may_read``).

Modules: ``settings`` (what is served), ``protocol`` (wire format), ``translate`` (request ->
deliberation), ``errors`` (OpenAI error JSON), ``limits`` (auth, trace ownership, body size,
admission), ``metrics`` (Prometheus), ``connections`` (slow and surplus connections),
``streaming`` (SSE), ``state`` (app runtime, one job), ``response`` (one deliberation as a
response), ``routes`` (endpoints), ``app`` (``create_app``), ``background`` (``run_server``,
``BackgroundServer``), ``webui`` (the page's files, ``ui/``), ``browse`` (the page's JSON),
``cli`` (the ``nsed serve`` and ``nsed ui`` commands).
"""

from nsed.server.app import create_app
from nsed.server.background import BackgroundServer, run_server
from nsed.server.errors import ApiError
from nsed.server.protocol import ChatCompletionRequest, NsedOptions
from nsed.server.settings import (
    DEFAULT_COUNCIL,
    MODEL_PREFIX,
    CouncilSpec,
    ServerSettings,
    load_api_keys,
)
from nsed.server.translate import apply_sampling, apply_stop, build_task

__all__ = [
    "DEFAULT_COUNCIL",
    "MODEL_PREFIX",
    "ApiError",
    "BackgroundServer",
    "ChatCompletionRequest",
    "CouncilSpec",
    "NsedOptions",
    "ServerSettings",
    "apply_sampling",
    "apply_stop",
    "build_task",
    "create_app",
    "load_api_keys",
    "run_server",
]
