"""Persistence: sqlmodel tables and one small Store that opens them.

SQLite at ``$NSED_HOME/nsed.db`` (default ``~/.nsed/nsed.db``) unless ``NSED_DATABASE_URL`` or
an explicit URL names another SQLAlchemy database (PostgreSQL: ``postgresql+psycopg://...``,
the ``postgres`` extra). Opening a store brings its schema to the newest revision
(:mod:`nsed.migrations`); a database written by a newer nsed is refused. Every write happens in
one transaction (``Store.transaction``) so a failure never leaves partial rows; database errors
(locked, corrupt, unreachable) become ``StoreError`` with a message that says what to check, and
a JSON cell that does not parse is a :class:`CorruptCell` naming its table, row and column.

Several processes may write one store at once (shards, Ray actors, several servers). On SQLite
a write transaction takes the write lock when it begins (``BEGIN IMMEDIATE``), so a
read-then-write never works from a stale snapshot; on PostgreSQL counters are updated by SQL
increments and rows locked where a value depends on the old one (:mod:`nsed.broker.telemetry`).
The SQLite file is created 0600 in a folder created 0700: traces hold users' questions.
Nothing secret is ever stored: traces are ``Deliberation`` JSON, which never contains API keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import UniqueConstraint, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import defer
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from nsed import migrations
from nsed.errors import StoreError
from nsed.results import Deliberation

log = logging.getLogger("nsed.store")

LOCK_TIMEOUT_ENV = "NSED_DB_LOCK_TIMEOUT_S"  # how long a SQLite writer waits for the lock


def _busy_timeout_ms() -> int:
    """SQLite's busy timeout: NSED_DB_LOCK_TIMEOUT_S seconds, default 15."""
    try:
        return max(0, int(float(os.environ.get(LOCK_TIMEOUT_ENV) or 15) * 1000))
    except ValueError:
        raise StoreError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds") from None


def _now() -> datetime:
    return datetime.now(UTC)


# --- Tables -----------------------------------------------------------------------------------


class DeliberationRow(SQLModel, table=True):
    """One finished deliberation and its full JSON trace."""

    __tablename__ = "deliberations"

    id: str = Field(primary_key=True)
    created_at: datetime = Field(default_factory=_now, index=True)
    question: str
    kind: str
    answer: str
    final: str | None = None
    winner: str | None = None
    stopped_because: str
    n_rounds: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    trace: str = Field(description="Deliberation JSON")
    owner: str | None = Field(
        default=None, description="key id of the server key that asked for it (not the key)"
    )


class DeliberationSummary(BaseModel):
    """One line of a list of deliberations: the row without its trace (the web page's Runs)."""

    id: str
    created_at: datetime
    question: str
    kind: str
    final: str | None = None
    winner: str | None = None
    stopped_because: str
    rounds: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    owner: str | None = Field(default=None, exclude=True, description="key id; never listed")

    @classmethod
    def of(cls, result: Deliberation, owner: str | None = None) -> DeliberationSummary:
        return cls(
            owner=owner,
            id=result.id,
            created_at=result.started_at,
            question=result.question,
            kind=result.kind,
            final=result.final,
            winner=result.winner,
            stopped_because=result.stopped_because,
            rounds=len(result.rounds),
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cost_usd=result.usage.cost_usd,
            wall_s=result.wall_s,
        )


class BenchRun(SQLModel, table=True):
    """A benchmark run: what was run on what, so that a re-run with the same id resumes."""

    __tablename__ = "bench_runs"

    run_id: str = Field(primary_key=True)
    created_at: datetime = Field(default_factory=_now)
    benchmark: str
    data_path: str | None = None
    methods: str = Field(description="comma-separated method names")
    team: str = Field(default="{}", description="team JSON without secrets")
    config: str = Field(default="{}", description="run options JSON")
    status: str = Field(default="running", description="the last status a worker wrote")
    sandbox: str | None = Field(
        default=None, description="sandbox plan(s) model code ran under; None: no code run"
    )
    # A new column goes here *and* into a revision in nsed/migrations/versions/ (see there).


class BenchResult(SQLModel, table=True):
    """One (run, method, problem, sample) result, stored as soon as it exists."""

    __tablename__ = "bench_results"
    __table_args__ = (UniqueConstraint("run_id", "method", "problem_id", "sample"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, foreign_key="bench_runs.run_id")
    method: str
    problem_id: str
    sample: int = 0
    correct: bool = False
    predicted: str | None = None
    gold: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    detail: str = Field(default="{}", description="method-specific JSON (per-round finals, ...)")
    deliberation_id: str | None = None
    created_at: datetime = Field(default_factory=_now)


class BenchWorker(SQLModel, table=True):
    """One process, shard or Ray actor working on a run; it beats ``heartbeat_at`` while alive.

    A run's status is derived from its workers (``nsed.benchmarks.runner.run_status``): a
    worker killed mid-run, or one that could not write its end status (a locked database),
    stops beating and shows as stale rather than leaving the run "running" forever.
    """

    __tablename__ = "bench_workers"

    worker_id: str = Field(primary_key=True)
    run_id: str = Field(index=True, foreign_key="bench_runs.run_id")
    role: str = Field(description="process, shard I/N, ray actor I/N")
    host: str
    pid: int
    problems: int = Field(default=0, description="problems in its slice")
    done: int = Field(default=0, description="answers it stored")
    status: str = "running"  # running | complete | incomplete | failed | interrupted
    error: str | None = None
    started_at: datetime = Field(default_factory=_now)
    heartbeat_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


class ModelStat(SQLModel, table=True):
    """Live telemetry of one model on one task kind, updated after every deliberation.

    ``calls`` counts attempted calls (``failures`` of them failed, ``timeouts`` of those timed
    out, ``truncations`` of the successful ones were cut at max_tokens); ``wins`` counts
    deliberations whose final answer was this model's, ``round_wins`` rounds it won;
    ``graded``/``correct`` count deliberations with a known gold answer.
    """

    __tablename__ = "model_stats"

    model_name: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    truncations: int = 0
    latency_ewma_s: float = 0.0
    recent_latencies: str = Field(default="[]", description="JSON list, newest last, capped")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    support_sum: float = 0.0
    support_n: int = 0
    wins: int = 0
    round_wins: int = 0
    rounds_played: int = 0
    deliberations: int = 0
    graded: int = 0
    correct: int = 0
    updated_at: datetime = Field(default_factory=_now)


class AgentStatusRow(SQLModel, table=True):
    """Free-agency state of one model: strikes, bench cooldown, probation."""

    __tablename__ = "agent_status"

    model_name: str = Field(primary_key=True)
    status: str = "active"  # active | benched | probation | released
    strikes: int = 0
    fail_streak: int = Field(default=0, description="failed calls in a row")
    benched_until: datetime | None = Field(default=None, description="UTC")
    probation_rounds: int = Field(default=0, description="rounds played on probation")
    recent_support: str = Field(default="[]", description="JSON list of recent support values")
    recent_correct: str = Field(default="[]", description="JSON list of recent graded results")
    updated_at: datetime = Field(default_factory=_now)


class BrokerEventRow(SQLModel, table=True):
    """Every free-agency decision (benched, signed on, promoted, released)."""

    __tablename__ = "broker_events"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=_now, index=True)
    kind: str = Field(description="the event type: agent_benched, agent_signed_on, ...")
    agent: str = Field(index=True)
    detail: str = Field(default="", description="the event as JSON")
    deliberation_id: str | None = None


# --- The store --------------------------------------------------------------------------------


def nsed_home() -> Path:
    return Path(os.environ.get("NSED_HOME") or Path.home() / ".nsed")


def default_database_url() -> str:
    return os.environ.get("NSED_DATABASE_URL") or f"sqlite:///{nsed_home() / 'nsed.db'}"


class CorruptCell(StoreError):
    """A stored JSON cell does not parse (edited by hand, a disk fault); names where it is."""


def json_cell(text: str | None, where: str, default: Any = None) -> Any:
    """The value of a JSON column; ``default`` for an empty one; CorruptCell when unparsable.

    ``where`` names the cell for the message (``bench_results id 7 (detail)``).
    """
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CorruptCell(
            f"{where} holds text that is not JSON ({exc.msg} at char {exc.pos}); "
            "repair or delete that row"
        ) from None


def insert_or_ignore(
    session: Session, table: type[SQLModel], values: dict[str, Any], keys: list[str]
) -> None:
    """Insert a row unless one with the same ``keys`` exists, without a unique-key error when
    another process inserts it at the same moment (ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        session.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=keys))
        return
    found = session.exec(
        select(table).where(*(getattr(table, k) == values[k] for k in keys))
    ).first()
    if found is None:
        session.add(table(**values))
        session.flush()


def _sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # The driver's own transaction handling off: the "begin" listener below says how to begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    timeout_ms = _busy_timeout_ms()
    cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
    _switch_to_wal(cursor, timeout_ms / 1000)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the lock.

    On a new (empty) file the switch reads the header and then writes it, a lock upgrade for
    which SQLite does not call the busy handler: of several processes opening a new store at
    once (shards, Ray actors) all but one got "database is locked" at once, whatever the busy
    timeout. So we wait here, up to the same timeout, with a short jittered back-off.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.2)


def _sqlite_begin(connection) -> None:  # type: ignore[no-untyped-def]
    """Writers take the write lock up front, so their reads are never of a stale snapshot (a
    deferred transaction that read and then writes fails with SQLITE_BUSY_SNAPSHOT when another
    process committed in between); readers (``nsed_read``) do not block anyone."""
    read = connection.get_execution_options().get("nsed_read", False)
    connection.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def _private_sqlite_file(path: Path) -> None:
    """Create the folders 0700 and the database file 0600 before SQLite does (it would use the
    umask, typically 0755/0644); SQLite gives its -wal/-shm files the database's mode. An
    existing folder or file keeps the permissions its owner chose."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    for folder in reversed(missing):  # outermost first, each one ours and private
        folder.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for in-memory databases and other backends)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


class Store:
    """Opens the database, migrates its schema, and hands out transactional sessions."""

    def __init__(self, url: str | None = None, *, upgrade: bool = True) -> None:
        self.url = url or default_database_url()
        try:
            backend = make_url(self.url).get_backend_name()
        except ArgumentError:
            raise StoreError(
                f"{self.url.split('@')[-1]!r} is not a database URL; use e.g. "
                "sqlite:////path/nsed.db or postgresql+psycopg://user@host/db"
            ) from None
        self.backend = backend
        try:
            path = _sqlite_path(self.url)
            if path is not None:
                _private_sqlite_file(path)
            if backend == "sqlite":
                connect_args: dict[str, Any] = {
                    "timeout": _busy_timeout_ms() / 1000,
                    "check_same_thread": False,
                }
            elif backend == "postgresql":
                connect_args = {"options": "-c timezone=UTC"}  # naive datetimes are UTC
            else:
                connect_args = {}
            self.engine: Engine = create_engine(
                self.url, connect_args=connect_args, pool_pre_ping=backend != "sqlite"
            )
            if backend == "sqlite":
                event.listen(self.engine, "connect", _sqlite_connect)
                event.listen(self.engine, "begin", _sqlite_begin)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"database {self.where}: its driver {exc.name!r} is not installed; "
                'for PostgreSQL: pip install "nsed[postgres]"'
            ) from None
        if upgrade:
            self.upgrade()

    def upgrade(self) -> migrations.SchemaState:
        """Bring the schema to the newest revision (done on open unless ``upgrade=False``)."""
        try:
            return migrations.upgrade(self.engine, self.where)
        except SQLAlchemyError as exc:
            raise StoreError(self._explain(exc)) from None

    def schema_state(self) -> migrations.SchemaState:
        """Where the schema stands, read without changing anything."""
        try:
            return migrations.current(self.engine, self.where)
        except SQLAlchemyError as exc:
            raise StoreError(self._explain(exc)) from None

    @property
    def where(self) -> str:
        """The database's location without credentials (safe for messages)."""
        return self.url.split("@")[-1]

    def _explain(self, exc: BaseException) -> str:
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        hint = ""
        if "locked" in text:
            hint = " (another process holds a write lock; retry or close it)"
        elif "not a database" in text or "malformed" in text:
            hint = " (the file is corrupt; move it away or set NSED_DATABASE_URL)"
        return f"database {self.where}: {text}{hint}"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose writes commit together at the end, or not at all."""
        with self._session(self.engine) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it takes no write lock (it blocks no writer)."""
        with self._session(self.engine.execution_options(nsed_read=True)) as session:
            yield session

    @contextmanager
    def _session(self, bind: Engine) -> Iterator[Session]:
        session = Session(bind, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(self._explain(exc)) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def save_deliberation(self, result: Deliberation, *, owner: str | None = None) -> None:
        """Store a finished deliberation (idempotent on its id); ``owner``: see the server."""
        row = DeliberationRow(
            id=result.id,
            created_at=result.started_at,
            question=result.question,
            kind=result.kind,
            answer=result.answer,
            final=result.final,
            winner=result.winner,
            stopped_because=result.stopped_because,
            n_rounds=len(result.rounds),
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cost_usd=result.usage.cost_usd,
            wall_s=result.wall_s,
            trace=result.model_dump_json(),
            owner=owner,
        )
        with self.transaction() as session:
            session.merge(row)

    def load_deliberation(self, deliberation_id: str) -> Deliberation | None:
        found = self.load_owned_deliberation(deliberation_id)
        return found[0] if found else None

    def load_owned_deliberation(
        self, deliberation_id: str
    ) -> tuple[Deliberation, str | None] | None:
        """The stored trace and its owner (a server key id), None when unknown; CorruptCell
        when the trace does not parse."""
        with self.reading() as session:
            row = session.get(DeliberationRow, deliberation_id)
            found = (row.trace, row.owner) if row else None
        if found is None:
            return None
        try:
            return Deliberation.model_validate_json(found[0]), found[1]
        except ValidationError:
            raise CorruptCell(
                f"deliberations id {deliberation_id} (trace) is not a readable trace; "
                "repair or delete that row"
            ) from None

    def list_deliberations(
        self, limit: int = 50, offset: int = 0, *, owned_by: str | None = None
    ) -> list[DeliberationSummary]:
        """Stored deliberations, newest first, without reading their traces; ``owned_by``
        keeps only those of that owner (a server key id), None keeps all."""
        r = DeliberationRow
        query = select(r).options(defer(r.trace))  # type: ignore[arg-type]
        if owned_by is not None:
            query = query.where(r.owner == owned_by)
        query = query.order_by(col(r.created_at).desc(), col(r.id)).offset(offset).limit(limit)
        with self.reading() as session:
            rows = session.exec(query).all()
            return [
                DeliberationSummary(
                    rounds=row.n_rounds,
                    **row.model_dump(exclude={"n_rounds", "trace", "answer"}),
                )
                for row in rows
            ]

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = [
    "AgentStatusRow",
    "BenchResult",
    "BenchRun",
    "BenchWorker",
    "BrokerEventRow",
    "CorruptCell",
    "DeliberationRow",
    "ModelStat",
    "Store",
    "default_database_url",
    "insert_or_ignore",
    "json_cell",
    "nsed_home",
]
