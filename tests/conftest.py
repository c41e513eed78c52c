"""Shared pytest fixtures (real scripted OpenAI-compatible servers on 127.0.0.1) and the
hypothesis profile."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from tests import postgres_server, ray_cluster
from tests.browser import INSTALL as BROWSER_INSTALL
from tests.browser import browser_missing
from tests.scripted_server import ScriptedServer

# A suite started in the background (`make test &`, nohup, some CI runners) inherits SIGINT as
# ignored, and an ignored signal stays ignored across exec: every child the tests start would
# then ignore the Ctrl-C that the signal tests send it. Handling SIGINT here (the default
# KeyboardInterrupt) makes children start with SIGINT at its default, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Property tests are reproducible: the "ci" profile (the default) derives every example from
# the test itself, so a run can't turn red one day and green the next; examples a property
# once failed on are kept as explicit tests. HYPOTHESIS_PROFILE=explore searches at random.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _local_server() -> str | None:
    from nsed.agents.local import local_available

    ok, why = local_available()
    return None if ok else why


def _onnx_embedder() -> str | None:
    from nsed.orchestrator.similarity import onnx_unavailable_reason

    return onnx_unavailable_reason()


# marker -> (why it is missing, or None; the command that installs it). A test that needs a
# component that is not installed fails and says how to install it: it never skips silently.
REQUIRED_COMPONENTS: dict[str, tuple[Callable[[], str | None], str]] = {
    "integration": (_local_server, "make install-local"),
    "embed": (_onnx_embedder, "make install-dev"),
    "postgres": (postgres_server.missing, postgres_server.INSTALL),
    "ray": (ray_cluster.missing, ray_cluster.INSTALL),
    "browser": (browser_missing, BROWSER_INSTALL),
}


@pytest.fixture(autouse=True)
def _required_components(request: pytest.FixtureRequest) -> None:
    for marker, (missing, install) in REQUIRED_COMPONENTS.items():
        if request.node.get_closest_marker(marker) is None:
            continue
        why = missing()
        if why is not None:
            pytest.fail(f"this test needs {marker} components: {why}. Install: {install}",
                        pytrace=False)


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[postgres_server.PostgresServer]:
    """One real PostgreSQL server for the session (initdb in a temp folder, 127.0.0.1)."""
    why = postgres_server.missing()
    if why is not None:
        pytest.fail(f"this test needs PostgreSQL: {why}. Install: {postgres_server.INSTALL}",
                    pytrace=False)
    with postgres_server.PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: postgres_server.PostgresServer) -> str:
    """The URL of a fresh, empty PostgreSQL database for one test."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[ray_cluster.RayCluster]:
    """One real local Ray cluster (a head node on 127.0.0.2, 4 logical CPUs) for the session."""
    why = ray_cluster.missing()
    if why is not None:
        pytest.fail(f"this test needs Ray: {why}. Install: {ray_cluster.INSTALL}", pytrace=False)
    with ray_cluster.RayCluster(cpus=4) as cluster:
        yield cluster
