"""``nsed serve`` against hostile clients (issue 14, items 9-11), over real sockets.

Slowloris (partial headers, a dripping body, more connections than the server holds), traces
read with another client's key, run ids in the log, bodies nested 100,000 deep and numbers
out of range: each is answered with a status and a message, never held open or logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from nsed.config import DeliberationConfig, TeamSpec
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings
from nsed.server.connections import mask_trace_ids
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.helpers import nsed_command
from tests.scripted_server import ScriptedServer

NAMES = ["alpha", "beta", "gamma"]
ASK = {"model": "nsed/council", "messages": [{"role": "user", "content": "What is 17 * 23?"}]}
CONFIG = {"max_rounds": 1, "min_rounds": 1, "embeddings": "off", "kind": "math"}


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        for name in NAMES:
            server.route(name, agent("391", judge=judge_by_answer("391")))
        yield server


def settings(agents: ScriptedServer, **limits: object) -> ServerSettings:
    team = TeamSpec.model_validate(team_dict(agents.url, NAMES))
    spec = CouncilSpec(team=team, config=DeliberationConfig.model_validate(CONFIG))
    return ServerSettings(councils={"council": spec}, **limits)


@pytest.fixture
def serve(agents: ScriptedServer) -> Iterator:
    started: list[BackgroundServer] = []

    def make(**limits: object) -> BackgroundServer:
        server = BackgroundServer(settings(agents, **limits)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def connect(server: BackgroundServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return sock


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sent within ``seconds``, and whether it closed the connection."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


# --- Item 9: slowloris -------------------------------------------------------------------------


def test_connections_that_drip_their_headers_are_answered_408_and_closed(serve):
    """The reproduction: 200 unauthenticated connections with partial headers stayed open for
    30 s and more. Here they drip a byte every 0.3 s; each is closed after the 1 s header
    deadline while the server keeps answering everyone else."""
    server = serve(header_timeout_s=1.0, api_keys=[SecretStr("sk-k")])
    socks = [
        connect(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n") for _ in range(200)
    ]
    received = {i: b"" for i in range(len(socks))}
    still_open = set(received)
    started = time.monotonic()
    healthy = False
    while still_open and time.monotonic() - started < 15:
        for i in list(still_open):
            try:
                chunk = socks[i].recv(4096)
            except BlockingIOError:
                chunk = None
            except ConnectionResetError:
                chunk = b""
            if chunk == b"":
                still_open.discard(i)
                continue
            if chunk:
                received[i] += chunk
            try:
                socks[i].send(b"X")  # one more byte of a header name
            except (BrokenPipeError, ConnectionResetError):
                still_open.discard(i)
        if not healthy:
            healthy = httpx.get(f"{server.root}/health", timeout=5).status_code == 200
        time.sleep(0.3)
    for sock in socks:
        sock.close()
    assert not still_open, f"{len(still_open)} slow connections still open"
    assert healthy
    answered = [r for r in received.values() if r]
    assert answered and all(r.startswith(b"HTTP/1.1 408 ") for r in answered)
    assert b"did not arrive within 1 s" in answered[0]


def test_a_body_that_drips_is_408(serve):
    server = serve(body_timeout_s=1.0)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n"
    )
    sock = connect(server, head + b'{"model": ')
    got = b""
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        try:
            sock.send(b" ")
            got = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in got


def test_connections_beyond_the_limit_get_503_at_once(serve):
    server = serve(max_connections=20, header_timeout_s=30.0)
    socks = [connect(server) for _ in range(25)]
    try:
        replies = [read_until_closed(sock, 1.0) for sock in socks]
        refused = [got for got, closed in replies if closed]
        assert len(refused) == 5
        assert all(got.startswith(b"HTTP/1.1 503 ") for got in refused)
        assert b"limit of 20 connections" in refused[0]
    finally:
        for sock in socks:
            sock.close()
    # Once those are gone, the server takes connections again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{server.root}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


# --- Item 10: a trace belongs to its key ---------------------------------------------------------


def test_a_trace_is_read_by_its_key_and_admin_keys_only(serve, tmp_path):
    keys = {
        "api_keys": [SecretStr("sk-alice"), SecretStr("sk-bob")],
        "admin_keys": [SecretStr("sk-admin")],
    }
    url = f"sqlite:///{tmp_path / 'nsed.db'}"

    def read(server: BackgroundServer, run_id: str, key: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.get(f"{server.url}/deliberations/{run_id}", headers=headers, timeout=10)

    first = serve(store_url=url, **keys)
    made = httpx.post(
        f"{first.url}/chat/completions",
        json=ASK,
        timeout=60,
        headers={"authorization": "Bearer sk-alice"},
    )
    assert made.status_code == 200, made.text
    run_id = made.headers["x-nsed-run-id"]
    unknown = read(first, "0" * 32, "sk-bob")
    for server in (first, serve(store_url=url, **keys)):  # from memory, then from the store
        assert read(server, run_id, "sk-alice").status_code == 200
        assert read(server, run_id, "sk-admin").json()["id"] == run_id
        other = read(server, run_id, "sk-bob")
        assert other.status_code == 404  # told exactly what an unknown id is told
        assert other.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert read(server, run_id, "sk-nobody").status_code == 401
    stored = (tmp_path / "nsed.db").read_bytes()
    assert b"sk-alice" not in stored and b"sk-admin" not in stored


def test_the_list_of_deliberations_shows_each_key_its_own(serve, tmp_path):
    """The page's list (``GET /v1/deliberations``) follows the same rule, in memory and in
    the store, and a key id never appears in it."""
    keys = {
        "api_keys": [SecretStr("sk-alice"), SecretStr("sk-bob")],
        "admin_keys": [SecretStr("sk-admin")],
    }
    url = f"sqlite:///{tmp_path / 'nsed.db'}"

    def listed(server: BackgroundServer, key: str) -> list[str]:
        reply = httpx.get(
            f"{server.url}/deliberations", timeout=10, headers={"authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200, reply.text
        assert "owner" not in reply.text
        return [d["id"] for d in reply.json()["data"]]

    first = serve(store_url=url, **keys)
    made = {}
    for key in ("sk-alice", "sk-bob"):
        reply = httpx.post(
            f"{first.url}/chat/completions",
            json=ASK,
            timeout=60,
            headers={"authorization": f"Bearer {key}"},
        )
        made[key] = reply.headers["x-nsed-run-id"]
    for server in (first, serve(store_url=url, **keys)):  # from memory, then from the store
        assert listed(server, "sk-alice") == [made["sk-alice"]]
        assert listed(server, "sk-bob") == [made["sk-bob"]]
        assert set(listed(server, "sk-admin")) == set(made.values())


def test_the_info_log_of_nsed_serve_names_no_run_id(agents, tmp_path):
    """The real ``nsed serve`` (uvicorn's access log included) at its default INFO level."""
    team = tmp_path / "team.toml"
    lines = []
    for name in NAMES:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'base_url = "{agents.url}"',
            f'model = "{name}"',
            "max_retries = 0",
            "",
        ]
    team.write_text("\n".join(lines))
    config = tmp_path / "config.toml"
    config.write_text('max_rounds = 1\nmin_rounds = 1\nembeddings = "off"\nkind = "math"\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "NSED_HOME": str(tmp_path / "home"), "NSED_SERVER_API_KEYS": "sk-k"}
    proc = subprocess.Popen(
        nsed_command("serve", "--team", str(team), "--config", str(config), "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    root = f"http://127.0.0.1:{port}"
    headers = {"authorization": "Bearer sk-k"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "nsed serve did not start"
            time.sleep(0.2)
        made = httpx.post(f"{root}/v1/chat/completions", json=ASK, headers=headers, timeout=60)
        run_id = made.headers["x-nsed-run-id"]
        assert httpx.get(f"{root}/v1/deliberations/{run_id}", headers=headers).status_code == 200
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    assert "deliberation council=council status=ok" in log
    assert "GET /v1/deliberations/{id}" in log  # the access log is there, without the id
    assert run_id not in log and run_id[:8] not in log


def test_access_log_paths_hide_trace_ids():
    assert mask_trace_ids("/v1/deliberations/abc123?x=1") == "/v1/deliberations/{id}?x=1"
    assert mask_trace_ids("/v1/chat/completions") == "/v1/chat/completions"


# --- Item 11: hostile bodies and out-of-range options ---------------------------------------------


def post_raw(server: BackgroundServer, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/chat/completions",
        content=body,
        timeout=30,
        headers={"content-type": "application/json"},
    )


def test_json_nested_100000_deep_is_400_without_a_traceback(serve, caplog):
    caplog.set_level(logging.INFO)
    server = serve()
    for body in (b"[" * 100_000, b'{"model": "nsed/council", "metadata": ' + b"[" * 100_000):
        reply = post_raw(server, body)
        assert reply.status_code == 400, reply.text
        assert "nested too deeply" in reply.json()["error"]["message"]
    assert "Traceback" not in caplog.text and "unhandled" not in caplog.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('"max_tokens": 1e30', "max_tokens"),
        ('"max_completion_tokens": 100000000', "max_completion_tokens"),
        ('"nsed": {"budget_usd": Infinity}', "nsed.budget_usd"),
        ('"nsed": {"budget_usd": NaN}', "nsed.budget_usd"),
        ('"nsed": {"budget_tokens": 1000000000000}', "nsed.budget_tokens"),
        ('"nsed": {"rounds": 50}', "nsed.rounds"),
        ('"nsed": {"min_rounds": 11}', "nsed.min_rounds"),
        ('"temperature": NaN', "temperature"),
        ('"seed": 100000000000000000000000000000', "seed"),
        ('"top_logprobs": 1000', "top_logprobs"),
    ],
)
def test_numbers_out_of_range_are_400_naming_the_field(serve, body, param):
    server = serve()
    messages = json.dumps(ASK["messages"])
    reply = post_raw(
        server, f'{{"model": "nsed/council", "messages": {messages}, {body}}}'.encode()
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param, error


def test_rounds_within_the_servers_limit_still_run(serve):
    server = serve(max_rounds=12)
    reply = httpx.post(
        f"{server.url}/chat/completions",
        timeout=60,
        json={**ASK, "nsed": {"rounds": 2, "min_rounds": 2}},
    )
    assert reply.status_code == 200 and reply.json()["nsed"]["rounds"] == 2


def test_serve_cli_reads_admin_keys_and_limits(agents, tmp_path):
    from nsed.server.cli import build_settings

    team = tmp_path / "team.toml"
    team.write_text(
        "\n".join(
            f'[[models]]\nname = "{n}"\nbase_url = "{agents.url}"\nmodel = "{n}"\n' for n in NAMES
        )
    )
    admin = tmp_path / "admin.txt"
    admin.write_text("sk-admin-1\n")
    built = build_settings(team=team, admin_keys_file=admin, max_connections=64, max_rounds=5)
    assert [k.get_secret_value() for k in built.admin_keys] == ["sk-admin-1"]
    assert (built.max_connections, built.max_rounds) == (64, 5)
