"""Stable addresses of the web page: ``/ui/runs/{id}`` for a deliberation, ``/ui/bench/{id}``.

Why a ground module: three front ends print or serve these paths (the server's pages and its
``x-nsed-run-url`` header, ``nsed ask`` after a stored run, ``nsed ui``), and none of them may
import another, so the one place that spells the URL sits below all of them.
"""

from __future__ import annotations

from urllib.parse import quote

UI_ROOT = "/ui/"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def run_path(run_id: str) -> str:
    """The page of one deliberation, relative to the server's root."""
    return f"{UI_ROOT}runs/{quote(run_id, safe='')}"


def bench_path(run_id: str) -> str:
    """The page of one benchmark run, relative to the server's root."""
    return f"{UI_ROOT}bench/{quote(run_id, safe='')}"


def server_root(url: str) -> str:
    """``http://host:port`` from what a user writes: with a trailing ``/``, ``/v1`` or ``/ui``."""
    root = url.strip().rstrip("/")
    for suffix in ("/v1", "/ui"):
        root = root.removesuffix(suffix)
    return root.rstrip("/")


def run_url(server: str, run_id: str) -> str:
    """The full address of a deliberation's page on the server at ``server``."""
    return server_root(server) + run_path(run_id)


__all__ = ["DEFAULT_SERVER_URL", "UI_ROOT", "bench_path", "run_path", "run_url", "server_root"]
