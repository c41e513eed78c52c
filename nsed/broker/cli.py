"""``nsed models`` (the catalog with live telemetry) and ``nsed broker explain`` (the decision).

Both only read: no model is called, and a telemetry database that does not exist yet is read
as empty rather than created. Bad input (unknown capability or kind, duplicate names, negative
budgets, an infeasible catalog, a corrupt database) raises the typed nsed error, which
``nsed``'s entry point prints as one ``error: ...`` line with a non-zero exit status.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nsed.broker.catalog import Catalog, CatalogEntry
from nsed.broker.knapsack import BrokerPolicy, TeamSelection, explain_table, select_team
from nsed.broker.telemetry import (
    ModelTelemetry,
    as_utc,
    load_stats,
    read_status,
    read_telemetry,
    utcnow,
)
from nsed.errors import ConfigError
from nsed.store import AgentStatusRow, Store, default_database_url

models_app = typer.Typer(
    help="The candidate models of a catalog, with live telemetry.", no_args_is_help=True
)
broker_app = typer.Typer(help="The Dynamic Expertise Broker's decisions.", no_args_is_help=True)

CatalogOpt = Annotated[
    Path | None,
    typer.Option("--catalog", help="catalog TOML ([[models]] with family, capabilities, ...)"),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="telemetry database URL (default: NSED_DATABASE_URL or ~/.nsed)"),
]
KindOpt = Annotated[str | None, typer.Option("--kind", help="task kind: math, code or text")]


def open_store(url: str | None) -> Store | None:
    """The telemetry store at ``url``; None when it is a SQLite file that does not exist yet."""
    url = url or default_database_url()
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path and path != ":memory:" and not Path(path).exists():
        return None
    return Store(url)


def _catalog(path: Path | None) -> Catalog | None:
    return Catalog.from_toml(path) if path is not None else None


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _status(row: AgentStatusRow | None, now: datetime) -> str:
    if row is None:
        return "active"
    until = as_utc(row.benched_until)
    if until is not None and until > now:
        left = (until - now).total_seconds()
        return f"{row.status} ({left:.0f}s left, strike {row.strikes})"
    if row.status in ("benched", "released"):
        return "active"  # the cooldown is over
    return row.status


# --- nsed models -------------------------------------------------------------------------------


@models_app.command("list")
def list_models(catalog: CatalogOpt = None, kind: KindOpt = None, db: DbOpt = None) -> None:
    """List the catalog's models (or every model with telemetry) and their live telemetry."""
    cat = _catalog(catalog)
    store = open_store(db)
    telemetry = read_telemetry(store, kind) if store is not None else []
    status = read_status(store) if store is not None else {}
    by_name: dict[str, list[ModelTelemetry]] = {}
    for t in telemetry:
        by_name.setdefault(t.name, []).append(t)
    names = cat.names() if cat is not None else sorted(set(by_name) | set(status))
    now = utcnow()
    table = Table(title="models" + (f" · kind {kind}" if kind else ""), title_justify="left")
    for column in ("model", "family", "vram GB", "$ in/out per 1M", "capabilities", "prior"):
        table.add_column(column, justify="right" if column in ("vram GB", "prior") else "left")
    for column in ("kind", "calls", "fail %", "p50 s", "support", "wins", "acc", "skill"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    table.add_column("status")
    for name in names:
        entry = cat.get(name) if cat is not None else None
        rows = by_name.get(name) or [None]
        for i, t in enumerate(rows):
            head = _entry_cells(entry, kind) if i == 0 else [""] * 5
            table.add_row(
                escape(name) if i == 0 else "",
                *head,
                *_telemetry_cells(t),
                _status(status.get(name), now) if i == 0 else "",
            )
    Console().print(table)


def _entry_cells(entry: CatalogEntry | None, kind: str | None) -> list[str]:
    if entry is None:
        return ["—", "—", "—", "—", "—"]
    prior = entry.prior_skill.get(kind) if kind else None
    priors = (
        _fmt(prior, ".2f")
        if kind
        else ", ".join(f"{k} {v:.2f}" for k, v in entry.prior_skill.items()) or "—"
    )
    return [
        escape(entry.family),
        f"{entry.vram_gb:g}" if entry.vram_gb else "hosted",
        f"{entry.input_price:g}/{entry.output_price:g}",
        escape(", ".join(entry.capabilities) or "—"),
        priors,
    ]


def _telemetry_cells(t: ModelTelemetry | None) -> list[str]:
    if t is None:
        return ["—", "0", "—", "—", "—", "0", "—", "—"]
    return [
        t.kind,
        str(t.calls),
        _fmt(100 * (1 - t.success_ratio) if t.calls else None, ".0f"),
        _fmt(t.latency_p50_s, ".2f"),
        _fmt(t.mean_support, "+.2f"),
        f"{t.wins}/{t.deliberations}",
        _fmt(t.accuracy, ".0%") + (f" ({t.graded})" if t.graded else ""),
        _fmt(t.learned_skill, ".2f"),
    ]


@models_app.command("show")
def show_model(
    name: Annotated[str, typer.Argument(help="the model's name in the catalog")],
    catalog: CatalogOpt = None,
    db: DbOpt = None,
) -> None:
    """Show one model: its catalog entry, telemetry per task kind, and free-agency status."""
    cat = _catalog(catalog)
    store = open_store(db)
    telemetry = [t for t in read_telemetry(store) if t.name == name] if store else []
    status = read_status(store).get(name) if store else None
    entry = cat.get(name) if cat is not None else None  # ConfigError names the known models
    if entry is None and not telemetry and status is None:
        raise ConfigError(
            f"no model named {name!r} has telemetry; pass --catalog to show a catalog entry"
        )
    console = Console()
    info = Table(title=name, title_justify="left", show_header=False)
    info.add_column("field")
    info.add_column("value")
    if entry is not None:
        for key, value in entry.model_dump(exclude={"api_key"}).items():
            if value not in (None, [], {}):
                info.add_row(key, escape(str(value)))
    info.add_row("status", _status(status, utcnow()))
    console.print(info)
    if telemetry:
        table = Table(title="telemetry", title_justify="left")
        fields = [k for k in ModelTelemetry.model_fields if k not in ("name",)]
        for key in fields:
            table.add_column(key.replace("_", " "), justify="right")
        for t in telemetry:
            table.add_row(*(_cell(getattr(t, key)) for key in fields))
        console.print(table)
    else:
        console.print("no telemetry yet")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


# --- nsed broker explain -----------------------------------------------------------------------


@broker_app.command("explain")
def explain(
    catalog: Annotated[Path, typer.Option("--catalog", help="catalog TOML")],
    kind: Annotated[str, typer.Option("--kind", help="task kind: math, code or text")] = "text",
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="$ per question for the whole team")
    ] = None,
    vram_gb: Annotated[
        float | None, typer.Option("--vram-gb", help="VRAM for self-hosted models (vram_gb > 0)")
    ] = None,
    min_team: Annotated[int, typer.Option("--min-team", help="fewest models (>= 2)")] = 3,
    max_team: Annotated[int, typer.Option("--max-team", help="most models")] = 5,
    max_per_family: Annotated[
        int, typer.Option("--max-per-family", help="diversity cap per model family")
    ] = 2,
    db: DbOpt = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print the decision as JSON and nothing else")
    ] = False,
) -> None:
    """Show the team the broker would choose, and why each other model was left out.

    Uses the stored telemetry (learned skill, success ratio, benched models); calls no model.
    """
    policy = BrokerPolicy(
        budget_usd=budget_usd,
        vram_gb=vram_gb,
        min_team=min_team,
        max_team=max_team,
        max_per_family=max_per_family,
    )
    cat = Catalog.from_toml(catalog)
    store = open_store(db)
    stats = load_stats(store, kind.strip().lower()) if store is not None else {}
    selection = select_team(cat, kind, policy, stats)
    if json_output:
        sys.stdout.write(json.dumps(decision_json(selection), indent=2) + "\n")
        return
    print_decision(Console(), selection)


def decision_json(selection: TeamSelection) -> dict[str, Any]:
    """The machine-readable decision: budget, the team, and each rejection's reason."""
    return {
        "budget_usd": selection.budget_usd,
        "team": [
            {
                "name": c.name,
                "role": c.role,
                "cost_usd": c.cost_usd,
                "vram_gb": c.vram_gb,
                "value": c.value,
            }
            for c in selection.team
        ],
        "rejected": [{"name": r.name, "reason": r.reason} for r in selection.rejected],
    }


def print_decision(console: Console, selection: TeamSelection) -> None:
    table = Table(title=f"broker decision · kind {selection.kind}", title_justify="left")
    for column in ("model", "status", "role", "value", "cost $", "vram GB", "reason"):
        table.add_column(column, justify="right" if column in ("value", "cost $") else "left")
    for row in explain_table(selection):
        table.add_row(
            escape(row["model"]),
            "[green]chosen[/]" if row["status"] == "chosen" else "[dim]rejected[/]",
            escape(row["role"]),
            _fmt(row["value"], ".3f"),
            _fmt(row["cost_usd"], ".4g"),
            _fmt(row["vram_gb"], "g"),
            escape(row["reason"]),
        )
    budget = "none" if selection.budget_usd is None else f"${selection.budget_usd:.4g}"
    vram = "none" if selection.vram_budget_gb is None else f"{selection.vram_budget_gb:g} GB"
    table.caption = (
        f"team value {selection.value:.3f} · cost ${selection.cost_usd:.4g} (budget {budget}) · "
        f"vram {selection.vram_gb:g} GB (budget {vram}) · {selection.solver} "
        f"{selection.solve_s * 1000:.0f} ms"
    )
    console.print(table)


__all__ = ["broker_app", "decision_json", "models_app", "open_store", "print_decision"]
