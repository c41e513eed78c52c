"""Running a launch plan: start, health-check, watch and stop the vLLM servers; ``nsed down``.

``nsed up`` stays in the foreground as the servers' supervisor (``--detach`` runs it in the
background and returns once they are ready). Servers that share a GPU start one after the
other (vLLM measures free memory while it starts), the others at once; each must answer
``GET /health`` within ``--timeout``, or everything started is stopped and the error shows the
last lines of its log. The state file (``up.json`` in the state directory) names the
supervisor and every server with their start times, so ``nsed down`` stops exactly those
processes and never a reused pid.

No server outlives its supervisor: they are spawned through ``nsed.processes`` (own session,
PR_SET_PDEATHSIG), so a SIGKILLed supervisor takes them along; SIGTERM, SIGINT and a normal
exit stop each server's whole process group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import BaseModel, ValidationError

from nsed.agents.vllm import vllm_serve_env
from nsed.errors import BackendError, ConfigError
from nsed.launch.plan import LaunchPlan, PlannedModel
from nsed.processes import log_tail, spawn, stop_group

STATE_FILE = "up.json"
STOP_GRACE_S = 20.0
_POLL_S = 0.2


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None when it is gone.

    Stored next to a pid so that a later ``nsed down`` never signals a process that merely
    reused the number. A zombie counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None if not _exists(pid) else 0
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``started``."""
    now = process_start_time(pid)
    return now is not None and (started is None or now == started)


class ServerState(BaseModel):
    name: str
    pid: int
    started: int | None
    port: int
    base_url: str
    log: str


class UpState(BaseModel):
    """What ``nsed down`` needs to stop one ``nsed up``."""

    supervisor_pid: int
    supervisor_started: int | None
    ready: bool = False
    servers: list[ServerState] = []
    outputs: list[str] = []


def read_state(state_dir: Path) -> UpState | None:
    path = state_dir / STATE_FILE
    try:
        return UpState.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"the state file {path} is unreadable ({exc}); remove it") from None


def _write_state(state_dir: Path, state: UpState) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_name(STATE_FILE + ".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(path)


class _Server:
    def __init__(self, planned: PlannedModel, log: Path) -> None:
        self.planned = planned
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False

    @property
    def health_url(self) -> str:
        return self.planned.base_url.removesuffix("/v1") + "/health"

    def state(self) -> ServerState:
        assert self.proc is not None
        return ServerState(
            name=self.planned.name,
            pid=self.proc.pid,
            started=process_start_time(self.proc.pid),
            port=self.planned.port,
            base_url=self.planned.base_url,
            log=str(self.log),
        )


class Launcher:
    """Starts the plan's servers and stops every one of them, whatever happens."""

    def __init__(
        self,
        plan: LaunchPlan,
        state_dir: Path,
        *,
        health_timeout_s: float,
        gpu_devices: dict[int, str],
    ) -> None:
        self.plan = plan
        self.state_dir = state_dir
        self.health_timeout_s = health_timeout_s
        self.gpu_devices = gpu_devices
        self.servers = [_Server(p, state_dir / "logs" / f"{p.name}.log") for p in plan.models]
        self.state = UpState(
            supervisor_pid=os.getpid(), supervisor_started=process_start_time(os.getpid())
        )

    # --- starting --------------------------------------------------------------------------

    def _env(self, planned: PlannedModel) -> dict[str, str]:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_devices[g] for g in planned.gpus)
        env.pop("VLLM_API_KEY", None)
        if planned.api_key_env:
            env.update(vllm_serve_env(planned.api_key_env))  # never on the command line
        return env

    def start(self) -> None:
        """Start every server and wait until each is healthy; on any failure, stop them all."""
        running = read_state(self.state_dir)
        if running is not None and alive(running.supervisor_pid, running.supervisor_started):
            raise ConfigError(
                f"nsed up is already running (pid {running.supervisor_pid}) with the state in "
                f"{self.state_dir}: run nsed down first, or give another --state-dir"
            )
        envs = [self._env(s.planned) for s in self.servers]  # a missing key fails before any
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            for server, env in zip(self.servers, envs, strict=True):
                # vLLM sizes its KV cache from the memory free while it starts: servers that
                # share a GPU start one after the other.
                for earlier in self.servers:
                    if earlier.proc is not None and set(earlier.planned.gpus) & set(
                        server.planned.gpus
                    ):
                        self._wait_healthy(client, earlier)
                self._spawn(server, env)
            for server in self.servers:
                self._wait_healthy(client, server)
        self.state.ready = True
        self._save()

    def _spawn(self, server: _Server, env: dict[str, str]) -> None:
        with server.log.open("ab") as log_file:
            try:
                server.proc = spawn(server.planned.argv, log_file, env=env)
            except OSError as exc:
                raise ConfigError(
                    f"cannot run {server.planned.argv[0]!r} for {server.planned.name}: "
                    f"{exc.strerror} (is vLLM installed here? see --vllm-cmd)"
                ) from None
        self.state.servers.append(server.state())
        self._save()

    def _wait_healthy(self, client: httpx.Client, server: _Server) -> None:
        deadline = time.monotonic() + self.health_timeout_s
        while not server.ready:
            self.check(server)
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.health_url).status_code == 200:
                    server.ready = True
                    return
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{server.planned.name} was not healthy at {server.health_url} within "
                    f"{self.health_timeout_s:g} s (--timeout); last lines of {server.log}:\n"
                    f"{log_tail(server.log)}",
                    endpoint=server.planned.base_url,
                )
            time.sleep(_POLL_S)

    def check(self, server: _Server) -> None:
        """BackendError with the log's last lines when ``server``'s process has ended."""
        proc = server.proc
        if proc is None or proc.poll() is None:
            return
        raise BackendError(
            f"{server.planned.name} (pid {proc.pid}) exited with code {proc.returncode}; "
            f"last lines of {server.log}:\n{log_tail(server.log)}",
            endpoint=server.planned.base_url,
        )

    def watch(self, poll_s: float = 1.0) -> None:
        """Block while every server runs; BackendError as soon as one has ended."""
        while True:
            for server in self.servers:
                self.check(server)
            time.sleep(poll_s)

    def record_outputs(self, paths: list[Path]) -> None:
        self.state.outputs = [str(p) for p in paths]
        self._save()

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_state(self.state_dir, self.state)

    # --- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every server's process group, SIGKILL what is left after the grace period,
        reap them and remove the state file. Idempotent."""
        procs = [s.proc for s in self.servers if s.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            stop_group(proc, max(0.1, deadline - time.monotonic()))
        for server in self.servers:
            server.proc = None
        with contextlib.suppress(FileNotFoundError):
            state = read_state(self.state_dir)
            if state is not None and state.supervisor_pid == os.getpid():
                (self.state_dir / STATE_FILE).unlink()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def down(state_dir: Path, *, grace_s: float = STOP_GRACE_S + 10) -> UpState | None:
    """Stop the ``nsed up`` recorded in ``state_dir`` and its servers; None if none runs.

    The supervisor is asked first (SIGTERM: it stops its servers and removes the state); a
    supervisor that does not finish in ``grace_s`` is killed, and any server still running
    (it cannot outlive a killed supervisor on Linux, but the state says where to look) is
    killed with its process group.
    """
    state = read_state(state_dir)
    if state is None:
        return None
    if alive(state.supervisor_pid, state.supervisor_started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive(state.supervisor_pid, state.supervisor_started):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.supervisor_pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    for server in state.servers:
        if alive(server.pid, server.started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return state


__all__ = ["Launcher", "UpState", "alive", "down", "process_start_time", "read_state"]
