"""Simulated agents over a real OpenAI-compatible HTTP endpoint, for load tests of the loop.

The same :class:`~nsed.agents.simulated.SimulatedAgent` as the in-process ``sim://`` backend,
served by starlette + uvicorn on 127.0.0.1 (:func:`nsed.serving.serve_in_thread`). The
request's model id selects the agent: a name registered with ``profiles`` or
``NAME?p_g=0.5&p_v=0.8...`` (the query of a ``sim://`` URL); the agent's identity is NAME, so
a team whose seats are named after their model's NAME gets exactly the replies it would get
in-process. A team then points at ``http://127.0.0.1:PORT/v1``
with the normal HTTPBackend, so a simulation doubles as a load test of the HTTP path.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (``n`` choices, usage as chars/4; a
simulated failure is an HTTP 500). Run it in a thread (:class:`SimulatedServer`), or as its own
process so that the client's CPU time is the orchestrator's alone (:class:`SimulatedServerProcess`,
or ``python -m nsed.simulation.server --quick-n 1000 --quick-seed 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from types import TracebackType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nsed.agents.simulated import (
    SimProfile,
    SimulatedAgent,
    SimulatedWorld,
    default_world,
    parse_sim_url,
)
from nsed.errors import BackendError, ConfigError, NsedError
from nsed.serving import ThreadedServer, serve_in_thread

PORT_LINE = "NSED_SIM_SERVER_PORT="

__all__ = ["PORT_LINE", "SimulatedServer", "SimulatedServerProcess", "create_app", "main"]


def _text_of(content: object) -> str:
    """A message's text: a string, or the text parts of an OpenAI content-part list."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_app(
    world: SimulatedWorld | None = None, profiles: dict[str, SimProfile] | None = None
) -> Starlette:
    """The ASGI app; ``profiles`` maps plain model ids to profiles (others carry a query)."""
    world = world or default_world()
    named = dict(profiles or {})
    agents: dict[str, SimulatedAgent] = {}

    def agent_for(model: str) -> SimulatedAgent:
        agent = agents.get(model)
        if agent is None:
            if model in named:
                agent = SimulatedAgent(model, named[model], world)
            else:
                target = parse_sim_url(model)
                world.ensure_quick(target.quick_n, target.quick_seed)
                agent = SimulatedAgent(target.name, target.profile, world)
            agents[model] = agent
        return agent

    async def models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "owned_by": "nsed-sim"} for name in named]
        return JSONResponse({"object": "list", "data": data})

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "a chat completion needs 'model' and a 'messages' list")
        model = str(body.get("model") or "")
        try:
            agent = agent_for(model)
        except ConfigError as exc:
            return _error(404, f"unknown simulated model {model!r}: {exc}", "not_found_error")
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 256:
            return _error(400, "n must be an integer from 1 to 256")
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            return _error(400, "seed must be an integer")
        messages = [
            {"role": str(m.get("role", "")), "content": _text_of(m.get("content"))}
            for m in body["messages"]
            if isinstance(m, dict)
        ]
        try:
            structured = body.get("response_format") is not None
            reply = agent.respond(messages, n=n, seed=seed, structured=structured)
        except BackendError as exc:
            return _error(400, str(exc))
        if reply.latency_s > 0:
            await asyncio.sleep(reply.latency_s)
        if reply.failed:
            return _error(500, "simulated failure", "server_error")
        return JSONResponse(
            {
                "id": "chatcmpl-sim",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    for i, text in enumerate(reply.texts)
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


# uvicorn.Config for the simulated endpoint: many short keep-alive requests, no lifespan.
_UVICORN_OPTIONS: dict[str, object] = {
    "loop": "asyncio",
    "http": "h11",
    "lifespan": "off",
    "timeout_keep_alive": 30,
    "timeout_graceful_shutdown": 1,
}


class SimulatedServer:
    """The simulated endpoint in a daemon thread of this process (``with`` starts and stops)."""

    def __init__(
        self,
        world: SimulatedWorld | None = None,
        profiles: dict[str, SimProfile] | None = None,
        *,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self._app = create_app(world, profiles)
        self._server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 10.0) -> SimulatedServer:
        try:
            self._server = serve_in_thread(
                self._app,
                host=self.host,
                name="nsed-sim-server",
                timeout_s=timeout_s,
                **_UVICORN_OPTIONS,
            )
        except RuntimeError as exc:
            raise BackendError(f"the simulated server did not start: {exc}") from None
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> SimulatedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SimulatedServerProcess:
    """The simulated endpoint in a child process, so it does not share the client's CPU/GIL."""

    def __init__(self, *, quick_n: int, quick_seed: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._args = ["--host", host, "--quick-n", str(quick_n), "--quick-seed", str(quick_seed)]
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> SimulatedServerProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "nsed.simulation.server", *self._args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self._proc.stdout.readline() if self._proc else ""),
            daemon=True,
        )
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith(PORT_LINE):
            self.stop()
            raise BackendError("the simulated server process did not start (see its stderr)")
        self.port = int(line[0].strip().removeprefix(PORT_LINE))
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimulatedServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until terminated; prints ``NSED_SIM_SERVER_PORT=<port>`` once listening."""
    parser = argparse.ArgumentParser(description="Simulated nsed agents over OpenAI-style HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--quick-n", type=int, default=200, help="quick problems it knows")
    parser.add_argument("--quick-seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = SimulatedWorld()
    try:
        world.ensure_quick(args.quick_n, args.quick_seed)
    except NsedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(world)
    server = serve_in_thread(
        app, host=args.host, port=args.port, name="nsed-sim-server", **_UVICORN_OPTIONS
    )
    print(f"{PORT_LINE}{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt), server:
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
