"""``nsed db``: where a database's schema stands, and upgrading it (registered in nsed.cli).

Every command that opens the store upgrades it anyway; these commands say what happens, and
``current`` reads without changing anything (so it also describes a database that a newer
nsed wrote, which every other command refuses).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from nsed import migrations
from nsed.store import Store

db_app = typer.Typer(
    help="The database's schema version: show it, upgrade it.", no_args_is_help=True
)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="database URL; default NSED_DATABASE_URL or $NSED_HOME/nsed.db"),
]


@db_app.command("current")
def db_current(db: DbOpt = None) -> None:
    """The schema revision of the database (exit 1 when a newer nsed wrote it)."""
    store = Store(db, upgrade=False)
    try:
        state = store.schema_state()
    finally:
        store.dispose()
    Console().print(f"{escape(store.where)}: {escape(state.describe())}", soft_wrap=True)
    if not state.known:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Bring the database to the newest schema revision (in one transaction)."""
    store = Store(db, upgrade=False)
    try:
        before = store.schema_state()
        after = store.upgrade()
    finally:
        store.dispose()
    was = before.revision or ("the 0.1.0 schema" if before.legacy else "empty")
    if before.revision == after.revision:
        message = f"already at {after.revision} (head)"
    else:
        message = f"upgraded from {was} to {after.revision} (head)"
    Console().print(f"{escape(store.where)}: {message}", soft_wrap=True)


@db_app.command("history")
def db_history() -> None:
    """Every schema revision this nsed knows, oldest first."""
    console = Console()
    for revision, summary in migrations.history():
        console.print(f"{revision}  {escape(summary)}", soft_wrap=True)


__all__ = ["db_app"]
