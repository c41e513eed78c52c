"""The web page under ``/ui/``: static files shipped in the package, no build step.

Every page address (``/ui/``, ``/ui/runs``, ``/ui/runs/{id}``, ``/ui/bench/{id}``) answers the
same ``index.html``; the script reads the address and fetches the JSON it needs from ``/v1``
with the key the user typed in (kept in the tab's sessionStorage, never in a file here). The
files themselves hold no secret and no data, so they are served without a key, which a browser
could not send when it follows a link; everything they show comes from ``/v1``, behind the
server's bearer auth.

Model text is untrusted: the script writes it with ``textContent`` only, and the
Content-Security-Policy below forbids inline scripts, so even a bug there cannot run a
``<script>`` from a proposal.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nsed.links import UI_ROOT
from nsed.server.errors import ApiError

UI_DIR = Path(__file__).with_name("ui")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@cache
def _assets() -> dict[str, Path]:
    """The files the page may load, by name: only these are ever served (no path walking)."""
    return {p.name: p for p in UI_DIR.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}


def _file_response(path: Path) -> Response:
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix], headers=HEADERS)


async def _page(request: Request) -> Response:
    if request.path_params.get("page", "").startswith("static/"):
        raise ApiError(404, f"no file {request.url.path!r} in the web page", code="not_found")
    return _file_response(_assets()["index.html"])


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    path = _assets().get(name)
    if path is None or name == "index.html":
        raise ApiError(404, f"no file {name!r} in the web page", code="not_found")
    return _file_response(path)


async def _to_page(request: Request) -> Response:
    return RedirectResponse(UI_ROOT, status_code=307)


UI_ROUTES = [
    Route("/", _to_page, methods=["GET"]),
    Route(UI_ROOT.rstrip("/"), _to_page, methods=["GET"]),
    Route(f"{UI_ROOT}static/{{name}}", _asset, methods=["GET"]),
    Route(UI_ROOT, _page, methods=["GET"]),
    Route(f"{UI_ROOT}{{page:path}}", _page, methods=["GET"]),
]

__all__ = ["CONTENT_SECURITY_POLICY", "UI_DIR", "UI_ROUTES"]
