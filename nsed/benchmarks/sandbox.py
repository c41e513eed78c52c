"""The only place where model-written code runs: one throw-away, contained process per test.

Why a process and not ``exec``: generated code loops, forks, allocates, writes files and opens
sockets, and a benchmark run must survive all of it and go on. Each call builds a fresh box
directory, starts a small launcher (``python -I -S``, never the nsed interpreter state) in a new
session, and the launcher starts the model's program. The box, the processes and any namespace
are gone when the call returns.

Containment, chosen once per process by running a probe program under each plan in turn:

``ns+uid`` (root with util-linux ``unshare``)
    ``unshare --net --mount --pid --fork --kill-child --mount-proc``: a new network namespace
    (only a downed loopback: no socket reaches anything), a PID namespace whose init is the
    launcher (when it exits the kernel kills every process left in it, also ones that called
    ``setsid``), and a private mount namespace in which every mount is remounted read-only and
    ``nosuid``, a size-capped tmpfs is the working directory (HOME and TMPDIR point at it) and
    ``/dev/shm`` is a fresh small tmpfs. The program runs as a uid of its own (one per box,
    from ``BOX_UID_BASE``, held by a lock file while the box lives), so RLIMIT_NPROC counts
    this box's processes only and boxes side by side cannot signal or starve each other; it
    has no capabilities and ``no_new_privs``, so ``/root`` and other private directories stay
    unreadable and it cannot remount anything. Directories that would hide the interpreter
    from that uid (e.g. a pyenv under ``/root``) are covered with an empty tmpfs and only the
    interpreter's prefix is bound back in.
``userns`` (any other user with ``unshare`` and user namespaces)
    The same namespaces inside a user namespace the launcher is root of. The program itself
    runs in a nested user namespace as uid ``INNER_UID`` (not 0) with every capability
    dropped, so it owns nothing it could remount (a namespace it makes for itself copies the
    mounts locked read-only), and that namespace makes its process count its own. The user's
    home directory is covered with an empty tmpfs (``~/.ssh``, dot files), the interpreter
    bound back in when it lives there.

Both are *isolated*. Without them (no ``unshare``, namespaces disabled) the fallbacks below
leave the program able to read what nsed's user reads and to write outside its directory, so
:func:`run_python` and :func:`call_function` refuse to run with them
(:class:`~nsed.errors.SandboxUnavailable`, saying what to install or enable) unless the caller
passes ``allow_unsandboxed=True`` (``nsed bench --allow-unsandboxed``); then it logs a warning.

``plain+uid`` / ``plain``
    No namespaces: the launcher tries ``unshare(CLONE_NEWNET)`` itself and otherwise installs a
    Python-level socket guard (bypassable via ctypes or a subprocess); the working directory is
    a real temporary directory and nothing stops writes elsewhere. Root drops to the box's uid.
    The launcher is a child subreaper, so orphans (also ones that called ``setsid``) stay its
    children; it kills them when the program ends, and nsed kills them via ``/proc`` before
    the launcher on a timeout. Only a fork racing those kills can escape.

Every plan sets RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC and
RLIMIT_CORE in the launcher's forked child just before ``execve`` (not with ``preexec_fn``,
which the Python docs call unsafe in threaded programs, and the orchestrator is one), passes
only a minimal environment (no API keys), caps stdout (kill on overflow) and keeps the tail of
stderr, and on the wall timeout kills the whole process group with SIGKILL. A watchdog thread
in the launcher kills the run when the nsed process dies (a pipe it holds closes) or the run
outlives its limit by 10 s; boxes left by a killed nsed are removed by the next one.

Not prevented: reads of world-readable files (and, in ``userns``, of the user's files outside
the home directory); memory is limited per process (RLIMIT_AS), so a program that forks many
large children can use up to ``nproc`` times ``memory_mb``.

The programs see LiveCodeBench's import prelude (``from collections import *``, ``typing``,
``sys.setrecursionlimit(50000)``, ...), as the official harness does. The launcher and that
runner are real modules (:mod:`nsed.benchmarks.sandbox_programs`), copied into each box.
What a program prints is untrusted: a function call's result is read defensively, and any
output that is not a well-formed result is that test's failure, never an error in nsed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import pwd
import random
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field

from nsed.benchmarks import sandbox_programs
from nsed.errors import ConfigError, SandboxUnavailable

log = logging.getLogger("nsed.sandbox")

DEFAULT_TIMEOUT_S = 6.0
DEFAULT_MEMORY_MB = 512
DEFAULT_OUTPUT_LIMIT = 1_000_000
STDERR_LIMIT = 20_000
RESULT_SENTINEL = "\x1ensed-result\x1e"
BOX_UID_BASE = 2_000_000_000  # far above login, system, dynamic and subordinate uid ranges
BOX_UID_SLOTS = 4096  # boxes that can run at once on one host
INNER_UID = 1000  # the program's uid inside the nested user namespace of the userns plan
ISOLATED_PLANS = ("ns+uid", "userns")
_BOX_PREFIX = "nsed_box_"
_ENABLE_HINT = (
    "install util-linux's unshare (Debian/Ubuntu: apt-get install -y util-linux) and, for a "
    "non-root user, allow user namespaces (sysctl -w kernel.unprivileged_userns_clone=1 and "
    "user.max_user_namespaces > 0; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns"
    "=0; in a container, let it create namespaces, e.g. docker run --cap-add SYS_ADMIN "
    "--security-opt seccomp=unconfined --security-opt apparmor=unconfined); or run model "
    "code without isolation on purpose with --allow-unsandboxed (allow_unsandboxed=True)"
)


class SandboxResult(BaseModel):
    """What one contained run produced, and why it ended if it did not end by itself."""

    stdout: str = ""
    stderr: str = Field(default="", description="the last STDERR_LIMIT characters")
    exit_code: int | None = Field(
        default=None, description="the program's exit status; -N when killed by signal N"
    )
    timed_out: bool = False
    killed_reason: str | None = Field(
        default=None, description="wall timeout, cpu/memory/file/output limit, signal, setup"
    )
    wall_s: float = 0.0
    stdout_truncated: bool = False
    plan: str = Field(default="", description="the containment plan (ns+uid, userns, ...)")
    isolation: list[str] = Field(
        default_factory=list, description="containment in force: pid_ns, net_ns, ro_fs, …"
    )

    @property
    def ok(self) -> bool:
        """The program ran to completion and exited 0."""
        return self.exit_code == 0 and self.killed_reason is None


class CallResult(BaseModel):
    """A functional (LeetCode-style) call: the JSON value returned, or why there is none."""

    run: SandboxResult
    value_json: str | None = Field(default=None, description="json.dumps of the return value")
    error: str | None = None


# --- Programs written into the box ----------------------------------------------------------


@functools.cache
def _program(name: str) -> str:
    """The text of a program in :mod:`nsed.benchmarks.sandbox_programs` (read once)."""
    return resources.files(sandbox_programs).joinpath(name).read_text(encoding="utf-8")


# --- Choosing the containment plan ---------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    name: str
    namespaces: bool
    map_root: bool
    drop_uid: bool
    nested_userns: bool = False

    @property
    def isolated(self) -> bool:
        return self.name in ISOLATED_PLANS


@dataclass
class _Choice:
    plan: _Plan
    failures: list[str] = field(default_factory=list)  # "plan: why not", strongest first


_plan_lock = threading.Lock()
_choice: _Choice | None = None
_warned_unsandboxed = False


def _candidate_plans() -> tuple[list[_Plan], list[str]]:
    """The plans worth probing here, strongest first, and why stronger ones are not."""
    root = os.geteuid() == 0
    plans: list[_Plan] = []
    missing: list[str] = []
    strongest = "ns+uid" if root else "userns"
    if not sys.platform.startswith("linux"):
        missing.append(f"{strongest}: needs Linux namespaces (this is {sys.platform})")
    elif not shutil.which("unshare"):
        missing.append(f"{strongest}: util-linux unshare is not on PATH")
    elif root:
        plans.append(_Plan("ns+uid", True, False, True))
    else:
        plans.append(_Plan("userns", True, True, False, nested_userns=True))
    if root:
        plans.append(_Plan("plain+uid", False, False, True))
    plans.append(_Plan("plain", False, False, False))
    return plans, missing


def _choose_plan() -> _Choice:
    """Run a probe under each plan, strongest first; the first that works is used for good."""
    global _choice
    with _plan_lock:
        if _choice is not None:
            return _choice
        _remove_stale_boxes()
        probe = "import sys; print(sys.stdin.read().strip() + '-ok')"
        plans, failures = _candidate_plans()
        for plan in plans:
            result = _execute(plan, probe, mode="script", stdin="nsed", timeout_s=20.0)
            if result.exit_code == 0 and result.stdout.strip() == "nsed-ok":
                _choice = _Choice(plan, failures)
                break
            why = result.killed_reason or _tail_line(result.stderr) or f"exit {result.exit_code}"
            failures.append(f"{plan.name}: {why}")
        else:
            # Nothing works (no fork, no interpreter): keep the weakest plan, whose errors are
            # then reported per test as "sandbox setup failed".
            _choice = _Choice(plans[-1], failures)
        if not _choice.plan.isolated:
            log.warning(
                "no isolating sandbox here (%s); model code can only run unsandboxed (plan %s)",
                "; ".join(_choice.failures),
                _choice.plan.name,
            )
        return _choice


def sandbox_plan() -> str:
    """The name of the containment plan this process uses (probes on first call)."""
    return _choose_plan().plan.name


def require_isolation(allow_unsandboxed: bool = False) -> str:
    """The plan model code runs under; SandboxUnavailable when it is not isolated and
    ``allow_unsandboxed`` is False (with it, a warning is logged once per process)."""
    global _warned_unsandboxed
    choice = _choose_plan()
    if choice.plan.isolated:
        return choice.plan.name
    if not allow_unsandboxed:
        raise SandboxUnavailable(
            f"refusing to run model-written code without isolation: the only sandbox plan "
            f"that works here is {choice.plan.name!r} "
            f"({'; '.join(choice.failures) or 'no namespaces'}). To fix it, {_ENABLE_HINT}"
        )
    if not _warned_unsandboxed:
        _warned_unsandboxed = True
        log.warning(
            "running model-written code WITHOUT isolation (sandbox plan %s), as allowed by "
            "--allow-unsandboxed: it can read your files and write outside its directory",
            choice.plan.name,
        )
    return choice.plan.name


# --- A uid of its own for each box -------------------------------------------------------------


def _uid_lock_folder() -> Path:
    """A root-only folder of slot lock files; /run when writable, else the temp dir."""
    for parent in (Path("/run"), Path(tempfile.gettempdir())):
        folder = parent / "nsed-box-uids"
        with contextlib.suppress(FileExistsError, PermissionError, FileNotFoundError):
            folder.mkdir(mode=0o700)
        try:
            info = folder.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            return folder
    raise OSError("no private folder for the box uid locks (tried /run and the temp dir)")


@contextlib.contextmanager
def _box_uid() -> Iterator[int]:
    """Hold a free slot of BOX_UID_SLOTS (a lock file, across processes) and yield its uid."""
    folder = _uid_lock_folder()
    start = random.randrange(BOX_UID_SLOTS)
    for i in range(BOX_UID_SLOTS):
        slot = (start + i) % BOX_UID_SLOTS
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(folder / str(slot), flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield BOX_UID_BASE + slot
        finally:
            os.close(fd)
        return
    raise OSError(f"all {BOX_UID_SLOTS} box uids are in use")


# --- Running ----------------------------------------------------------------------------------


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    allow_unsandboxed: bool = False,
) -> SandboxResult:
    """Run ``code`` as a script in a fresh contained process, feeding it ``stdin``.

    Raises SandboxUnavailable when no isolating plan works and ``allow_unsandboxed`` is False.
    """
    _check_limits(timeout_s, memory_mb, output_limit)
    require_isolation(allow_unsandboxed)
    return _execute(
        _choose_plan().plan,
        code,
        mode="script",
        stdin=stdin,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        output_limit=output_limit,
    )


def call_function(
    code: str,
    func_name: str,
    args_text: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    allow_unsandboxed: bool = False,
) -> CallResult:
    """Call ``Solution().<func_name>(*args)``, one JSON argument per line of ``args_text``.

    The harness runs inside the sandbox, redirects the solution's own prints away from the
    result and prints ``json.dumps`` of the return value (tuples become lists, as in LCB).
    The program shares that process, so it can print a result line of its own: whatever
    follows the last sentinel is read as untrusted text, and anything that is not a
    well-formed result is an ``error``.
    """
    _check_limits(timeout_s, memory_mb, output_limit)
    require_isolation(allow_unsandboxed)
    run = _execute(
        _choose_plan().plan,
        code,
        mode="call",
        stdin=args_text,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        output_limit=output_limit,
        func_name=func_name,
    )
    marker = run.stdout.rfind(RESULT_SENTINEL)
    if marker < 0:
        reason = run.killed_reason or _tail_line(run.stderr) or "the harness printed no result"
        return CallResult(run=run, error=reason)
    payload = _result_payload(run.stdout[marker + len(RESULT_SENTINEL) :])
    run.stdout = run.stdout[:marker].rstrip("\n")
    if payload is None:
        return CallResult(run=run, error="the harness result was cut off, corrupted or forged")
    ok, value = payload
    if ok:
        return CallResult(run=run, value_json=value)
    return CallResult(run=run, error=value[:2000])


def _result_payload(text: str) -> tuple[bool, str] | None:
    """``(ok, value or error)`` from the text after the sentinel, or None when malformed."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("ok"), bool):
        return None
    if payload["ok"]:
        value = payload.get("value")
        return (True, value) if isinstance(value, str) else None
    return False, str(payload.get("error", "unknown error"))


def _execute(
    plan: _Plan,
    code: str,
    *,
    mode: str,
    stdin: str,
    timeout_s: float,
    memory_mb: int = DEFAULT_MEMORY_MB,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    func_name: str | None = None,
) -> SandboxResult:
    _check_limits(timeout_s, memory_mb, output_limit)
    try:
        uid_slot = _box_uid() if plan.drop_uid else contextlib.nullcontext(None)
        with uid_slot as uid:
            return _execute_as(
                plan, uid, code, mode, stdin, timeout_s, memory_mb, output_limit, func_name
            )
    except OSError as exc:
        return SandboxResult(killed_reason=f"sandbox setup failed: {exc}", plan=plan.name)


def _execute_as(
    plan: _Plan,
    uid: int | None,
    code: str,
    mode: str,
    stdin: str,
    timeout_s: float,
    memory_mb: int,
    output_limit: int,
    func_name: str | None,
) -> SandboxResult:
    box = Path(tempfile.mkdtemp(prefix=f"{_BOX_PREFIX}{os.getpid()}_"))
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()  # nsed holds the write end; when it dies, the run dies
    proc: subprocess.Popen[bytes] | None = None
    try:
        cmd, env = _prepare_box(box, plan, uid, code, mode, timeout_s, memory_mb, func_name)
        stdin_path = box / "stdin"
        stdin_path.write_text(stdin, encoding="utf-8")
        started = time.monotonic()
        with open(stdin_path, "rb") as stdin_file:
            proc = subprocess.Popen(
                [*cmd, str(status_w), str(alive_r)],
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w, alive_r),
                start_new_session=True,
                cwd=box,
                env=env,
            )
        os.close(status_w)
        os.close(alive_r)
        status_w = alive_r = -1
        return _collect(proc, status_r, started, timeout_s, output_limit, plan)
    finally:
        if proc is not None:
            _kill_everything(proc, plan)
        for fd in (status_r, status_w, alive_r, alive_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _remove_box(box)


def _check_limits(timeout_s: float, memory_mb: int, output_limit: int) -> None:
    if not timeout_s > 0:
        raise ConfigError(f"sandbox timeout_s must be positive (got {timeout_s})")
    if memory_mb < 64:
        raise ConfigError(f"sandbox memory_mb must be at least 64 (got {memory_mb})")
    if output_limit < 1:
        raise ConfigError(f"sandbox output_limit must be at least 1 byte (got {output_limit})")


def _interpreter() -> tuple[str, list[str]]:
    """The real interpreter binary (not a venv shim) and the prefixes it needs to run."""
    exe = os.path.realpath(sys.executable)
    prefixes = [os.path.realpath(sys.base_prefix)]
    exe_prefix = os.path.dirname(os.path.dirname(exe))
    if not any(exe.startswith(p + os.sep) for p in prefixes):
        prefixes.append(exe_prefix)
    return exe, prefixes


def _private_dirs(plan: _Plan, box: Path) -> list[str]:
    """Directories to cover in the box: the user's home in the userns plan (unless the box
    itself lies there, e.g. with TMPDIR under it)."""
    if not plan.nested_userns:
        return []
    try:
        home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return []
    if home in ("/", "") or not os.path.isdir(home) or str(box).startswith(home + os.sep):
        return []
    return [home]


def _prepare_box(
    box: Path,
    plan: _Plan,
    uid: int | None,
    code: str,
    mode: str,
    timeout_s: float,
    memory_mb: int,
    func_name: str | None,
) -> tuple[list[str], dict[str, str]]:
    exe, prefixes = _interpreter()
    box.chmod(0o755)
    work = box / "work"
    work.mkdir()
    (box / "expose").mkdir()
    for i in range(len(prefixes)):
        (box / "expose" / str(i)).mkdir()
    if uid is not None and not plan.namespaces:
        os.chown(work, uid, uid)
        work.chmod(0o700)
    files = {name: _program(name) for name in sandbox_programs.PROGRAMS}
    files["solution.py"] = code
    for name, text in files.items():
        (box / name).write_text(text, encoding="utf-8")
        (box / name).chmod(0o644)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    runner = str(box / "runner.py")
    argv = [exe, "-I", "-S", "-X", "utf8", runner, mode, str(box / "solution.py")]
    if mode == "call":
        argv += [func_name or "", RESULT_SENTINEL]
    limits = {
        "cpu_s": max(1, int(timeout_s + 0.999)) + 1,
        "as_bytes": memory_mb * 1024 * 1024,
        "fsize_bytes": 64 * 1024 * 1024,
        "nofile": 128,
        "nproc": 256,
    }
    isolation = ["pid_ns", "net_ns"] if plan.namespaces else []
    if uid is not None:
        isolation.append("box_uid")
    if plan.drop_uid or plan.nested_userns:
        isolation.append("no_caps")
    config = {
        "box": str(box),
        "work": str(work),
        "work_mb": 64,
        "mounts": plan.namespaces,
        "drop_uid": plan.drop_uid,
        "uid": uid,
        "nested_userns": plan.nested_userns,
        "inner_uid": INNER_UID,
        "hide": _private_dirs(plan, box),
        "expose": prefixes,
        "try_net_unshare": not plan.namespaces,
        "watchdog_s": timeout_s + 10.0,
        "isolation": isolation,
        "limits": limits,
        "env": env,
        "runner": runner,
        "argv": argv,
    }
    (box / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (box / "config.json").chmod(0o600)
    launcher = [exe, "-I", "-S", str(box / "launcher.py"), str(box / "config.json")]
    if plan.namespaces:
        prefix = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child"]
        prefix += ["--mount-proc", "--propagation", "private"]
        if plan.map_root:
            prefix.append("--map-root-user")
        return [*prefix, "--", *launcher], env
    return launcher, env


def _collect(
    proc: subprocess.Popen[bytes],
    status_r: int,
    started: float,
    timeout_s: float,
    output_limit: int,
    plan: _Plan,
) -> SandboxResult:
    """Read stdout, stderr and the launcher's status until all close or a limit is hit."""
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    status = bytearray()
    timed_out = False
    killed: str | None = None
    truncated = False
    deadline = started + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(status_r, selectors.EVENT_READ, status)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                # Leftover children may keep the pipes open; take what they wrote so far.
                _kill_everything(proc, plan)
            if exited_at is not None and now - exited_at > 1.0:
                break
            if now >= deadline and exited_at is None:
                timed_out = True
                killed = f"wall timeout after {timeout_s:g}s"
                _kill_everything(proc, plan)
                deadline = now + 1.0
                exited_at = now
                continue
            wait = min(deadline - now, 0.05) if exited_at is None else 0.05
            for key, _ in sel.select(timeout=max(wait, 0.0)):
                fd = key.fd
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is out and len(out) > output_limit:
                    del out[output_limit:]
                    truncated = True
                    if killed is None:
                        killed = f"output limit exceeded (more than {output_limit} bytes)"
                    _kill_everything(proc, plan)
                    sel.unregister(key.fileobj)
                elif buf is err and len(err) > 2 * STDERR_LIMIT:
                    del err[: len(err) - STDERR_LIMIT]
    finally:
        sel.close()
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        _kill_everything(proc, plan)
        proc.wait()
    wall = time.monotonic() - started
    stderr_text = err.decode("utf-8", "replace")[-STDERR_LIMIT:]
    exit_code, isolation, setup_error = _parse_status(status)
    if setup_error is not None and killed is None:
        killed = f"sandbox setup failed: {setup_error}"
    if killed is None and exit_code is not None:
        killed = _reason_for(exit_code, stderr_text)
    return SandboxResult(
        stdout=out.decode("utf-8", "replace"),
        stderr=stderr_text,
        exit_code=exit_code,
        timed_out=timed_out,
        killed_reason=killed,
        wall_s=round(wall, 4),
        stdout_truncated=truncated,
        plan=plan.name,
        isolation=isolation,
    )


def _parse_status(raw: bytes | bytearray) -> tuple[int | None, list[str], str | None]:
    exit_code: int | None = None
    isolation: list[str] = []
    setup_error: str | None = None
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "setup_error" in item:
            setup_error = str(item["setup_error"])
        if "exit" in item:
            exit_code = int(item["exit"])
        if "signal" in item:
            exit_code = -int(item["signal"])
        isolation = list(item.get("isolation", isolation))
    return exit_code, isolation, setup_error


def _reason_for(exit_code: int, stderr: str) -> str | None:
    if exit_code == 0:
        return None
    if exit_code < 0:
        sig = -exit_code
        if sig == signal.SIGXCPU:
            return "cpu time limit exceeded (RLIMIT_CPU)"
        if sig == signal.SIGKILL:
            # A SIGKILL we did not send comes from the hard RLIMIT_CPU or the OOM killer.
            return "killed by SIGKILL (hard cpu limit or out of memory)"
        if sig == signal.SIGXFSZ:
            return "file size limit exceeded (RLIMIT_FSIZE)"
        return f"killed by signal {signal.Signals(sig).name}"
    last = _tail_line(stderr)
    if last.startswith("MemoryError"):
        return "memory limit exceeded (MemoryError under RLIMIT_AS)"
    return None


def _tail_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _kill_everything(proc: subprocess.Popen[bytes], plan: _Plan) -> None:
    """SIGKILL the session's process group. Without a PID namespace, first kill (twice, for
    racing forks) every descendant of the launcher, which is their subreaper, and any process
    still in its session or group; only then the launcher, so no orphan reaches init."""
    if not plan.namespaces:
        for _ in range(2):
            for pid in _session_members(proc.pid):
                if pid != proc.pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _session_members(sid: int) -> list[int]:
    """Processes whose session or process group is ``sid`` or whose parent chain leads to it."""
    members: list[int] = []
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        pid, ppid, pgid, session = int(entry), int(fields[1]), int(fields[2]), int(fields[3])
        parents[pid] = ppid
        if sid in (pgid, session):
            members.append(pid)
    for pid in parents:
        cur, seen = parents.get(pid), 0
        while cur and seen < 64:
            if cur == sid:
                members.append(pid)
                break
            cur, seen = parents.get(cur), seen + 1
    return [pid for pid in set(members) if pid != os.getpid()]


def _remove_stale_boxes() -> None:
    """Delete boxes left by nsed processes that were killed before they could clean up."""
    for box in Path(tempfile.gettempdir()).glob(f"{_BOX_PREFIX}*_*"):
        owner = box.name.removeprefix(_BOX_PREFIX).split("_", 1)[0]
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            _remove_box(box)
        except PermissionError:
            continue  # alive, someone else's


def _remove_box(box: Path) -> None:
    """Delete the box without ever descending into a mount (a leaked bind would be fatal)."""
    for mountable in [box / "work", *sorted((box / "expose").glob("*"))]:
        if os.path.ismount(mountable):
            return  # leave it: deleting through a bind mount would delete the source
    for sub in sorted((box / "expose").glob("*")):
        with contextlib.suppress(OSError):
            sub.rmdir()
    shutil.rmtree(box, ignore_errors=True)


__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_TIMEOUT_S",
    "ISOLATED_PLANS",
    "CallResult",
    "SandboxResult",
    "call_function",
    "require_isolation",
    "run_python",
    "sandbox_plan",
]
