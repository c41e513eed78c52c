"""model_stats.truncations: successful calls cut at max_tokens, per model and kind.

Existing rows get 0 (nothing was counted before). A database that got the column from the
interim code that added columns on open (before revisions existed) keeps it as it is.

Revision ID: r0003
Revises: r0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0003"
down_revision = "r0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("model_stats")}
    if "truncations" not in columns:
        with op.batch_alter_table("model_stats") as batch:
            batch.add_column(
                sa.Column("truncations", sa.Integer(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    with op.batch_alter_table("model_stats") as batch:
        batch.drop_column("truncations")
