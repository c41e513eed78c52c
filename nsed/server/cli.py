"""``nsed serve`` and ``nsed ui``: serve councils as OpenAI-compatible models and the web page
(both registered in :mod:`nsed.cli`).

Which councils are served:

* ``--team team.toml`` (or ``--catalog catalog.toml``) is the default council, ``nsed/council``;
* ``--council NAME=team.toml`` (repeatable) adds ``nsed/NAME``;
* with neither ``--team``, ``--catalog`` nor ``--council``, the default council is
  ``resolve_team()``: ``NSED_TEAM``, ``OPENAI_BASE_URL`` or the embedded local model.

With ``--catalog`` the council is brokered: for every question the broker picks the team from
the catalog for the request's kind (``"nsed": {"kind": ...}``) with its default policy, and keeps
its telemetry in the nsed database (the one ``--store`` names, else the default).
API keys come from ``NSED_SERVER_API_KEYS`` (comma-separated) and/or ``--api-keys-file``;
admin keys (which may also read every key's traces) from ``NSED_SERVER_ADMIN_KEYS`` and/or
``--admin-keys-file``; they are never printed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nsed import logs
from nsed.broker.catalog import Catalog
from nsed.config import DeliberationConfig, TeamSpec, validate_or_config_error
from nsed.council import resolve_team
from nsed.errors import ConfigError
from nsed.server import DEFAULT_COUNCIL, CouncilSpec, ServerSettings, load_api_keys, run_server
from nsed.server.settings import ADMIN_KEYS_ENV

serve_app = typer.Typer(add_completion=False)


def parse_council_option(value: str) -> tuple[str, Path]:
    """``NAME=path/to/team.toml`` -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--council {value!r}: write it as NAME=path/to/team.toml")
    return name.strip(), Path(path.strip())


def build_settings(
    *,
    team: Path | None = None,
    catalog: Path | None = None,
    councils: list[str] | None = None,
    config: Path | None = None,
    api_keys_file: Path | None = None,
    admin_keys_file: Path | None = None,
    **limits: object,
) -> ServerSettings:
    """ServerSettings from the command-line values (also usable from Python)."""
    if team is not None and catalog is not None:
        raise ConfigError("give either --team or --catalog, not both")
    base = DeliberationConfig.from_toml(config) if config else DeliberationConfig()
    specs: dict[str, CouncilSpec] = {}
    for option in councils or []:
        name, path = parse_council_option(option)
        if name in specs:
            raise ConfigError(f"--council {name} is given twice; use one name per council")
        specs[name] = CouncilSpec(team=TeamSpec.from_toml(path), config=base)
    default: CouncilSpec | None = None
    if team is not None:
        default = CouncilSpec(team=TeamSpec.from_toml(team), config=base)
    elif catalog is not None:
        default = CouncilSpec(catalog=Catalog.from_toml(catalog), config=base)
    elif not specs:
        default = CouncilSpec(team=resolve_team(), config=base)
    if default is not None:
        if DEFAULT_COUNCIL in specs:
            raise ConfigError(
                f"--council {DEFAULT_COUNCIL}=... clashes with --team/--catalog; "
                "name the extra council differently"
            )
        specs = {DEFAULT_COUNCIL: default, **specs}
    values = {k: v for k, v in limits.items() if v is not None}
    data = {
        "councils": specs,
        "api_keys": load_api_keys(api_keys_file),
        "admin_keys": load_api_keys(admin_keys_file, variable=ADMIN_KEYS_ENV),
        **values,
    }
    return validate_or_config_error(ServerSettings, data, "server settings")


@serve_app.command()
def serve(
    team: Annotated[
        Path | None, typer.Option(help="team TOML for the default council nsed/council")
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="catalog TOML: the broker picks the default council")
    ] = None,
    council: Annotated[
        list[str] | None,
        typer.Option(help="extra council NAME=team.toml, served as nsed/NAME (repeatable)"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="deliberation config TOML for every council")
    ] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="file with one bearer key per line (also env)")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="deliberations running at once (default 8)")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="requests waiting beyond that; more get 429 (default 32)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds per request, queueing included (default 600)")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="largest request body accepted (default 1 MB)")
    ] = None,
    admin_keys_file: Annotated[
        Path | None, typer.Option(help="file of admin keys, which read every trace (also env)")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="open connections at once; more get 503 (default 512)")
    ] = None,
    max_rounds: Annotated[
        int | None, typer.Option(help="most rounds a request may ask for (default 10)")
    ] = None,
    store: Annotated[
        bool, typer.Option(help="also save traces to the nsed database (NSED_DATABASE_URL)")
    ] = False,
    stream_reasoning: Annotated[
        bool,
        typer.Option(
            help="stream progress as delta.reasoning_content (chat UIs' thinking pane); "
            'a request can override it with "nsed": {"stream_reasoning": ...}'
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS|auto",
            help="serve behind Ray Serve on the cluster (--ray auto or --ray HEAD:PORT); "
            "implies --store; needs nsed[ray]",
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas (with --ray)")] = 2,
) -> None:
    """Serve councils as OpenAI-compatible models at http://HOST:PORT/v1.

    nsed's log and uvicorn's share one stream on stderr, at INFO unless -v/--log-level say
    otherwise.
    """
    logs.default_level(logging.INFO)
    store_url = None
    if store or ray is not None:
        from nsed.store import default_database_url

        store_url = default_database_url()
    settings = build_settings(
        team=team,
        catalog=catalog,
        councils=council,
        config=config,
        api_keys_file=api_keys_file,
        admin_keys_file=admin_keys_file,
        max_connections=max_connections,
        max_rounds=max_rounds,
        host=host,
        port=port,
        max_concurrent=max_concurrent,
        max_queue=max_queue,
        request_timeout_s=timeout,
        max_body_bytes=max_body_bytes,
        store_url=store_url,
        stream_reasoning=stream_reasoning or None,
    )
    console = Console(stderr=True)
    keys = len(settings.api_keys) + len(settings.admin_keys)
    auth = f"{keys} key(s), {len(settings.admin_keys)} admin" if keys else "off"
    where = f" on Ray ({replicas} replicas)" if ray is not None else ""
    console.print(
        f"nsed: serving {', '.join(settings.model_ids())} at http://{host}:{port}/v1{where} "
        f"(auth {auth}, {settings.max_concurrent} concurrent, queue {settings.max_queue})"
    )
    if ray is not None:
        from nsed.scale.serve import serve_on_ray

        serve_on_ray(settings, address=ray, replicas=replicas)
        return
    run_server(settings)


@serve_app.command()
def ui(
    team: Annotated[
        Path | None, typer.Option(help="team TOML (default: NSED_TEAM, OPENAI_BASE_URL, local)")
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="catalog TOML: the broker picks the team per question")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="deliberation config TOML for the council")
    ] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8000,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="file with one bearer key per line (also env)")
    ] = None,
    store: Annotated[
        bool,
        typer.Option(help="keep runs in the nsed database and list its stored runs"),
    ] = True,
) -> None:
    """Serve the web page (and the API) for one council; prints the page's URL, opens nothing.

    The page asks questions, streams the deliberation round by round and opens stored runs
    (/ui/runs/ID). Stop it with Ctrl-C.
    """
    from nsed.links import UI_ROOT
    from nsed.server.app import create_app
    from nsed.serving import serve_in_thread
    from nsed.store import default_database_url

    logs.default_level(logging.WARNING)
    settings = build_settings(
        team=team,
        catalog=catalog,
        config=config,
        api_keys_file=api_keys_file,
        host=host,
        port=port,
        store_url=default_database_url() if store else None,
    )
    try:
        server = serve_in_thread(
            create_app(settings),
            host=host,
            port=port,
            name="nsed-ui",
            timeout_s=60,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port"
        ) from None
    auth = "; enter one of its API keys in the page" if settings.api_keys else ""
    kept = "runs are kept in the nsed database" if store else "runs are kept in memory only"
    Console(stderr=True).print(f"nsed: serving {settings.model_ids()[0]} ({kept}{auth})")
    typer.echo(f"http://{host}:{server.port}{UI_ROOT}")
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


__all__ = ["build_settings", "parse_council_option", "serve_app", "ui"]
