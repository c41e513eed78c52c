"""One deliberation as an HTTP response: admitted, run, accounted, saved, written.

Everything (admission, deliberating, writing, watching for a disconnect) happens in the ASGI
call's own task and its children, so a timeout or a disconnect cancels the backend calls at once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nsed.errors import StoreError
from nsed.links import run_path
from nsed.orchestrator.events import AgentFailed, CallTruncated, Event, Finished, RoundScored
from nsed.results import Deliberation
from nsed.server.errors import ApiError, api_error_from
from nsed.server.limits import QueueFull
from nsed.server.protocol import (
    Envelope,
    finish_reason_of,
    summary_of,
    tool_call_deltas,
    usage_of,
)
from nsed.server.state import Job, Runtime
from nsed.server.streaming import (
    DONE,
    KEEP_ALIVE,
    ResponseWriter,
    event_payload,
    pieces,
    progress_comment,
    sse,
    sse_comment,
)
from nsed.server.translate import apply_stop

log = logging.getLogger("nsed.server")


class DeliberationResponse(Response):
    """Runs one deliberation inside the ASGI call and writes it as JSON or as SSE."""

    def __init__(self, runtime: Runtime, job: Job) -> None:
        super().__init__()
        self.runtime = runtime
        self.job = job
        options = job.request.stream_options
        include_usage = bool(job.request.stream and options and options.include_usage)
        self._envelope = Envelope(job.run_id, int(time.time()), job.model, include_usage)
        self._out = ResponseWriter(
            {"x-nsed-run-id": job.run_id, "x-nsed-run-url": run_path(job.run_id)}
        )

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        out = self._out
        out.send = send
        started = time.perf_counter()
        status = "cancelled"
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        if not out.finished:
                            out.client_gone = True
                            tg.cancel_scope.cancel()
                        return

            out.scope = tg.cancel_scope
            tg.start_soon(watch_disconnect)
            status = await self._respond(started)
            out.finished = True
            tg.cancel_scope.cancel()
        if out.client_gone:
            status = "cancelled"
        self._record(status, time.perf_counter() - started)

    def _record(self, status: str, seconds: float) -> None:
        m, name = self.runtime.metrics, self.job.council_name
        m.deliberations.labels(name, status).inc()
        if status in ("timeout", "backend_error", "error"):
            m.failures.labels(name, status).inc()
        # No run id here: it is the capability to read the trace (GET /v1/deliberations/{id}).
        log.info("deliberation council=%s status=%s %.2fs", name, status, seconds)

    async def _respond(self, started: float) -> str:
        """Admit, deliberate, answer; returns the metrics status."""
        settings = self.runtime.settings
        try:
            with anyio.fail_after(settings.request_timeout_s):
                async with self.runtime.admission.slot():
                    if self.job.request.stream:
                        result = await self._stream()
                    else:
                        result = await self._deliberate(self._count)
                        answer = self._answer(result)
                        await self._out.send_json(200, self._envelope.completion(answer, result))
                    self._account(result, time.perf_counter() - started)
            await self._save(result)
            return "ok"
        except QueueFull:
            retry = self.runtime.retry_after_s()
            error = ApiError(
                429,
                f"the server is busy ({settings.max_concurrent} deliberations running, "
                f"{settings.max_queue} waiting); retry after {retry} s",
                code="server_busy",
                headers={"retry-after": str(retry)},
            )
            status = "rejected"
        except Exception as exc:
            error, status = api_error_from(exc, settings.request_timeout_s)
        await self._send_error(error)
        return status

    # --- deliberating --------------------------------------------------------------------------

    async def _count(self, event: Event) -> None:
        m, name = self.runtime.metrics, self.job.council_name
        if isinstance(event, RoundScored):
            m.rounds.labels(name).inc()
        elif isinstance(event, AgentFailed):
            m.failures.labels(name, "agent_call").inc()
        elif isinstance(event, CallTruncated):
            m.truncated.labels(name, event.phase).inc()

    async def _deliberate(self, emit: Any) -> Deliberation:
        # The run id was promised in the headers before the run finished: the council uses it.
        job = self.job
        result = await job.council.run(
            job.question, config=job.config, emit=emit, deliberation_id=job.run_id, step=job.step
        )
        self.runtime.remember(result, job.owner)
        return result

    def _answer(self, result: Deliberation) -> str:
        """The answer text; stop sequences cut free text only (a cut step would not parse)."""
        if result.step is not None:
            return result.answer
        return apply_stop(result.answer, self.job.request.stop_sequences())

    def _account(self, result: Deliberation, seconds: float) -> None:
        m, name = self.runtime.metrics, self.job.council_name
        m.latency.labels(name).observe(seconds)
        m.tokens.labels(name, "prompt").inc(result.usage.prompt_tokens)
        m.tokens.labels(name, "completion").inc(result.usage.completion_tokens)
        m.cost.labels(name).inc(result.usage.cost_usd)
        self.runtime.observe_latency(seconds)

    async def _save(self, result: Deliberation) -> None:
        store = self.runtime.store
        if store is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(
                    lambda: store.save_deliberation(result, owner=self.job.owner)
                )
            except StoreError as exc:
                log.warning("a trace was not saved: %s", exc)

    async def _stream(self) -> Deliberation:
        events_in, events_out = anyio.create_memory_object_stream[Event](math.inf)
        outcome: list[Deliberation | Exception] = []
        options = self.job.request.nsed
        stream_events = bool(options and options.stream_events)
        asked = options.stream_reasoning if options else None
        reasoning = self.runtime.settings.stream_reasoning if asked is None else asked

        async def emit(event: Event) -> None:
            await self._count(event)
            await events_in.send(event)

        async def runner() -> None:
            async with events_in:
                try:
                    outcome.append(await self._deliberate(emit))
                except Exception as exc:  # re-raised below, outside the task group
                    outcome.append(exc)

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(self.runtime.settings.heartbeat_s)
                await self._start_stream()
                await self._out.write(KEEP_ALIVE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            tg.start_soon(heartbeat)
            async with events_out:
                async for event in events_out:
                    if isinstance(event, Finished):
                        continue
                    await self._start_stream()
                    if reasoning and (line := progress_comment(event)):
                        # Chat UIs show reasoning_content in their "thinking" pane.
                        delta = {"reasoning_content": line + "\n"}
                        await self._out.write(sse(self._envelope.chunk([{"index": 0,
                                                                         "delta": delta}])))
                    if stream_events:
                        chunk = self._envelope.chunk([], nsed_event=event_payload(event))
                        await self._out.write(sse(chunk))
                    elif not reasoning:
                        comment = progress_comment(event)
                        if comment:
                            await self._out.write(sse_comment(comment))
            tg.cancel_scope.cancel()
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        await self._finish_stream(result, stream_events)
        return result

    # --- writing ---------------------------------------------------------------------------------

    async def _send_error(self, error: ApiError) -> None:
        self.runtime.metrics.errors.labels(str(error.status)).inc()
        if self._out.client_gone:
            return
        if not self._out.started:
            await self._out.send_json(error.status, error.body(), error.headers)
        else:
            await self._out.write(sse(error.body()), more=False)

    async def _start_stream(self) -> None:
        """Send the SSE headers and the role chunk, once."""
        if self._out.started:
            return
        role = self._envelope.chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        await self._out.start_sse(sse(role))

    async def _finish_stream(self, result: Deliberation, stream_events: bool) -> None:
        out, envelope = self._out, self._envelope
        await self._start_stream()
        if stream_events:
            chunk = envelope.chunk([], nsed_event=event_payload(Finished(deliberation=result)))
            await out.write(sse(chunk))
        if result.step is not None and result.step.tool_calls:
            deltas = tool_call_deltas(result.step)
        else:
            deltas = [{"content": piece} for piece in pieces(self._answer(result))]
        for delta in deltas:
            await out.write(sse(envelope.chunk([{"index": 0, "delta": delta}])))
        finish = finish_reason_of(result)
        done = envelope.chunk(
            [{"index": 0, "delta": {}, "finish_reason": finish}], nsed=summary_of(result)
        )
        await out.write(sse(done))
        if envelope.include_usage:
            await out.write(sse(envelope.chunk([], usage=usage_of(result))))
        await out.write(DONE, more=False)
