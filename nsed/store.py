"""Persistence: sqlmodel tables and one small Store that opens them.

SQLite at ``$NSED_HOME/nsed.db`` (default ``~/.nsed/nsed.db``) unless ``NSED_DATABASE_URL`` or
an explicit URL names another SQLAlchemy database. Every write happens in one transaction
(``Store.transaction``) so a failure never leaves partial rows; database errors (locked,
corrupt, unreachable) become ``StoreError`` with a message that says what to check. Nothing
secret is ever stored: traces are ``Deliberation`` JSON, which never contains API keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import UniqueConstraint, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import defer
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from nsed.errors import StoreError
from nsed.results import Deliberation


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
    status: str = "running"
    sandbox: str | None = Field(
        default=None, description="sandbox plan(s) model code ran under; None: no code run"
    )


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _add_new_columns(engine: Engine) -> None:
    """Give tables of an older database the columns added since (with their defaults).

    ``create_all`` creates missing tables only; a column added to a table later (such as
    ``model_stats.truncations``) is added here, so an existing database keeps working.
    """
    existing = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not existing.has_table(table.name):
            continue
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or column.primary_key:
                continue
            default = column.default.arg if column.default is not None else None
            if callable(default) or default is None:
                continue  # only plain defaults can fill the rows already there
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(
                    text(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind} '
                        f"NOT NULL DEFAULT {default!r}"
                    )
                )


class Store:
    """Opens the database, creates the tables, and hands out transactional sessions."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_database_url()
        try:
            if self.url.startswith("sqlite:///"):
                path = Path(self.url.removeprefix("sqlite:///"))
                path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                self.url,
                connect_args={"timeout": 10, "check_same_thread": False}
                if self.url.startswith("sqlite")
                else {},
            )
            if self.url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            SQLModel.metadata.create_all(self.engine)
            _add_new_columns(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None

    def _explain(self, exc: BaseException) -> str:
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        where = self.url.split("@")[-1]  # never echo credentials of a database URL
        hint = ""
        if "locked" in text:
            hint = " (another process holds a write lock; retry or close it)"
        elif "not a database" in text or "malformed" in text:
            hint = " (the file is corrupt; move it away or set NSED_DATABASE_URL)"
        return f"database {where}: {text}{hint}"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose writes commit together at the end, or not at all."""
        session = Session(self.engine, expire_on_commit=False)
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
        """The stored deliberation and its owner, or None."""
        with self.transaction() as session:
            row = session.get(DeliberationRow, deliberation_id)
            return (Deliberation.model_validate_json(row.trace), row.owner) if row else None

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
        with self.transaction() as session:
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
