"""``nsed bench`` (run a benchmark) and ``nsed runs`` (inspect stored runs).

Registered in :mod:`nsed.cli` (``bench_app``, ``runs_app``). A bench run prints its id
first, shows a progress bar (done/total, accuracy so far, tokens, ETA) and ends with a results
table; Ctrl-C stops it and says how to resume, and whatever was stored stays stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nsed.benchmarks.reports import (
    RunReport,
    build_report,
    fatigue_fit,
    list_runs,
    plot_run,
)
from nsed.benchmarks.runner import BenchOptions, BenchProgress, new_run_id, run_benchmark
from nsed.config import DeliberationConfig, load_toml, validate_or_config_error
from nsed.errors import ConfigError
from nsed.store import Store

bench_app = typer.Typer(
    help="Benchmark the deliberation against its members, majority voting and MoA.",
    no_args_is_help=True,
)
runs_app = typer.Typer(help="List, show and plot stored benchmark runs.", no_args_is_help=True)

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="JSONL file or directory (nothing is downloaded)")
]
TeamOpt = Annotated[
    Path | None,
    typer.Option(help="team TOML; default: NSED_TEAM, OPENAI_BASE_URL or the local model"),
]
MethodsOpt = Annotated[
    str, typer.Option(help="comma-separated: nsed, single, vote, moa, single:<agent>")
]
RoundsOpt = Annotated[int | None, typer.Option(help="maximum rounds of the deliberation")]
MinRoundsOpt = Annotated[int | None, typer.Option(help="no early stop before this round")]
LimitOpt = Annotated[int | None, typer.Option(help="only the first N problems")]
ConcurrencyOpt = Annotated[int, typer.Option(help="problems in flight at once")]
RunIdOpt = Annotated[
    str | None, typer.Option("--run-id", help="resume this run (or name a new one)")
]
MatchOpt = Annotated[
    bool,
    typer.Option(
        "--match-compute",
        help="baselines spend the deliberation's completion tokens on each problem",
    ),
]
SeedOpt = Annotated[int, typer.Option(help="seed of the quick set, sampling and label shuffling")]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="database URL; default NSED_DATABASE_URL or $NSED_HOME/nsed.db"),
]
VoteKOpt = Annotated[
    int | None,
    typer.Option("--vote-k", help="vote samples without --match-compute (default: team size)"),
]
AggregatorOpt = Annotated[
    str | None, typer.Option("--moa-aggregator", help="agent that aggregates for moa")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard", help="run slice I of N (I/N) against the shared store; run the others elsewhere"
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS|auto",
        help="spread the problems over Ray actors: --ray auto (RAY_ADDRESS, else this "
        "machine's cluster) or --ray HEAD:PORT; needs nsed[ray]",
    ),
]
ActorsOpt = Annotated[int, typer.Option("--actors", min=1, help="Ray actors (with --ray)")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML of DeliberationConfig fields (top level or a table)"),
]
UnsandboxedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsandboxed",
        help="grade model-written code even where no sandbox isolates it (it can then read "
        "your files); without it such a run is refused",
    ),
]


def _deliberation_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_toml(path)
    section = data.get("deliberation", data)
    validated = validate_or_config_error(DeliberationConfig, section, str(path))
    return validated.model_dump(mode="json", exclude_unset=True)


class _ProgressView:
    """Turns BenchProgress updates into one rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.last: BenchProgress | None = None

    def __call__(self, update: BenchProgress) -> None:
        self.last = update
        acc = f"{update.correct / update.done:.1%}" if update.done else "—"
        tokens = update.prompt_tokens + update.completion_tokens
        fields = {"acc": acc, "tokens": f"{tokens:,}"}
        if self.task is None:
            self.task = self.progress.add_task(
                "solving", total=update.total, completed=update.done, **fields
            )
        else:
            self.progress.update(self.task, total=update.total, completed=update.done, **fields)


def _bench(
    benchmark: str,
    *,
    data: Path | None,
    team: Path | None,
    methods: str,
    rounds: int | None,
    min_rounds: int | None,
    limit: int | None,
    concurrency: int,
    run_id: str | None,
    match_compute: bool,
    seed: int,
    db: str | None,
    vote_k: int | None,
    moa_aggregator: str | None,
    config: Path | None,
    allow_unsandboxed: bool = False,
    shard: str | None = None,
    ray: str | None = None,
    actors: int = 2,
) -> None:
    from nsed.benchmarks.methods import parse_methods
    from nsed.benchmarks.runner import Shard

    options = validate_or_config_error(
        BenchOptions,
        {
            "benchmark": benchmark,
            "data": str(data) if data is not None else None,
            "methods": parse_methods(methods),
            "rounds": rounds,
            "min_rounds": min_rounds,
            "limit": limit,
            "concurrency": concurrency,
            "seed": seed,
            "match_compute": match_compute,
            "vote_k": vote_k,
            "moa_aggregator": moa_aggregator,
            "deliberation": _deliberation_overrides(config),
            "allow_unsandboxed": allow_unsandboxed,
        },
        "options",
    )
    if shard is not None and ray is not None:
        raise ConfigError("give --shard or --ray, not both: Ray spreads the whole run itself")
    part = Shard.parse(shard) if shard is not None else None
    store = Store(db)
    console = Console()
    run_id = run_id or new_run_id(benchmark)
    console.print(f"run id: [bold]{escape(run_id)}[/]")
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("{task.fields[tokens]} tok"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    view = _ProgressView(progress)
    if ray is not None:
        from nsed.scale.bench import run_on_ray

        def execute() -> Any:
            return run_on_ray(
                options,
                store=store,
                team=team,
                run_id=run_id,
                progress=view,
                address=ray,
                actors=actors,
            )
    else:

        def execute() -> Any:
            return run_benchmark(
                options, store=store, team=team, run_id=run_id, progress=view, shard=part
            )

    try:
        with progress:
            summary = anyio.run(execute)
    except KeyboardInterrupt:
        done = view.last.done if view.last else 0
        sys.stderr.write(
            f"interrupted: {done} answers of run {run_id} are stored; "
            f"resume with the same command and --run-id {run_id}\n"
        )
        raise typer.Exit(130) from None
    report = build_report(store, run_id)
    console.print(_methods_table(report))
    state = "complete" if summary.complete else f"{summary.done}/{summary.total} answers"
    console.print(
        f"run {escape(run_id)}: {state} in {summary.wall_s:.1f}s "
        f"({summary.resumed} resumed) · details: nsed runs show {escape(run_id)}"
    )


def _bench_command(benchmark: str, doc: str) -> None:
    def command(
        data: DataOpt = None,
        team: TeamOpt = None,
        methods: MethodsOpt = "nsed,single,vote",
        rounds: RoundsOpt = None,
        min_rounds: MinRoundsOpt = None,
        limit: LimitOpt = None,
        concurrency: ConcurrencyOpt = 4,
        run_id: RunIdOpt = None,
        match_compute: MatchOpt = False,
        seed: SeedOpt = 0,
        db: DbOpt = None,
        vote_k: VoteKOpt = None,
        moa_aggregator: AggregatorOpt = None,
        config: ConfigOpt = None,
        allow_unsandboxed: UnsandboxedOpt = False,
        shard: ShardOpt = None,
        ray: RayOpt = None,
        actors: ActorsOpt = 2,
    ) -> None:
        _bench(
            benchmark,
            data=data,
            team=team,
            methods=methods,
            rounds=rounds,
            min_rounds=min_rounds,
            limit=limit,
            concurrency=concurrency,
            run_id=run_id,
            match_compute=match_compute,
            seed=seed,
            db=db,
            vote_k=vote_k,
            moa_aggregator=moa_aggregator,
            config=config,
            allow_unsandboxed=allow_unsandboxed,
            shard=shard,
            ray=ray,
            actors=actors,
        )

    command.__doc__ = doc
    bench_app.command(benchmark)(command)


_bench_command("aime", "AIME-style math: JSONL {id, problem, answer} given with --data.")
_bench_command("lcb", "LiveCodeBench code generation: the official JSONL rows via --data.")
_bench_command("quick", "Arithmetic and word problems: generated from --seed, or JSONL via --data.")


# --- nsed runs ----------------------------------------------------------------------------------


def _ci(ci: tuple[float, float]) -> str:
    return f"{ci[0]:.0%}–{ci[1]:.0%}"


def _methods_table(report: RunReport) -> Table:
    table = Table(
        title=f"{report.run_id} · {report.benchmark}",
        title_justify="left",
        caption="tokens: prompt + completion per problem; s: mean wall seconds per problem",
        caption_justify="left",
    )
    table.add_column("method", no_wrap=True)
    for name in ("n", "acc", "95% CI", "tokens", "cost $", "s", "err"):
        table.add_column(name, justify="right", no_wrap=name != "tokens")
    for name, m in report.methods.items():
        table.add_row(
            escape(name),
            str(m.n),
            f"{m.accuracy:.1%}",
            _ci(m.ci95),
            f"{m.tokens.prompt_per_problem:,.0f} + {m.tokens.completion_per_problem:,.0f}",
            f"{m.cost_usd:.4f}",
            f"{m.latency_s:.1f}",
            str(m.errors),
        )
    return table


def _short_methods(methods: list[str]) -> str:
    singles = [m for m in methods if m.startswith("single:")]
    shown = [m for m in methods if m not in singles]
    if len(singles) > 1:
        shown.insert(min(1, len(shown)), f"single×{len(singles)}")
    else:
        shown += singles
    return ", ".join(shown)


@runs_app.command("list")
def runs_list(db: DbOpt = None) -> None:
    """Every stored benchmark run, newest first."""
    runs = list_runs(Store(db))
    console = Console()
    if not runs:
        console.print("no benchmark runs stored yet; start one with `nsed bench quick`")
        return
    table = Table(title_justify="left")
    table.add_column("run id", no_wrap=True)
    for column in ("created", "benchmark", "methods", "answers", "status"):
        table.add_column(column, no_wrap=column != "methods")
    for run in runs:
        answers = f"{run.answers}/{run.expected}" if run.expected else str(run.answers)
        table.add_row(
            escape(run.run_id),
            run.created_at.strftime("%m-%d %H:%M"),
            run.benchmark,
            escape(_short_methods(run.methods)),
            answers,
            run.status,
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="the run id (see nsed runs list)")],
    db: DbOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Accuracy with 95% intervals, tokens, cost and latency per method; rounds; agents."""
    report = build_report(Store(db), run_id)
    if json_output:
        sys.stdout.write(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
        return
    console = Console()
    console.print(_methods_table(report))
    console.print(f"sandbox: {escape(report.sandbox or 'none (no code was run)')}")
    if report.rounds:
        table = Table(title="deliberation winner per round", title_justify="left")
        for column in ("round", "reached", "correct", "accuracy", "95% CI"):
            table.add_column(column, justify="right")
        for r in report.rounds:
            table.add_row(
                str(r.round), str(r.reached), f"{r.correct}/{r.n}", f"{r.accuracy:.1%}", _ci(r.ci95)
            )
        _, note = fatigue_fit(report)
        table.caption = note
        console.print(table)
    if report.agents:
        table = Table(title="agents in the deliberation", title_justify="left")
        for column in ("agent", "wins", "round wins", "rounds", "mean support", "failures"):
            table.add_column(column, justify="left" if column == "agent" else "right")
        for a in report.agents:
            table.add_row(
                escape(a.name),
                str(a.wins),
                str(a.round_wins),
                str(a.rounds),
                f"{a.mean_support:+.3f}",
                str(a.failures),
            )
        console.print(table)


@runs_app.command("plot")
def runs_plot(
    run_id: Annotated[str, typer.Argument(help="the run id (see nsed runs list)")],
    out: Annotated[Path, typer.Option("--out", help="directory for the PNG files")],
    db: DbOpt = None,
) -> None:
    """Accuracy per round with the fitted U(t), and accuracy against tokens per method."""
    report = build_report(Store(db), run_id)
    for path in plot_run(report, out):
        Console().print(f"wrote {escape(str(path))}")


__all__ = ["bench_app", "runs_app"]
