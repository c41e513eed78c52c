"""The schema of nsed 0.1.0, the last release before the schema was versioned.

0.1.0 created its tables with ``create_all`` and kept no version. This revision creates each
table that is missing, exactly as 0.1.0 did, and leaves a table that exists alone, after
checking it has 0.1.0's columns. So a database made by 0.1.0 is adopted in place (nothing is
copied or rewritten) and a fresh database gets the same tables.

Revision ID: r0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None

_NOW = sa.DateTime(timezone=True)  # TIMESTAMPTZ on PostgreSQL; SQLite: DATETIME either way


def _tables() -> list[sa.Table]:
    meta = sa.MetaData()
    string, integer, real = sa.String(), sa.Integer(), sa.Float()

    def col(
        name: str, kind: object, *args: object, nullable: bool = False, **kw: object
    ) -> sa.Column:
        return sa.Column(name, kind, *args, nullable=nullable, **kw)  # type: ignore[arg-type]

    return [
        sa.Table(
            "deliberations",
            meta,
            col("id", string, primary_key=True),
            col("created_at", _NOW, index=True),
            col("question", string),
            col("kind", string),
            col("answer", string),
            col("final", string, nullable=True),
            col("winner", string, nullable=True),
            col("stopped_because", string),
            col("n_rounds", integer),
            col("prompt_tokens", integer),
            col("completion_tokens", integer),
            col("cost_usd", real),
            col("wall_s", real),
            col("trace", string),
        ),
        sa.Table(
            "bench_runs",
            meta,
            col("run_id", string, primary_key=True),
            col("created_at", _NOW),
            col("benchmark", string),
            col("data_path", string, nullable=True),
            col("methods", string),
            col("team", string),
            col("config", string),
            col("status", string),
        ),
        sa.Table(
            "model_stats",
            meta,
            col("model_name", string, primary_key=True),
            col("kind", string, primary_key=True),
            *(col(name, integer) for name in ("calls", "failures", "timeouts")),
            col("latency_ewma_s", real),
            col("recent_latencies", string),
            col("prompt_tokens", integer),
            col("completion_tokens", integer),
            col("cost_usd", real),
            col("support_sum", real),
            *(
                col(name, integer)
                for name in (
                    "support_n",
                    "wins",
                    "round_wins",
                    "rounds_played",
                    "deliberations",
                    "graded",
                    "correct",
                )
            ),
            col("updated_at", _NOW),
        ),
        sa.Table(
            "agent_status",
            meta,
            col("model_name", string, primary_key=True),
            col("status", string),
            col("strikes", integer),
            col("fail_streak", integer),
            col("benched_until", _NOW, nullable=True),
            col("probation_rounds", integer),
            col("recent_support", string),
            col("recent_correct", string),
            col("updated_at", _NOW),
        ),
        sa.Table(
            "broker_events",
            meta,
            col("id", integer, primary_key=True),
            col("created_at", _NOW, index=True),
            col("kind", string),
            col("agent", string, index=True),
            col("detail", string),
            col("deliberation_id", string, nullable=True),
        ),
        sa.Table(
            "bench_results",
            meta,
            col("id", integer, primary_key=True),
            col("run_id", string, sa.ForeignKey("bench_runs.run_id"), index=True),
            col("method", string),
            col("problem_id", string),
            col("sample", integer),
            col("correct", sa.Boolean()),
            col("predicted", string, nullable=True),
            col("gold", string, nullable=True),
            col("prompt_tokens", integer),
            col("completion_tokens", integer),
            col("cost_usd", real),
            col("latency_s", real),
            col("error", string, nullable=True),
            col("detail", string),
            col("deliberation_id", string, nullable=True),
            col("created_at", _NOW),
            sa.UniqueConstraint("run_id", "method", "problem_id", "sample"),
        ),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for table in _tables():  # in dependency order: bench_runs before bench_results
        if table.name not in existing:
            table.create(bind)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise RuntimeError(
                f"table {table.name} exists but lacks the columns {', '.join(missing)} that "
                "nsed 0.1.0 created; this database was not made by nsed 0.1.0"
            )


def downgrade() -> None:
    for table in reversed(_tables()):
        op.drop_table(table.name)
