"""A real local Ray cluster for tests and measurements: a head and workers on loopback.

Each node is ``ray start --block`` in its own session, so stopping it (SIGTERM, then SIGKILL
to that session's process group) ends exactly the processes it started, never anyone else's
Ray. Nodes bind loopback addresses of their own (head 127.0.0.2, workers 127.0.0.3, ...):
Ray turns 127.0.0.1 into the machine's LAN address, and no traffic must leave loopback.
The cluster's files live in a fresh temp folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL = "make install-dev (it runs: pip install -e '.[ray]')"
HEAD_IP = "127.0.0.2"


def missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed"
    return None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """``with RayCluster(workers=2) as cluster:`` -> ``cluster.address`` (HEAD_IP:PORT)."""

    def __init__(self, *, workers: int = 0, cpus: int = 4, worker_cpus: int = 2) -> None:
        self.workers = workers
        self.cpus = cpus
        self.worker_cpus = worker_cpus
        self.address = ""
        self.root: Path | None = None
        self._nodes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once when told
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _start_node(self, args: list[str], name: str) -> None:
        assert self.root is not None
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [_ray(), "start", *args, "--disable-usage-stats", "--block"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
            )
        self._nodes.append((proc, log))
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the Ray {name} did not start:\n{tail}")
            time.sleep(0.3)

    def start(self) -> RayCluster:
        why = missing()
        if why is not None:
            raise RuntimeError(f"{why}. Install: {INSTALL}")
        self.root = Path(tempfile.mkdtemp(prefix="nsed-ray-", dir="/tmp"))
        port = _free_port(HEAD_IP)
        self._start_node(
            [
                "--head",
                "--node-ip-address", HEAD_IP,
                "--port", str(port),
                "--ray-client-server-port", str(_free_port(HEAD_IP)),
                "--num-cpus", str(self.cpus),
                "--include-dashboard=false",
                "--object-store-memory", "100000000",
                "--temp-dir", str(self.root / "ray"),
            ],
            "head",
        )
        self.address = f"{HEAD_IP}:{port}"
        for i in range(self.workers):
            ip = f"127.0.0.{3 + i}"
            self._start_node(
                [
                    "--address", self.address,
                    "--node-ip-address", ip,
                    "--num-cpus", str(self.worker_cpus),
                    "--object-store-memory", "100000000",
                ],
                f"worker-{i + 1}",
            )
        return self

    def stop(self) -> None:
        nodes, self._nodes = self._nodes, []
        for proc, _ in reversed(nodes):  # workers first, the head last
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever that node left in its session
            if proc.poll() is None:
                proc.wait(10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
