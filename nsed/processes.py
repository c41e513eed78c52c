"""Child servers that never outlive nsed: spawning, ports, logs and stop-on-signal hooks.

Shared by the embedded llama.cpp server (``nsed.agents.local``) and ``nsed up`` (the vLLM
launcher), because a leaked model server holds RAM or a whole GPU until someone notices:

* a child runs in its own session (so a terminal's Ctrl-C reaches only Python, and its whole
  process group can be stopped at once), with stdin closed and its output in a log file;
* on Linux it gets ``PR_SET_PDEATHSIG=SIGTERM``. The kernel fires it when the *thread* that
  forked the child exits, so every spawn goes through one long-lived spawner thread: a spawn
  from a short-lived worker thread (``anyio.to_thread``) must not die when that thread is
  recycled. So a SIGKILLed nsed still takes its servers with it;
* ``on_termination_signals`` runs stop hooks on SIGTERM/SIGINT and then the previous handler
  (so KeyboardInterrupt still happens, and a default SIGTERM still ends the process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any

from nsed.errors import ConfigError

LOG_TAIL_LINES = 20

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        # Loaded before any fork: dlopen between fork and exec can deadlock.
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl

_spawn_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: SIGTERM me when my spawning thread exits."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _popen(
    cmd: list[str], log_file: Any, env: Mapping[str, str] | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        env=None if env is None else dict(env),
        preexec_fn=functools.partial(_die_with_parent, os.getpid()) if _prctl else None,
    )


def _spawner_loop() -> None:
    while True:
        job, future = _spawn_jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


def spawn(
    cmd: list[str], log_file: Any, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output in ``log_file``, tied to this process (see the module
    docstring); ``env`` replaces the environment when given.

    The spawner is a daemon thread: unlike a ThreadPoolExecutor worker it is not joined at
    shutdown before other threads finish, so PDEATHSIG fires only when the process goes away.
    """
    global _spawner
    try:
        with _spawner_lock:
            if _spawner is None or not _spawner.is_alive():
                _spawner = threading.Thread(
                    target=_spawner_loop, name="nsed-spawner", daemon=True
                )
                _spawner.start()
    except RuntimeError:  # interpreter shutting down: spawn here; PDEATHSIG still covers exit
        return _popen(cmd, log_file, env)
    future: Future[subprocess.Popen[bytes]] = Future()
    _spawn_jobs.put((functools.partial(_popen, cmd, log_file, env), future))
    return future.result()


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the process group ``proc`` leads (a spawned child and whatever it
    started: vLLM's engine and worker processes), or to ``proc`` alone if it leads none."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
            return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL it; reap ``proc``."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
    # Children of the leader that ignored SIGTERM die with the group now.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound (only a bound socket blocks it)."""
    try:
        check_port_free(host, port)
    except ConfigError:
        return False
    return True


def check_port_free(host: str, port: int) -> None:
    """ConfigError naming the port when something is bound to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like a server itself: only a socket bound to the port blocks us,
        # not connections lingering in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(
                    f"port {port} on {host} is already in use; choose another port "
                    "or port=0 to pick a free one"
                ) from None
            raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def log_tail(path: Path | None, since: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the log written after byte offset ``since`` (a user's log is appended)."""
    if path is None:
        return "(no log)"
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(since, size - 16384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(log {path} unreadable)"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


# --- Stop hooks on SIGTERM / SIGINT --------------------------------------------------------------

_hooks: list[Callable[[], None]] = []
_previous_handlers: dict[int, Any] = {}


def on_termination_signals(hook: Callable[[], None]) -> bool:
    """Run ``hook`` on SIGTERM/SIGINT, before the previous handler (once per hook).

    The hook runs inside a signal handler: it must only signal processes, never wait or take a
    lock. Only the main thread may install handlers; elsewhere this returns False, and atexit
    hooks plus PR_SET_PDEATHSIG still prevent an orphan.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if hook not in _hooks:
        _hooks.append(hook)
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal or current is None or current == signal.SIG_IGN:
            continue  # ours already; set from C (cannot chain); ignored on purpose (nohup, &)
        _previous_handlers[signum] = current
        signal.signal(signum, _on_signal)
    return True


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for hook in list(_hooks):
        with contextlib.suppress(Exception):
            hook()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
    else:  # SIG_DFL: die as if we had never intercepted it
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


__all__ = [
    "check_port_free",
    "free_port",
    "log_tail",
    "on_termination_signals",
    "port_is_free",
    "signal_group",
    "spawn",
    "stop_group",
]
