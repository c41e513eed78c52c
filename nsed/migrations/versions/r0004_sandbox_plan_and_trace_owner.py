"""bench_runs.sandbox and deliberations.owner (issue 14, hardening).

``bench_runs.sandbox``: the sandbox plan(s) model-written code of a run was graded under
(``ns+uid``, ``userns``; ``plain`` only with ``--allow-unsandboxed``; a resume under another
plan reads ``a, then b``), NULL for runs that ran no code and for runs stored before it.
``deliberations.owner``: the key id (a hash, never the key) of the ``nsed serve`` key that
asked for the trace; NULL for traces saved by the CLI, benchmarks or earlier versions, which
only admin keys read once the server has keys (see ``nsed.server.limits.may_read``).

Revision ID: r0004
Revises: r0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0004"
down_revision = "r0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in (("bench_runs", "sandbox"), ("deliberations", "owner")):
        # A column already there (a database stamped back to an older revision) is kept.
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with op.batch_alter_table(table) as batch:
                batch.add_column(sa.Column(column, sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliberations") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("bench_runs") as batch:
        batch.drop_column("sandbox")
