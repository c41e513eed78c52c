"""The sandbox runner: the program's interpreter, with LiveCodeBench's import prelude.

Copied into every box by :mod:`nsed.benchmarks.sandbox` and started by the launcher as
``python -I -S runner.py [--socket-guard] MODE SOLUTION [FUNC_NAME SENTINEL]``. It imports
nothing but the standard library.

* ``script``: run SOLUTION as ``__main__`` on the test's stdin, with the prelude's names
  (``from collections import *``, ``typing``, ``sys.setrecursionlimit(50000)``, ...) in scope,
  as the official harness does;
* ``call``: import SOLUTION as a module, call ``Solution().FUNC_NAME(*args)`` with one JSON
  argument per stdin line, keep the solution's own prints out of the result, and print the
  SENTINEL followed by ``{"ok": true, "value": "<json>"}`` or ``{"ok": false, "error": ...}``.

``--socket-guard`` (plans without a network namespace) makes every socket constructor raise
PermissionError, a Python-level guard a determined program can get around.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # no typing import here: the prelude decides what the program sees
if TYPE_CHECKING:
    from typing import Any, NoReturn

PRELUDE = """
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics
import itertools, functools, operator, io, sys, json
sys.setrecursionlimit(50000)
"""


def socket_guard() -> None:
    """Make creating any socket raise PermissionError."""
    import _socket
    import socket

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise PermissionError("network access is disabled in the nsed sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            refuse()

    socket.socket = NoSocket  # type: ignore[misc]
    _socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = refuse
    socket.socketpair = refuse
    socket.fromfd = refuse


def prelude_scope() -> dict[str, Any]:
    """The globals a solution starts with: everything the prelude imports."""
    scope: dict[str, Any] = {}
    exec(PRELUDE, scope)
    scope.pop("__builtins__", None)
    return scope


def run_script(solution: str) -> None:
    """Run the solution file as ``__main__``; its exit status is the process's."""
    import runpy

    scope = prelude_scope()
    sys.argv = [solution]
    runpy.run_path(solution, init_globals=scope, run_name="__main__")
    raise SystemExit(0)


def call_solution(solution: str, func_name: str, raw_args: str) -> dict[str, Any]:
    """``Solution().<func_name>(*args)``, one JSON argument per line of ``raw_args``.

    Returns the payload the harness prints: the JSON of the return value (tuples become
    lists, as in LiveCodeBench) or the error. What the solution prints is discarded.
    """
    import io
    import json
    import runpy
    import traceback

    scope = prelude_scope()
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()
    try:
        call_args = [json.loads(line) for line in raw_args.split("\n") if line.strip()]
        module = runpy.run_path(solution, init_globals=scope, run_name="solution")
        cls = module.get("Solution")
        if cls is None:
            raise NameError("the code defines no class Solution")
        method = getattr(cls(), func_name, None)
        if method is None:
            raise AttributeError(f"class Solution has no method {func_name!r}")
        value = method(*call_args)
        if isinstance(value, tuple):
            value = list(value)
        try:
            payload: dict[str, Any] = {"ok": True, "value": json.dumps(value)}
        except (TypeError, ValueError) as exc:
            payload = {"ok": False, "error": f"return value is not JSON-serialisable: {exc}"}
    except BaseException as exc:
        traceback.print_exc()
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        sys.stdout = real_stdout
    return payload


def main(argv: list[str]) -> None:
    args = argv[1:]
    if args and args[0] == "--socket-guard":
        socket_guard()
        args = args[1:]
    mode, solution = args[0], args[1]
    if mode == "script":
        run_script(solution)
    import json

    func_name, sentinel = args[2], args[3]
    payload = call_solution(solution, func_name, sys.stdin.read())
    sys.stdout.write("\n" + sentinel + json.dumps(payload) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
