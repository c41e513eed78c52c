"""``nsed up`` / ``nsed down``: launch a team's vLLM servers, and stop them (registered in
:mod:`nsed.cli`).

``nsed up --team team.toml`` (or ``--catalog``) plans the self-hosted models (``vram_gb > 0``)
on the GPUs (``--gpus``, default all visible), starts one ``vllm serve`` each, waits for their
``/health``, writes the team TOML with the endpoints filled in and supervises them until
``nsed down``, Ctrl-C or SIGTERM; ``--detach`` returns once they are ready. ``--dry-run``
prints the plan (``--json``: for each model ``name, gpus, port, argv, env_keys``, per GPU the
summed memory fraction) and starts nothing. ``--vllm-cmd`` replaces the ``vllm`` executable
(a venv's ``/opt/vllm/bin/vllm``, or a stand-in in tests).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nsed.errors import BackendError, ConfigError
from nsed.launch.gpus import resolve_gpus
from nsed.launch.plan import LaunchPlan, plan_launch
from nsed.launch.supervisor import Launcher, alive, down, read_state
from nsed.launch.team_file import LaunchInput, write_outputs
from nsed.processes import free_port, port_is_free
from nsed.store import nsed_home

launch_app = typer.Typer(add_completion=False)
DEFAULT_PORT = 8001
DETACH_READY_S = 0.2


def default_state_dir() -> Path:
    return nsed_home() / "up"


def _ports(host: str, base: int, *, check: bool):
    def ports(n: int) -> list[int]:
        if base == 0:
            return [free_port(host) for _ in range(n)]
        chosen: list[int] = []
        port = base
        while len(chosen) < n:
            if port > 65535:
                raise ConfigError(f"no {n} free ports from {base} on {host}: pick --port")
            if not check or port_is_free(host, port):
                chosen.append(port)
            port += 1
        return chosen

    return ports


def _source(team: Path | None, catalog: Path | None) -> LaunchInput:
    if (team is None) == (catalog is None):
        raise ConfigError("give the models to launch: --team team.toml or --catalog catalog.toml")
    path = team if team is not None else catalog
    assert path is not None
    return LaunchInput(path, is_catalog=catalog is not None)


def _show_plan(console: Console, plan: LaunchPlan) -> None:
    table = Table(title="nsed up plan", title_justify="left")
    for column in ("model", "GPUs", "mem fraction", "TP", "port", "reasoning parser"):
        table.add_column(column)
    for m in plan.models:
        table.add_row(
            escape(m.name),
            ",".join(map(str, m.gpus)),
            f"{m.gpu_memory_utilization:.3f}",
            str(m.tensor_parallel_size),
            str(m.port),
            m.reasoning_parser or "—",
        )
    console.print(table)
    for gpu in plan.gpus:
        console.print(
            f"GPU {gpu.index} ({gpu.memory_gb:g} GB): {gpu.fraction:.3f} used by "
            + (", ".join(gpu.models) or "nothing")
        )
    for m in plan.models:
        console.print(f"[dim]{escape(shlex.join(m.argv))}[/]")


class _Terminated(SystemExit):
    """SIGTERM turned into an exception, so that the servers are stopped on the way out."""


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(128 + signum)


@launch_app.command()
def up(
    team: Annotated[Path | None, typer.Option(help="team TOML whose vram_gb > 0 models to start")]
    = None,
    catalog: Annotated[Path | None, typer.Option(help="catalog TOML instead of a team")] = None,
    gpus: Annotated[
        str | None, typer.Option(help="GPUs to use, e.g. 0,1 (default: all visible)")
    ] = None,
    gpu_memory_gb: Annotated[
        float | None,
        typer.Option(help="memory per GPU in GB (default: from nvidia-smi; needed without it)"),
    ] = None,
    port: Annotated[
        int, typer.Option(help="first port; the next free ones follow (0: any free ports)")
    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="interface the servers listen on")] = "127.0.0.1",
    vllm_cmd: Annotated[
        str, typer.Option(help="the vllm executable, possibly with arguments before 'serve'")
    ] = "vllm",
    api_key_env: Annotated[
        str | None,
        typer.Option(help="environment variable with the key every server requires"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="team TOML to write (default: STATE_DIR/team.toml)")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="state and logs (default: $NSED_HOME/up)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="seconds each server may take to become healthy")
    ] = 1800.0,
    dry_run: Annotated[bool, typer.Option(help="print the plan, start nothing")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as JSON")]
    = False,
    detach: Annotated[
        bool, typer.Option(help="run in the background; return once every server is healthy")
    ] = False,
) -> None:
    """Start the team's vLLM servers, write the team TOML, and supervise them."""
    source = _source(team, catalog)
    found = resolve_gpus(gpus, gpu_memory_gb)
    try:
        command = shlex.split(vllm_cmd)
    except ValueError as exc:
        raise ConfigError(f"--vllm-cmd {vllm_cmd!r}: {exc}") from None
    plan = plan_launch(
        source.models,
        found,
        vllm_cmd=command,
        host=host,
        ports=_ports(host, port, check=not dry_run),
        api_key_env=api_key_env,
    )
    if dry_run:
        if json_output:
            sys.stdout.write(plan.model_dump_json(indent=2) + "\n")
        else:
            _show_plan(Console(), plan)
        return
    if json_output:
        raise ConfigError("--json goes with --dry-run (nsed up itself prints progress)")
    state = state_dir or default_state_dir()
    if detach:
        _detach(state, timeout)
        return
    console = Console(stderr=True)
    team_path = out or state / "team.toml"
    launcher = Launcher(
        plan, state, health_timeout_s=timeout, gpu_devices={g.index: g.device for g in found}
    )
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with launcher:
            console.print(f"nsed up: starting {len(plan.models)} server(s); logs in {state}/logs")
            launcher.start()
            written = write_outputs(source, plan, team_path)
            launcher.record_outputs(written)
            for m in plan.models:
                console.print(f"  {m.name}: {m.base_url} (GPUs {','.join(map(str, m.gpus))})")
            console.print(
                f"nsed up: ready. Team: {written[0]}"
                + (f", catalog: {written[1]}" if len(written) > 1 else "")
                + ". Stop with nsed down (or Ctrl-C)."
            )
            launcher.watch()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _detach(state: Path, timeout: float) -> None:
    """Re-run this command without --detach in a new session; return when it is ready."""
    args = [a for a in sys.argv[1:] if a != "--detach"]
    if "--state-dir" not in args:
        args += ["--state-dir", str(state)]
    state.mkdir(parents=True, exist_ok=True)
    log = state / "supervisor.log"
    with log.open("ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "nsed.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not tied to this process: it outlives us on purpose
        )
    deadline = time.monotonic() + timeout + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise BackendError(f"nsed up failed (exit {child.returncode}); see {log}")
        current = read_state(state)
        if current is not None and current.supervisor_pid == child.pid and current.ready:
            Console(stderr=True).print(
                f"nsed up: ready in the background (pid {child.pid}); team: "
                f"{current.outputs[0] if current.outputs else '?'}; log: {log}"
            )
            sys.stdout.write((current.outputs[0] if current.outputs else "") + "\n")
            return
        time.sleep(DETACH_READY_S)
    child.terminate()
    raise BackendError(f"nsed up did not become ready within {timeout:g} s; see {log}")


@launch_app.command("down")
def down_command(
    state_dir: Annotated[
        Path | None, typer.Option(help="the state directory nsed up used (default: $NSED_HOME/up)")
    ] = None,
) -> None:
    """Stop the servers an nsed up started (and that nsed up itself)."""
    state_dir = state_dir or default_state_dir()
    console = Console(stderr=True)
    state = down(state_dir)
    if state is None:
        console.print(f"nsed down: nothing to stop (no nsed up state in {state_dir})")
        return
    left = [s.name for s in state.servers if alive(s.pid, s.started)]
    if left:
        raise BackendError(f"nsed down: still running after SIGKILL: {', '.join(left)}")
    console.print(
        f"nsed down: stopped {len(state.servers)} server(s) and nsed up "
        f"(pid {state.supervisor_pid})"
    )


__all__ = ["launch_app"]
