"""The ``nsed`` command line (typer + rich).

``nsed ask`` runs one deliberation and shows it round by round (or prints the JSON trace with
``--json``). The other command groups live next to the code they drive and are registered here.
Every nsed error ends the program with ``error: <message>`` on one line of stderr and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from nsed import logs
from nsed.council import Council
from nsed.errors import ConfigError, NsedError
from nsed.orchestrator.events import (
    AgentBenched,
    AgentFailed,
    AgentPromoted,
    AgentReleased,
    AgentReweighted,
    AgentSignedOn,
    CallTruncated,
    Event,
    Finished,
    ProposalReceived,
    RoundScored,
    RoundStarted,
)
from nsed.results import CallRecord, Deliberation, RoundRecord

app = typer.Typer(
    name="nsed",
    help="N-Way Self-Evaluating Deliberation: several LLMs deliberate into one answer.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


# --- Command groups ------------------------------------------------------------------------
# Each group's CLI lives next to the code it drives; this list says who owns which command.
# The imports run when the app is assembled (main), so a group whose optional extra is missing
# becomes a command that says which extra to install, and ``import nsed.cli`` stays light.


def _bench_app() -> typer.Typer:
    from nsed.benchmarks.cli import bench_app

    return bench_app


def _runs_app() -> typer.Typer:
    from nsed.benchmarks.cli import runs_app

    return runs_app


def _models_app() -> typer.Typer:
    from nsed.broker.cli import models_app

    return models_app


def _broker_app() -> typer.Typer:
    from nsed.broker.cli import broker_app

    return broker_app


def _simulate_app() -> typer.Typer:
    from nsed.simulation.cli import simulate_app

    return simulate_app


def _db_app() -> typer.Typer:
    from nsed.migrations.cli import db_app

    return db_app


def _serve_app() -> typer.Typer:
    from nsed.server.cli import serve_app

    return serve_app


def _launch_app() -> typer.Typer:
    from nsed.launch.cli import launch_app

    return launch_app


# (loader, group name or None to merge its commands into the root app, command names, extra)
_GROUPS = (
    (_bench_app, "bench", ("bench",), "bench"),
    (_runs_app, "runs", ("runs",), "bench"),
    (_models_app, "models", ("models",), "dev"),
    (_broker_app, "broker", ("broker",), "dev"),
    (_simulate_app, None, ("simulate",), "serve"),
    (_serve_app, None, ("serve", "ui"), "serve"),
    (_launch_app, None, ("up", "down"), "vllm"),
    (_db_app, "db", ("db",), "postgres"),
)


def _missing_extra_command(name: str, extra: str, missing: str) -> None:
    """Register ``name`` as a command that says which extra to install."""

    def command() -> None:
        raise ConfigError(
            f"'nsed {name}' needs the optional package {missing!r}: "
            f'pip install "nsed[{extra}]"'
        )

    app.command(
        name=name,
        help=f"(not installed: needs the optional extra {extra!r})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(command)


def _register_subcommands() -> None:
    """Attach the command groups of :data:`_GROUPS`.

    A group whose optional dependencies are not installed still appears, as a command that
    tells the user which extra to install.
    """
    for load, group, names, extra in _GROUPS:
        try:
            sub = load()
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.startswith("nsed"):
                raise
            for name in names:
                _missing_extra_command(name, extra, exc.name)
            continue
        if group is None:
            app.registered_commands.extend(sub.registered_commands)
        else:
            app.add_typer(sub, name=group)


def _round_table(record: RoundRecord) -> Table:
    table = Table(title=f"Round {record.index}", title_justify="left", expand=False)
    table.add_column("agent")
    table.add_column("final answer", max_width=40, overflow="fold")
    table.add_column("support S", justify="right")
    table.add_column("mean score", justify="right")
    table.add_column("variance", justify="right")
    for proposal in record.proposals:
        name = proposal.agent + (" ★" if proposal.agent == record.winner else "")
        table.add_row(
            escape(name),
            escape(proposal.final or "—"),
            f"{record.support.get(proposal.agent, 0.0):+.3f}",
            f"{record.mean_score.get(proposal.agent, 0.0):+.1f}",
            f"{record.variance.get(proposal.agent, 0.0):.1f}",
        )
    dropped = sum(1 for r in record.reviews if r.dropped_reason)
    cut = sum(1 for c in record.calls if c.truncated)
    used = [c.budget_used for c in record.calls if c.budget_used is not None]
    table.caption = (
        f"winner {record.winner} · conviction {record.conviction:.2f} · "
        f"{len(record.reviews) - dropped} reviews counted, {dropped} dropped · "
        f"{record.prompt_tokens + record.completion_tokens} tokens"
        + (f" (largest call {max(used):.0%} of its max_tokens)" if used else "")
        + (f" · [yellow]{cut} call(s) cut at max_tokens[/]" if cut else "")
        + f" · {record.wall_s:.1f}s"
    )
    return table


def _tokens(call: CallRecord | None, completion_tokens: int) -> str:
    """``812/1024 tokens`` (and the thinking's share) when the cap is known."""
    if call is None or call.max_tokens is None:
        return f"{completion_tokens} tokens"
    thinking = f", {call.reasoning_tokens} thinking" if call.reasoning_tokens else ""
    return f"{call.completion_tokens}/{call.max_tokens} tokens{thinking}"


def _show_event(console: Console, event: Event) -> None:
    if isinstance(event, RoundStarted):
        console.rule(f"Round {event.round} · {len(event.agents)} agents")
    elif isinstance(event, ProposalReceived):
        p = event.proposal
        console.print(
            f"[bold]{escape(p.agent)}[/] proposed: final [cyan]{escape(p.final or '—')}[/]"
            f" ({_tokens(event.call, p.completion_tokens)}, {p.latency_s:.1f}s)"
        )
    elif isinstance(event, CallTruncated):
        cap = f" of {event.max_tokens}" if event.max_tokens else ""
        console.print(
            f"[yellow]{escape(event.agent)}'s {event.phase} was cut at max_tokens[/] "
            f"({event.completion_tokens}{cap} tokens): raise max_tokens or "
            "reasoning_max_tokens"
        )
    elif isinstance(event, AgentFailed):
        console.print(
            f"[red]{escape(event.agent)} failed to {event.phase}:[/] {escape(event.error)}"
        )
    elif isinstance(event, RoundScored):
        console.print(_round_table(event.record))
    elif isinstance(event, AgentBenched):
        console.print(f"[yellow]benched {escape(event.agent)}[/]: {escape(event.reason)}")
    elif isinstance(event, AgentSignedOn):
        replaces = f" in place of {escape(event.replaces)}" if event.replaces else ""
        console.print(f"[green]signed on {escape(event.agent)}[/]{replaces} (probation)")
    elif isinstance(event, AgentPromoted | AgentReleased):
        verb = "promoted" if isinstance(event, AgentPromoted) else "released"
        console.print(f"{verb} {escape(event.agent)}: {escape(event.reason)}")
    elif isinstance(event, AgentReweighted):
        console.print(
            f"{escape(event.agent)} votes at weight {event.weight:g}: {escape(event.reason)}"
        )


def _show_result(console: Console, result: Deliberation) -> None:
    body = escape(result.answer.strip()[:3000] or "(empty)")
    console.print(
        Panel(
            body,
            title=f"answer · final: {escape(result.final or '—')}",
            subtitle=(
                f"winner {result.winner} · stopped: {result.stopped_because} · "
                f"{len(result.rounds)} rounds · {result.usage.total_tokens} tokens · "
                f"${result.usage.cost_usd:.4f} · {result.wall_s:.1f}s"
            ),
        )
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the task to deliberate on")],
    team: Annotated[
        Path | None,
        typer.Option(
            help="team TOML ([[models]] entries); default: NSED_TEAM, "
            "OPENAI_BASE_URL or the local model"
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="catalog TOML: the broker picks the team per question (instead of --team)"
        ),
    ] = None,
    vram_gb: Annotated[
        float | None,
        typer.Option(help="with --catalog: VRAM for self-hosted models (vram_gb > 0)"),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="maximum number of rounds")] = None,
    min_rounds: Annotated[int | None, typer.Option(help="no early stop before this round")] = None,
    kind: Annotated[
        str, typer.Option(help="auto (default: compare boxed/code/short answers), math, code, text")
    ] = "auto",
    protocol: Annotated[
        str | None, typer.Option(help="protocol preset: v2 (default) or v1")
    ] = None,
    qv_mode: Annotated[
        str | None, typer.Option(help="budget_capped (v2), budget_signed (v1) or sqrt_raw")
    ] = None,
    budget_usd: Annotated[
        float | None,
        typer.Option(help="$ per question: stop when spent; with --catalog, the team's budget"),
    ] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="stop after this many tokens")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for label shuffling")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print the Deliberation as JSON and nothing else")
    ] = False,
    store: Annotated[
        bool,
        typer.Option(help="save the trace in the nsed database and print its /ui/runs/ID page"),
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            envvar="NSED_SERVER_URL",
            help="URL of a running `nsed ui` reading the same database: implies --store",
        ),
    ] = None,
) -> None:
    """Deliberate on QUESTION with a team of models."""
    overrides = {
        "max_rounds": rounds,
        "min_rounds": min_rounds,
        "kind": kind,
        "protocol": protocol,
        "qv_mode": qv_mode,
        "budget_usd": budget_usd,
        "budget_tokens": budget_tokens,
        "seed": seed,
    }
    if rounds is not None and min_rounds is None:
        overrides["min_rounds"] = min(rounds, 2)
    if min_rounds is not None and rounds is None:
        overrides["max_rounds"] = max(min_rounds, 4)
    council = Council(team, catalog=catalog, budget_usd=budget_usd, vram_gb=vram_gb)
    checker = _statement_checker(question, kind)
    if json_output:
        result = anyio.run(lambda: council.run(question, checker=checker, **overrides))
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        _keep(result, store, server, err_console)
        return
    console = Console()

    async def watch() -> Deliberation | None:
        final = None
        async for event in council.stream(question, checker=checker, **overrides):
            _show_event(console, event)
            if isinstance(event, Finished):
                final = event.deliberation
        return final

    result = anyio.run(watch)
    if result is not None:
        _show_result(console, result)
        _keep(result, store, server, console)


def _keep(result: Deliberation, store: bool, server: str | None, console: Console) -> None:
    """With ``--store`` or a server URL: save the trace and print the page that shows it."""
    if not store and not server:
        return
    from nsed.links import DEFAULT_SERVER_URL, run_url
    from nsed.store import Store

    database = Store()
    try:
        database.save_deliberation(result)
    finally:
        database.dispose()
    url = run_url(server or DEFAULT_SERVER_URL, result.id)
    hint = "" if server else " (start the page with `nsed ui`)"
    console.print(f"run page: {url}{hint}", highlight=False, soft_wrap=True)


def _statement_checker(question: str, kind: str) -> Any:
    """Execution feedback for ``nsed ask``: the sample tests written in a code task's statement
    (None for other kinds, without samples, or without the bench extra's sandbox)."""
    if kind not in ("code", "auto"):
        return None
    try:
        from nsed.benchmarks.feedback import PublicTestChecker
    except ModuleNotFoundError:  # pragma: no cover - the sandbox ships with the core package
        return None
    return PublicTestChecker.from_statement(question)


VerboseOption = Annotated[
    int,
    typer.Option(
        "-v", "--verbose", count=True, help="show more of nsed's log on stderr (-v info, -vv debug)"
    ),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        help=f"level of nsed's log on stderr: {', '.join(logs.LEVELS)} (default warning)",
    ),
]


def _apply_logging_options(verbose: int, log_level: str | None) -> None:
    """``--log-level`` names the level; each ``-v`` lowers it one step (WARNING → INFO → DEBUG).

    They may be given before the command name, after it, or both: a later ``-v`` never raises
    a level an earlier option lowered.
    """
    if log_level is not None:
        logs.configure_logging(logs.level_for(log_level=log_level), explicit=True)
    elif verbose:
        level = min(logs.level_for(verbose=verbose), logs.current_level())
        logs.configure_logging(level, explicit=True)


def with_logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as a command that also takes ``-v/--verbose`` and ``--log-level``.

    Applied to every command by ``add_logging_options``, so no command needs to declare them
    and none can forget them.
    """
    signature = inspect.signature(func, eval_str=True)
    if "verbose" in signature.parameters:
        return func
    extra = [
        inspect.Parameter(
            "verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=VerboseOption
        ),
        inspect.Parameter(
            "log_level", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=LogLevelOption
        ),
    ]

    @functools.wraps(func)
    def command(*args: Any, verbose: int = 0, log_level: str | None = None, **kwargs: Any) -> Any:
        _apply_logging_options(verbose, log_level)
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    command.__annotations__ = {
        **get_type_hints(func, include_extras=True),
        "verbose": VerboseOption,
        "log_level": LogLevelOption,
    }
    return command


def add_logging_options(typer_app: typer.Typer) -> None:
    """Give the app's callback and every command below it the logging options."""
    if typer_app.registered_callback is not None and typer_app.registered_callback.callback:
        info = typer_app.registered_callback
        info.callback = with_logging_options(info.callback)  # type: ignore[arg-type]
    for command_info in typer_app.registered_commands:
        if command_info.callback is not None:
            command_info.callback = with_logging_options(command_info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            add_logging_options(group.typer_instance)


def _show_version(value: bool) -> None:
    if value:
        from nsed import __version__

        typer.echo(f"nsed {__version__}")
        raise typer.Exit()


_built = False


def build_app() -> typer.Typer:
    """The whole ``nsed`` app: every group registered, logging options on every command."""
    global _built
    if not _built:
        _register_subcommands()
        add_logging_options(app)
        _built = True
    return app


def main() -> None:
    """Console entry point: run the app, turning nsed errors into one line on stderr."""
    logs.configure_logging()  # warnings reach stderr unless a command lowers the level
    build_app()
    try:
        app()  # standalone mode: usage errors are reported by typer itself (exit 2)
    except NsedError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"error: {message}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """N-Way Self-Evaluating Deliberation: several LLMs deliberate into one answer."""


if __name__ == "__main__":
    main()
