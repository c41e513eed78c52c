"""bench_workers: one row per process (or Ray actor, or shard) working on a benchmark run.

Each worker beats its row every few seconds and writes its own end status, so a run's status
is derived from its workers: a worker killed with -9, or one that could not write its end
status because the database was locked, stops beating and shows as stale instead of leaving
the run "running" forever; several shards or actors on one run no longer overwrite each
other's status.

Revision ID: r0002
Revises: r0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002"
down_revision = "r0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bench_workers",
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["bench_runs.run_id"]),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_bench_workers_run_id", "bench_workers", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_bench_workers_run_id", table_name="bench_workers")
    op.drop_table("bench_workers")
