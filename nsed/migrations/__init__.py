"""The versioned schema: Alembic revisions shipped in the package, applied on open.

:class:`nsed.store.Store` calls :func:`upgrade` every time it opens a database, so a user who
upgrades nsed never runs anything by hand (``nsed db upgrade`` does the same on purpose, and
``nsed db current`` shows where a database stands). The revisions are in ``versions/``, one
file each, oldest first: ``r0001`` is the schema of nsed 0.1.0 (adopted in place, see there),
``r0002`` adds ``bench_workers``, ``r0003`` ``model_stats.truncations``, ``r0004``
``bench_runs.sandbox`` and ``deliberations.owner``.

Changing the schema: change the table in :mod:`nsed.store` *and* add a revision here whose
``down_revision`` is the current head (copy ``r0004``; ``tests/test_migrations.py`` fails until
the migrated schema equals the tables in ``nsed.store``). Never edit a released revision.

An upgrade runs in one transaction under a lock (PostgreSQL: an advisory lock; SQLite: the
write lock of ``BEGIN IMMEDIATE``), so several processes that open a new database at once
migrate it once, and a failed upgrade leaves the database as it was. A database whose
revision this code does not know was written by a newer nsed: it is refused with a
:class:`~nsed.errors.StoreError` rather than used half-understood.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from nsed.errors import StoreError

# Tables nsed 0.1.0 created without a version table (a database holding them is 0.1.0's).
RELEASE_0_1_0_TABLES = frozenset(
    {"deliberations", "bench_runs", "bench_results", "model_stats", "agent_status", "broker_events"}
)
_PG_LOCK_KEY = 0x6E736564  # "nsed": the advisory lock every nsed migration takes on PostgreSQL


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision (None: none recorded) and what that means."""

    revision: str | None
    head: str
    legacy: bool = False  # tables of nsed 0.1.0, no version recorded
    empty: bool = False  # no nsed table at all

    @property
    def known(self) -> bool:
        return self.revision is None or self.revision in _revisions()

    @property
    def current(self) -> bool:
        return self.revision == self.head

    def describe(self) -> str:
        if self.empty:
            return f"empty (no nsed tables); opening it creates revision {self.head}"
        if self.legacy:
            return (
                f"nsed 0.1.0 schema (no version recorded); `nsed db upgrade` takes it to "
                f"{self.head}"
            )
        if not self.known:
            return (
                f"revision {self.revision}, newer than this nsed knows (head {self.head}): "
                "upgrade nsed to use this database"
            )
        if self.current:
            return f"revision {self.revision} (head)"
        behind = _revisions().index(self.head) - _revisions().index(self.revision or "")
        return f"revision {self.revision}, {behind} behind head {self.head}: run `nsed db upgrade`"


def _config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("nsed.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


@lru_cache(maxsize=1)
def _revisions() -> list[str]:
    """Every revision id, oldest first."""
    return [r.revision for r in reversed(list(_script().walk_revisions()))]


def history() -> list[tuple[str, str]]:
    """(revision, first line of its docstring) for every revision, oldest first."""
    script = _script()
    out = []
    for revision in _revisions():
        doc = (script.get_revision(revision).module.__doc__ or "").strip()
        out.append((revision, doc.splitlines()[0] if doc else ""))
    return out


def head() -> str:
    """The newest revision this code knows."""
    return str(_script().get_current_head())


def _state(connection: Connection) -> SchemaState:
    from alembic.runtime.migration import MigrationContext

    revision = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names())
    nsed_tables = tables & RELEASE_0_1_0_TABLES
    return SchemaState(
        revision=revision,
        head=head(),
        legacy=revision is None and bool(nsed_tables),
        empty=revision is None and not nsed_tables,
    )


def _lock(connection: Connection) -> None:
    """Serialise migrations: PostgreSQL's advisory lock (SQLite's BEGIN IMMEDIATE already
    holds the write lock; see nsed.store)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _too_new(state: SchemaState, where: str) -> StoreError:
    return StoreError(
        f"database {where} is at schema revision {state.revision}, which this nsed does not "
        f"know (its newest is {state.head}): a newer nsed wrote it. Upgrade nsed "
        "(pip install -U nsed), or point NSED_DATABASE_URL/--db at another database"
    )


def current(engine: Engine, where: str = "") -> SchemaState:
    """The state of the database behind ``engine``, read without changing anything.

    Database errors propagate as SQLAlchemy's (the Store turns them into StoreError).
    """
    with engine.connect().execution_options(nsed_read=True) as connection:
        return _state(connection)


def upgrade(engine: Engine, where: str = "") -> SchemaState:
    """Bring the database to the head revision (a no-op when it is there); returns its state.

    Raises StoreError when the database is newer than this code or a revision fails (then
    nothing was changed); database errors propagate as SQLAlchemy's (see :func:`current`).
    """
    try:
        with engine.connect().execution_options(nsed_read=True) as connection:
            state = _state(connection)  # the fast path: no lock, no write when current
        if state.current:
            return state
        if not state.known:
            raise _too_new(state, where)
        with engine.begin() as connection:
            _lock(connection)
            state = _state(connection)  # again, under the lock: another process may have won
            if not state.known:
                raise _too_new(state, where)
            if not state.current:
                from alembic import command

                command.upgrade(_config(connection), "head")
                state = _state(connection)
        return state
    except RuntimeError as exc:  # a revision refused the database (see r0001)
        raise StoreError(
            f"database {where}: schema upgrade failed, nothing changed: {exc}"
        ) from None


__all__ = ["RELEASE_0_1_0_TABLES", "SchemaState", "current", "head", "history", "upgrade"]
