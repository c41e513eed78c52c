"""The embedded llama.cpp server: lifecycle, real completions, failure modes, no orphans.

Every test runs the real ``llama-server`` on the bundled SmolLM2-135M model; they assert on
structure and process state, never on what the model says.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nsed.agents import local
from nsed.agents.local import (
    LocalServer,
    LocalServerConfig,
    default_local_team,
    get_shared_server,
    shutdown_shared_server,
)
from nsed.config import DEFAULT_PERSONAS
from nsed.errors import BackendError, ConfigError

pytestmark = pytest.mark.integration

NSED_ROOT = str(Path(local.__file__).parents[2])  # so a child python imports this same nsed


def running(pid: int) -> bool:
    """True while ``pid`` is a live process; a zombie counts as gone (for a process that is not
    our child, reaping is init's job, and some containers' init never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return not running(pid)


def wait_dead(srv: LocalServer, within_s: float) -> bool:
    """Until the server notices its process ended (the kernel reports a multi-threaded process
    as exited a moment after its main thread shows as a zombie)."""
    deadline = time.monotonic() + within_s
    while srv.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not srv.is_alive()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def shared() -> Iterator[None]:
    shutdown_shared_server()
    yield
    shutdown_shared_server()


def test_start_health_metrics_stop(tmp_path: Path) -> None:
    srv = LocalServer(LocalServerConfig(log_path=tmp_path / "server.log"))
    srv.start()
    pid = srv.pid
    assert pid is not None and running(pid)
    assert srv.is_alive()
    srv.check_alive()
    assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
    root = srv.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=5).status_code == 200
    assert "llamacpp:" in httpx.get(f"{root}/metrics", timeout=5).text
    models = httpx.get(f"{srv.base_url}/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    srv.stop()
    assert not running(pid)
    assert not srv.is_alive()
    srv.stop()  # idempotent
    with pytest.raises(BackendError, match="not running"):
        srv.check_alive()
    assert (tmp_path / "server.log").read_text().strip()  # a user-given log is kept


def test_json_schema_completion_is_valid_json(server: LocalServer) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is 7 + 5? Reply in JSON."}],
        "temperature": 0,
        "seed": 1,
        "max_tokens": 128,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    }
    reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60).json()
    data = json.loads(reply["choices"][0]["message"]["content"])
    assert set(data) == {"answer", "confidence"}
    assert isinstance(data["answer"], int)


def test_default_team_differs_per_seat(server: LocalServer) -> None:
    team = default_local_team(server)
    seats = team.agents()
    assert [s.name for s in seats] == ["smol-careful", "smol-creative", "smol-concise"]
    assert len({s.temperature for s in seats}) == 3 and len({s.seed for s in seats}) == 3
    assert [s.persona for s in seats] == list(DEFAULT_PERSONAS[:3])
    assert {m.base_url for m in team.models} == {server.base_url}
    assert all(m.structured == "json_schema" and m.max_concurrency == 4 for m in team.models)
    with pytest.raises(ConfigError, match="n_agents"):
        default_local_team(server, n_agents=1)


def test_shared_server_is_reused_and_restarted_after_death(shared: None) -> None:
    first = get_shared_server()
    second = get_shared_server()
    assert first is second and first.pid == second.pid
    pid = first.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_dead(first, 5)
    third = get_shared_server()
    assert third.is_alive() and third.pid != pid
    with pytest.raises(ConfigError, match="shutdown_shared_server"):
        get_shared_server(LocalServerConfig(parallel=2))
    shutdown_shared_server()
    assert third.pid is not None and not running(third.pid)


def test_killed_server_is_reported_with_log_lines() -> None:
    with LocalServer() as srv:
        pid = srv.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_dead(srv, 5)
        with pytest.raises(BackendError, match=r"died: it exited with code -9") as info:
            srv.check_alive()
        assert "last lines of" in str(info.value)
        assert "srv" in str(info.value)  # real lines from the llama-server log
        log = srv.log_path
    assert not running(pid)
    assert log is not None and not log.exists()  # a temp log is removed by stop()


def test_explicit_port_in_use_is_a_config_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"port {port}"):
            LocalServer(LocalServerConfig(port=port)).start()
        assert time.monotonic() - started < 5


def test_missing_and_non_gguf_model_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match=r"nope\.gguf"):
        LocalServer(LocalServerConfig(model_path=missing)).start()
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ConfigError, match="not a GGUF"):
        LocalServer(LocalServerConfig(model_path=text)).start()


def test_corrupt_gguf_fails_fast_without_orphan(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 4096)
    config = LocalServerConfig(model_path=bogus, startup_timeout_s=20, log_path=tmp_path / "l")
    srv = LocalServer(config)
    started = time.monotonic()
    with pytest.raises(BackendError, match="failed to start") as info:
        srv.start()
    assert time.monotonic() - started < 20
    assert "bogus.gguf" in str(info.value)  # the server's own complaint, from its log
    assert srv.pid is not None and not running(srv.pid)
    assert not srv.is_alive()


def test_never_ready_times_out_and_kills(tmp_path: Path) -> None:
    srv = LocalServer(LocalServerConfig(startup_timeout_s=0.05, log_path=tmp_path / "s.log"))
    with pytest.raises(BackendError, match=r"not ready within 0.05 s") as info:
        srv.start()
    assert "last lines of" in str(info.value)
    assert srv.pid is not None and not running(srv.pid)


def test_small_slot_context_is_rejected() -> None:
    with pytest.raises(ValueError, match="tokens per slot"):
        LocalServerConfig(ctx_size=4096, parallel=4)


def test_server_started_from_a_short_lived_thread_survives_it() -> None:
    """PR_SET_PDEATHSIG fires when the spawning *thread* exits; spawns must not die with it."""
    box: list[LocalServer] = []
    worker = threading.Thread(target=lambda: box.append(LocalServer().start()))
    worker.start()
    worker.join(timeout=60)
    srv = box[0]
    try:
        time.sleep(0.5)
        assert srv.is_alive()
    finally:
        srv.stop()


def _child(code: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": NSED_ROOT}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_pid(child: subprocess.Popen[str]) -> int:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip().isdigit():
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child did not print a server pid: {line!r}\n{err}")
    return int(line)


CHILD_STARTS_SHARED = """
    import sys, time
    from nsed.agents.local import LocalServerConfig, get_shared_server
    srv = get_shared_server(LocalServerConfig(log_path=sys.argv[1]))
    try:
        print(srv.pid, flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_no_orphan_after_parent_is_sigkilled(tmp_path: Path) -> None:
    child = _child(CHILD_STARTS_SHARED, tmp_path)
    pid = _read_pid(child)
    assert running(pid)
    child.kill()
    child.wait(timeout=10)
    assert wait_gone(pid, 5), f"llama-server {pid} outlived its SIGKILLed parent"


def test_sigterm_stops_server_and_still_terminates_parent(tmp_path: Path) -> None:
    child = _child(CHILD_STARTS_SHARED, tmp_path)
    pid = _read_pid(child)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=15) == -signal.SIGTERM
    assert wait_gone(pid, 5)


def test_sigint_stops_server_and_raises_keyboard_interrupt(tmp_path: Path) -> None:
    child = _child(CHILD_STARTS_SHARED, tmp_path)
    pid = _read_pid(child)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=15)
    assert "interrupted" in out and child.returncode == 0, err
    assert wait_gone(pid, 5)
