"""The team file ``nsed up`` writes: the input's models, launched ones pointing at their servers.

The input is a team or a catalog TOML. The output is a team TOML for ``nsed ask/bench/serve
--team``: every model as the user wrote it (their own keys and values, not a re-serialised
spec), with ``base_url`` (and ``api_key_env`` when the server requires a key) filled in for the
launched ones, and ``structured = "json_schema"`` for a reasoning model launched with its
parser (the grammar then applies to the answer only). From a catalog, the catalog-only fields
are dropped; the catalog itself is written too, endpoints filled in, for ``--catalog``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nsed.broker.catalog import Catalog, CatalogEntry
from nsed.config import ModelSpec, TeamSpec, load_toml
from nsed.errors import ConfigError
from nsed.launch.plan import LaunchPlan

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CATALOG_ONLY = set(CatalogEntry.model_fields) - set(ModelSpec.model_fields)


class LaunchInput:
    """A team or catalog TOML as written (``raw``) and as validated (``models``)."""

    def __init__(self, path: Path, *, is_catalog: bool) -> None:
        self.path = path
        self.is_catalog = is_catalog
        self.raw = load_toml(path)
        source: TeamSpec | Catalog = (
            Catalog.model_validate_toml(self.raw, source=str(path))
            if is_catalog
            else TeamSpec.model_validate_toml(self.raw, source=str(path))
        )
        self.models: list[ModelSpec] = list(source.models)


def _filled(raw: dict[str, Any], plan: LaunchPlan, *, team: bool) -> dict[str, Any]:
    by_name = {name: p for p in plan.models for name in p.serves}
    models = []
    for entry in raw.get("models", []):
        entry = dict(entry)
        planned = by_name.get(entry.get("name", ""))
        if planned is not None:
            entry["base_url"] = planned.base_url
            entry["model"] = planned.served_model_name
            if planned.api_key_env:
                entry["api_key_env"] = planned.api_key_env
            if planned.reasoning_parser and entry.get("structured", "auto") == "auto":
                entry["structured"] = "json_schema"
        if team:
            entry = {k: v for k, v in entry.items() if k not in _CATALOG_ONLY}
        models.append(entry)
    out = {k: v for k, v in raw.items() if k not in ("models", "roles")}
    out["models"] = models
    if not team and raw.get("roles"):
        out["roles"] = raw["roles"]
    return out


def write_outputs(source: LaunchInput, plan: LaunchPlan, team_path: Path) -> list[Path]:
    """Write the team TOML (and, from a catalog, the catalog) with the endpoints filled in."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = f"# Written by nsed up at {stamp} from {source.path}; nsed down stops the servers."
    written = [team_path]
    _write(team_path, header, _filled(source.raw, plan, team=True))
    if source.is_catalog:
        catalog_path = team_path.with_name(team_path.stem + ".catalog.toml")
        _write(catalog_path, header, _filled(source.raw, plan, team=False))
        written.append(catalog_path)
    return written


def _write(path: Path, header: str, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(header + "\n\n" + dumps_toml(data), encoding="utf-8")
        tmp.replace(path)  # readers never see half a file
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, datetime):
        return value.isoformat()
    raise ConfigError(f"cannot write a {type(value).__name__} value to TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML for a dict of scalars, inline tables and arrays of tables (what team files hold)."""
    lines = []
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, entries in tables:
        for entry in entries:
            lines += ["", f"[[{_key(key)}]]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["LaunchInput", "dumps_toml", "write_outputs"]
