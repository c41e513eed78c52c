"""uvicorn on a socket bound beforehand, in a daemon thread: ``serve_in_thread``.

Three HTTP servers run this way inside the calling process: the council served as an
OpenAI-compatible model (:class:`nsed.server.BackgroundServer`), the simulated agents' endpoint
(:class:`nsed.simulation.server.SimulatedServer`) and the test suite's scripted server. They
share this one helper, which sits on the ground floor and imports uvicorn only when a server
starts, so that none of them loads another's package (the simulated endpoint does not import
the council server, and neither needs the ``serve`` extra until a server is started).

Binding the socket first (:func:`bind_listening_socket`) makes a port-0 server's port known at
once and sets TCP_NODELAY the way asyncio needs it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

DEFAULT_BACKLOG = 2048


def bind_listening_socket(host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A bound, listening, non-blocking TCP socket for uvicorn's ``serve(sockets=[...])``.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY on accepted connections only when
    the listening socket says TCP; without it Nagle + delayed ACK add ~40 ms to every reply.
    Binding before serving also makes a port-0 server's port known at once.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class ThreadedServer:
    """A uvicorn server running in a daemon thread of this process (see :func:`serve_in_thread`).

    ``with`` stops it on exit; ``loop`` is the event loop the app runs on, for callers that
    must hand it work from another thread (``loop.call_soon_threadsafe``); ``uvicorn`` is the
    ``uvicorn.Server`` itself (its ``server_state`` lists the open connections).
    """

    def __init__(self, server: Any, sock: socket.socket, *, host: str, name: str) -> None:
        self.host = host
        self.port = int(sock.getsockname()[1])
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.uvicorn = server
        self._server = server
        self._sock: socket.socket | None = sock
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self.port}", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            assert self._sock is not None
            await self._server.serve(sockets=[self._sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start() and kept for the caller
            self.error = exc

    def _start(self, timeout_s: float) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            exited = not self._thread.is_alive()
            if exited or time.monotonic() > deadline:
                self.stop()
                if self.error is not None:
                    cause = repr(self.error)
                elif exited:
                    cause = "uvicorn exited before listening (see its log)"
                else:
                    cause = f"not listening after {timeout_s:g}s"
                raise RuntimeError(f"{self.name} on port {self.port} did not start: {cause}")
            time.sleep(0.005)
        return self

    def wait(self) -> None:
        """Block until the server stops (it is stopped from another thread or by a signal)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to exit, force it after ``timeout_s``, and close the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "nsed-http",
    timeout_s: float = 10.0,
    **uvicorn_options: Any,
) -> ThreadedServer:
    """Serve the ASGI ``app`` with uvicorn in a daemon thread; return once it accepts.

    The socket is bound first (port 0 picks a free port, see ``.port``). ``uvicorn_options``
    are :class:`uvicorn.Config` keywords; by default the server logs warnings only and no
    access lines. A server that does not start within ``timeout_s`` is a RuntimeError that
    names the cause.
    """
    import uvicorn

    options: dict[str, Any] = {"log_level": "warning", "access_log": False, **uvicorn_options}
    sock = bind_listening_socket(host, port)
    try:
        server = uvicorn.Server(uvicorn.Config(app, **options))
    except BaseException:
        sock.close()
        raise
    return ThreadedServer(server, sock, host=host, name=name)._start(timeout_s)


__all__ = ["DEFAULT_BACKLOG", "ThreadedServer", "bind_listening_socket", "serve_in_thread"]
