"""``nsed simulate``: aggregation methods on simulated agents of known competence.

Registered in the root ``nsed`` app by :mod:`nsed.cli`. Prints rich tables (with a progress
bar on stderr), or only the :class:`~nsed.simulation.experiment.SimulationReport` JSON with
``--json``; ``--plot DIR`` writes the accuracy-by-round and accuracy-against-(p_v − p_g) PNGs.
The experiment is imported when the command runs, so registering it costs nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nsed.errors import ConfigError

if TYPE_CHECKING:
    from nsed.simulation.experiment import SimulationReport

simulate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

_SHORT = {
    "single": "single",
    "majority_r1": "maj@r1",
    "mean_rank": "mean rank",
    "conf_vote": "conf vote",
    "vote": "vote",
    "nsed": "nsed",
    "vote_auto": "vote@auto",
    "nsed_auto": "nsed auto",
}


@simulate_app.command()
def simulate(
    problems: Annotated[int, typer.Option(help="quick-set problems per setting")] = 1000,
    protocol: Annotated[str, typer.Option(help="protocol preset: v2 (default) or v1")] = "v2",
    agents: Annotated[int, typer.Option(help="team size")] = 3,
    p_g: Annotated[float, typer.Option("--p-g", help="P(a proposal is right)")] = 0.5,
    p_v: Annotated[float, typer.Option("--p-v", help="P(a score is on the right side)")] = 0.8,
    revise: Annotated[float, typer.Option(help="P(a wrong agent adopts the leader)")] = 0.3,
    sycophancy: Annotated[float, typer.Option(help="P(drift to the plurality) per round")] = 0.05,
    fatigue: Annotated[float, typer.Option(help="P(losing the thread) per round·(R−1)")] = 0.0,
    correlation: Annotated[
        float, typer.Option(help="P(a fresh proposal repeats the agent's fixed answer)")
    ] = 0.0,
    adversary: Annotated[
        str, typer.Option(help="persona of the last seat: honest, self_promoter, ...")
    ] = "honest",
    rounds: Annotated[int, typer.Option(help="fixed rounds per deliberation")] = 6,
    qv_mode: Annotated[
        str | None,
        typer.Option(help="budget_capped, budget_signed or sqrt_raw (default: the protocol's)"),
    ] = None,
    gamma: Annotated[float, typer.Option(help="forget-gate decay γ")] = 0.5,
    grid: Annotated[
        str | None,
        typer.Option(
            help='settings to sweep, e.g. "protocol=v1,v2;p_g=0.3,0.5;p_v=0.6,0.8;agents=3,5"'
        ),
    ] = None,
    http: Annotated[
        bool, typer.Option("--http", help="serve the agents over HTTP (a load test)")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="deliberations at once")] = 100,
    match: Annotated[str, typer.Option(help="vote compute matching: calls or tokens")] = "calls",
    seed: Annotated[int, typer.Option(help="seed of the problems and the agents")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="print the report as JSON and nothing else")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="write PNG plots into this folder")] = None,
) -> None:
    """Measure nsed against vote, single and other aggregators on simulated agents."""
    from nsed.config import validate_or_config_error
    from nsed.simulation.experiment import (
        SimOptions,
        SimSetting,
        expand_grid,
        run_simulation,
        write_plots,
    )

    base = validate_or_config_error(
        SimSetting,
        {
            "protocol": protocol,
            "agents": agents,
            "p_g": p_g,
            "p_v": p_v,
            "revise": revise,
            "sycophancy": sycophancy,
            "fatigue": fatigue,
            "correlation": correlation,
            "adversary": adversary.replace("-", "_"),
            "rounds": rounds,
            "qv_mode": qv_mode,
            "gamma": gamma,
        },
        "simulate",
    )
    if match not in ("calls", "tokens"):
        raise ConfigError(f"--match {match!r} is unknown; use calls or tokens")
    options = validate_or_config_error(
        SimOptions,
        {
            "problems": problems,
            "seed": seed,
            "http": http,
            "concurrency": concurrency,
            "match": match,
        },
        "simulate",
    )
    settings = expand_grid(base, grid)
    if json_output:
        report = run_simulation(settings, options)
    else:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        tasks = [
            progress.add_task(f"setting {i + 1}/{len(settings)}", total=problems)
            for i in range(len(settings))
        ]
        with progress:
            report = run_simulation(
                settings,
                options,
                on_progress=lambda i, done, total: progress.update(tasks[i], completed=done),
            )
    paths = write_plots(report, plot) if plot is not None else []
    if json_output:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    _print_report(report, paths)


def _t_opt(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}"


def _varying(report: SimulationReport) -> list[str]:
    from nsed.simulation.experiment import GRID_KEYS

    keys = [k for k in GRID_KEYS if len({getattr(r.setting, k) for r in report.settings}) > 1] or [
        "agents",
        "p_g",
        "p_v",
    ]
    return keys


def _print_report(report: SimulationReport, paths: list[Path]) -> None:
    from nsed.simulation.experiment import METHODS

    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the tables into 80 columns
        console = Console(width=160)
    keys = _varying(report)
    transport: Literal["http", "in-process"] = "http" if report.http else "in-process"
    methods = Table(
        title=f"Accuracy on {report.problems} quick problems (seed {report.seed}, {transport})"
    )
    for key in keys:
        methods.add_column(key)
    for name in METHODS:
        methods.add_column(_SHORT[name], justify="right")
    for result in report.settings:
        cells = [str(getattr(result.setting, k)) for k in keys]
        for m in result.methods:
            extra = ""
            if m.method == "vote":
                extra = f" (k={result.vote_k})"
            elif m.method == "vote_auto":
                extra = f" (k={result.vote_k_auto})"
            elif m.method == "nsed_auto" and m.rounds is not None:
                extra = f" ({m.rounds:.1f}r)"
            cells.append(f"{m.accuracy:.3f}{extra}")
        methods.add_row(*cells)
    console.print(methods)

    cost = Table(title="Calls and tokens (prompt + completion) per problem")
    for key in keys:
        cost.add_column(key)
    priced = ("single", "vote", "nsed", "vote_auto", "nsed_auto")
    for name in priced:
        cost.add_column(_SHORT[name], justify="right")
    for result in report.settings:
        by_name = {m.method: m for m in result.methods}
        cells = [str(getattr(result.setting, k)) for k in keys]
        cells += [
            f"{by_name[n].calls_per_problem:.1f} / {by_name[n].tokens_per_problem:,.0f}"
            for n in priced
        ]
        cost.add_row(*cells)
    console.print(cost)

    width = max(len(r.accuracy_by_round) for r in report.settings)
    curve = Table(title="nsed: accuracy of each round's winner (t = 0: a generator alone), U(t)")
    for key in keys:
        curve.add_column(key)
    for t in range(width):
        curve.add_column(f"t{t}", justify="right")
    for column in ("p_g", "k", "β", "R²", "T_opt", "R² t≥1", "T_opt t≥1"):
        curve.add_column(column, justify="right")
    for result in report.settings:
        cells = [str(getattr(result.setting, k)) for k in keys]
        cells += [f"{a:.3f}" for a in result.accuracy_by_round]
        cells += [""] * (width - len(result.accuracy_by_round))
        fit, rounds_only = result.fit, result.fit_rounds
        if fit is None:
            cells += ["—"] * 5
        else:
            cells += [f"{fit.p_g:.3f}", f"{fit.k:.3f}", f"{fit.beta:.4f}", f"{fit.r2:.3f}"]
            cells.append(_t_opt(fit.t_opt))
        if rounds_only is None:
            cells += ["—"] * 2
        else:
            cells += [f"{rounds_only.r2:.3f}", _t_opt(rounds_only.t_opt)]
        curve.add_row(*cells)
    console.print(curve)

    speed = Table(title="Throughput (deliberations only)")
    for key in keys:
        speed.add_column(key)
    for column in ("transport", "concurrency", "delib/s", "calls/s", "CPU ms/call", "failed"):
        speed.add_column(column, justify="right")
    for result in report.settings:
        tp = result.throughput
        speed.add_row(
            *[str(getattr(result.setting, k)) for k in keys],
            tp.transport,
            str(tp.concurrency),
            f"{tp.deliberations_per_s:.1f}",
            f"{tp.calls_per_s:.0f}",
            f"{tp.cpu_ms_per_call:.2f}",
            str(tp.failed_calls),
        )
    console.print(speed)
    for path in paths:
        console.print(f"wrote {path}")


__all__ = ["simulate_app"]
