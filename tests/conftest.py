"""Shared pytest fixtures: real scripted OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.scripted_server import ScriptedServer


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A fresh, started ScriptedServer for one test; stopped afterwards."""
    with ScriptedServer() as server:
        yield server


@pytest.fixture
def scripted_server_factory() -> Iterator[Callable[[], ScriptedServer]]:
    """Call it to start another ScriptedServer; every one started is stopped afterwards."""
    servers: list[ScriptedServer] = []

    def make() -> ScriptedServer:
        server = ScriptedServer().start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
