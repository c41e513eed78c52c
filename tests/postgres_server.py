"""A real, throw-away PostgreSQL server for the tests: Debian's binaries, a temp data dir.

``initdb`` into a fresh folder, ``postgres`` listening on a free port of 127.0.0.1 only (no
Unix socket), password auth (scram) for one user with a random password, durability off (it
is thrown away). PostgreSQL refuses to run as root, so as root (CI) both run as the Debian
package's ``postgres`` account (or ``nsed-pg``, created when that is missing too). Each test
gets its own database (:meth:`PostgresServer.new_database`).

Missing binaries or driver are reported with the command that installs them; the tests that
need PostgreSQL then fail, they never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL = "make install-dev (it runs: apt-get install -y postgresql; pip install -e '.[postgres]')"
USER = "nsed"


def find_bindir() -> Path | None:
    """The folder of ``initdb``/``postgres``: Debian's /usr/lib/postgresql/N/bin (newest N)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the driver psycopg is not installed"
    bindir = find_bindir()
    if bindir is None or not (bindir / "postgres").exists():
        return "PostgreSQL's server binaries (initdb, postgres) are not installed"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid to run the server with (as root: an unprivileged user)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        try:
            account = pwd.getpwnam("nsed-pg")
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", "nsed-pg"],
                check=True,
            )
            account = pwd.getpwnam("nsed-pg")
    return ["runuser", "-u", account.pw_name, "--"], account.pw_uid, account.pw_gid


class PostgresServer:
    """``with PostgresServer() as pg:`` a running server; ``pg.new_database()`` -> URL."""

    def __init__(self) -> None:
        self.port = 0
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        why = missing()
        if why is not None:
            raise RuntimeError(f"{why}. Install: {INSTALL}")
        bindir = find_bindir()
        assert bindir is not None
        prefix, uid, gid = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="nsed-pg-"))
        data, pwfile, log = self.root / "data", self.root / "pw", self.root / "server.log"
        pwfile.write_text(self.password + "\n")
        if uid is not None and gid is not None:
            for path in (self.root, pwfile):
                os.chown(path, uid, gid)
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.port = _free_port()
        with open(log, "wb") as out:
            if uid is not None and gid is not None:
                os.chown(log, uid, gid)
            self._proc = subprocess.Popen(
                [
                    *prefix,
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=60",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout_s, log)
        return self

    def _wait_ready(self, timeout_s: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                gone = self._proc is None or self._proc.poll() is not None
                if gone or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.2)

    def dsn(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL nsed takes (NSED_DATABASE_URL / --db)."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # our own session: "fast" shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
