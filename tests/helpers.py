"""Helpers shared by several test files: the nsed CLI as a child process, catalog dicts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def nsed_command(*args: str) -> list[str]:
    """The argv that runs ``nsed ARGS`` with this interpreter (what a user's ``nsed`` runs)."""
    return [sys.executable, "-m", "nsed.cli", *args]


def nsed_env(
    home: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    columns: int | None = None,
) -> dict[str, str]:
    """The child's environment: ``env`` (default: this process's), with ``NSED_HOME=home``
    (and no ``NSED_DATABASE_URL``, so the database lives under it) and ``COLUMNS``."""
    out = dict(os.environ if env is None else env)
    if home is not None:
        out["NSED_HOME"] = str(home)
        out.pop("NSED_DATABASE_URL", None)
    if columns is not None:
        out["COLUMNS"] = str(columns)
    return out


def run_nsed(
    *args: str,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    columns: int | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``nsed ARGS`` in a child process and capture its text output (see nsed_env)."""
    return subprocess.run(
        nsed_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=nsed_env(home, env=env, columns=columns),
    )


def catalog_dict(url: str, priors: dict[str, float]) -> dict[str, Any]:
    """A catalog of models all served at ``url``, each its own family, with a math prior."""
    return {
        "models": [
            {
                "name": name,
                "base_url": url,
                "model": name,
                "max_retries": 0,
                "family": name,
                "capabilities": ["math", "text"],
                "prior_skill": {"math": prior},
            }
            for name, prior in priors.items()
        ]
    }
