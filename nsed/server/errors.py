"""Errors as the OpenAI API shapes them: ``{"error": {message, type, param, code}}``.

One place maps nsed's typed exceptions to HTTP statuses, so every route and the streaming
response answer the same failure with the same status and code.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse

from nsed.errors import (
    BackendError,
    BudgetExceeded,
    ConfigError,
    InfeasibleTeam,
    InvalidOutput,
    NsedError,
    QuorumLost,
)

log = logging.getLogger("nsed.server")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answered in the OpenAI error JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers={**self.headers, **(headers or {})})


def api_error_from(exc: BaseException, timeout_s: float) -> tuple[ApiError, str]:
    """(the HTTP error, the metrics status) for an exception raised by a deliberation."""
    if isinstance(exc, TimeoutError):
        return ApiError(
            504,
            f"the deliberation did not finish within {timeout_s:g} s; ask for fewer rounds "
            "(nsed.rounds) or raise the server's --timeout",
            code="timeout",
        ), "timeout"
    if isinstance(exc, BackendError):
        where = f" ({exc.endpoint})" if exc.endpoint else ""
        return ApiError(502, f"model backend failed{where}: {exc}", code="backend_error"), (
            "backend_error"
        )
    if isinstance(exc, QuorumLost):
        return ApiError(502, f"the council lost its quorum: {exc}", code="quorum_lost"), (
            "backend_error"
        )
    if isinstance(exc, InfeasibleTeam):
        return ApiError(502, str(exc), code="infeasible_team"), "backend_error"
    if isinstance(exc, BudgetExceeded):
        return ApiError(400, str(exc), code="budget_exceeded", param="nsed"), "bad_request"
    if isinstance(exc, InvalidOutput):
        return ApiError(400, str(exc), code="invalid_output", param=exc.param), "bad_request"
    if isinstance(exc, ConfigError):
        param = getattr(exc, "param", None)
        return ApiError(400, str(exc), code="invalid_config", param=param), "bad_request"
    if isinstance(exc, NsedError):
        return ApiError(500, f"{type(exc).__name__}: {exc}", code="nsed_error"), "error"
    log.error("unexpected error in a deliberation", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error"), "error"
