"""Alembic's environment for nsed: migrations run on the connection nsed hands over.

:func:`nsed.migrations.upgrade` opens the transaction (and takes the migration lock) and passes
its connection in ``config.attributes["connection"]``; everything then runs inside that one
transaction, so a failed upgrade leaves the database as it was. SQLite gets batch mode
(``ALTER TABLE`` there cannot drop or change columns; batch mode copies the table instead).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "nsed's migrations run through nsed: `nsed db upgrade` (or any Store open), "
        "not the alembic command line"
    )
context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
