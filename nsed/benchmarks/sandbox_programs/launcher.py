"""The sandbox launcher: prepares the box, starts the program under limits, reports its end.

Copied into every box by :mod:`nsed.benchmarks.sandbox` and run there as
``python -I -S launcher.py CONFIG STATUS_FD ALIVE_FD`` (as root and PID 1 of the namespaces
in the namespace plans). It imports nothing but the standard library: the box never sees
nsed. Steps:

1. namespace plans: remount every mount read-only and ``nosuid``, mount a size-capped tmpfs
   as the working directory and a fresh ``/dev/shm``, and (when dropping to ``nobody``) hide
   private directories, binding back only the interpreter's prefixes; plain plans: try
   ``unshare(CLONE_NEWNET)``, else the runner installs a socket guard;
2. start a watchdog thread that kills the run when nsed goes away (``ALIVE_FD`` closes) or the
   run outlives its limit;
3. become a child subreaper, fork, and in the child set the rlimits, change to the working
   directory, drop to ``nobody`` if asked, set ``no_new_privs`` and ``execve`` the runner;
4. wait for the program, kill whatever it left behind, and write one JSON line to
   ``STATUS_FD``: ``{"exit": code}`` or ``{"signal": n}`` with the isolation in force, or
   ``{"setup_error": "..."}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import select
import signal
import sys
import threading

TYPE_CHECKING = False  # no typing import at run time: the launcher starts once per test case
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# Per-mount options that a read-only bind remount must keep (the kernel refuses to drop them).
FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}
CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape_mount_path(text: str) -> str:
    r"""A mountinfo path field with its octal escapes decoded (``\040`` is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(lines: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """(mount point, its per-mount options) for each line of ``/proc/self/mountinfo``."""
    for line in lines:
        parts = line.split()
        yield unescape_mount_path(parts[4]), parts[5].split(",")


def remount_flags(options: list[str]) -> int:
    """The flags that remount a mount with ``options`` read-only, keeping what it must keep."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
    for option in options:
        flags |= FLAGS.get(option, 0)
    return flags


def hidden_ancestor(path: str) -> str | None:
    """Highest ancestor of ``path`` that 'nobody' cannot traverse, or None."""
    cur = "/"
    for part in [p for p in path.split("/") if p]:
        cur = os.path.join(cur, part)
        if os.path.isdir(cur) and not os.stat(cur).st_mode & 0o001:
            return cur
    return None


class Launcher:
    """One run: the box's config, the status pipe and the isolation achieved so far."""

    def __init__(self, cfg: dict[str, Any], status_fd: int, alive_fd: int) -> None:
        self.cfg = cfg
        self.status_fd = status_fd
        self.alive_fd = alive_fd
        self.isolation: list[str] = list(cfg["isolation"])
        self.libc = ctypes.CDLL(None, use_errno=True)

    def report(self, obj: dict[str, Any]) -> None:
        os.write(self.status_fd, (json.dumps(obj) + "\n").encode())

    def mount(
        self, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        def enc(s: str | None) -> bytes | None:
            return s.encode() if s is not None else None

        if self.libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    def setup_mounts(self) -> None:
        cfg = self.cfg
        self.mount(None, "/", None, MS_REC | MS_PRIVATE)
        if cfg["drop_uid"]:
            staged = []
            for i, prefix in enumerate(cfg["expose"]):
                top = hidden_ancestor(prefix)
                if top is None:
                    continue
                if cfg["box"].startswith(top + "/"):
                    raise OSError(f"the sandbox box {cfg['box']} lies under {top}")
                stage = os.path.join(cfg["box"], "expose", str(i))
                self.mount(prefix, stage, None, MS_BIND | MS_REC)
                staged.append((top, prefix, stage))
            for top in sorted({t for t, _, _ in staged}):
                self.mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for _, prefix, stage in staged:
                os.makedirs(prefix, mode=0o755, exist_ok=True)
                self.mount(stage, prefix, None, MS_BIND | MS_REC)
            if staged:
                self.isolation.append("private_dirs_hidden")
        failed = []
        with open("/proc/self/mountinfo") as f:
            mounts = list(parse_mountinfo(f))
        for target, opts in mounts:
            try:
                self.mount(None, target, None, remount_flags(opts))
            except OSError:
                failed.append(target)
        if failed:
            raise OSError(f"could not make read-only: {', '.join(failed[:5])}")
        self.isolation.append("ro_fs")
        mode = "0777" if cfg["drop_uid"] else "0700"
        self.mount(
            "tmpfs",
            cfg["work"],
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"size={cfg['work_mb']}m,mode={mode}",
        )
        self.isolation.append("tmpfs_work")
        with contextlib.suppress(OSError):
            self.mount(
                "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777"
            )

    def contain(self) -> bool:
        """Mounts or network isolation; False (after reporting) when setup failed."""
        try:
            if self.cfg["mounts"]:
                self.setup_mounts()
            elif self.cfg["try_net_unshare"]:
                if self.libc.unshare(CLONE_NEWNET) == 0:
                    self.isolation.append("net_ns")
                else:
                    self.isolation.append("socket_guard")
        except Exception as exc:
            self.report({"setup_error": f"{type(exc).__name__}: {exc}"})
            return False
        if "net_ns" not in self.isolation and "socket_guard" not in self.isolation:
            self.isolation.append("socket_guard")
        return True

    def argv(self) -> list[str]:
        argv = list(self.cfg["argv"])
        if "socket_guard" in self.isolation:
            argv.insert(argv.index(self.cfg["runner"]) + 1, "--socket-guard")
        return argv

    def watchdog(self) -> None:
        """Kill the run when nsed goes away (its end of the pipe closes) or overstays."""
        select.select([self.alive_fd], [], [], self.cfg["watchdog_s"])
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(137)

    def exec_program(self, argv: list[str]) -> None:
        """In the forked child: limits, working directory, uid, then ``execve``."""
        cfg = self.cfg
        try:
            lim = cfg["limits"]

            def setlim(kind: int, soft: int, hard: int | None = None) -> None:
                resource.setrlimit(kind, (soft, soft if hard is None else hard))

            setlim(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)
            setlim(resource.RLIMIT_AS, lim["as_bytes"])
            setlim(resource.RLIMIT_FSIZE, lim["fsize_bytes"])
            setlim(resource.RLIMIT_NOFILE, lim["nofile"])
            setlim(resource.RLIMIT_NPROC, lim["nproc"])
            setlim(resource.RLIMIT_CORE, 0)
            os.chdir(cfg["work"])
            if cfg["drop_uid"]:
                os.setgroups([])
                os.setgid(cfg["uid"])
                os.setuid(cfg["uid"])
            # setuid binaries cannot raise privilege
            self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            os.execve(argv[0], argv, cfg["env"])
        except BaseException as exc:
            self.report({"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(127)

    def run(self) -> None:
        if not self.contain():
            os._exit(0)
        argv = self.argv()
        os.set_inheritable(self.status_fd, False)
        os.set_inheritable(self.alive_fd, False)
        threading.Thread(target=self.watchdog, daemon=True).start()
        # Orphans of the program re-parent to us (not to init), so none can slip away unseen.
        self.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        pid = os.fork()
        if pid == 0:
            self.exec_program(argv)
        status = wait_for(pid)
        kill_leftovers()
        if os.WIFSIGNALED(status):
            self.report({"signal": os.WTERMSIG(status), "isolation": self.isolation})
        else:
            self.report({"exit": os.WEXITSTATUS(status), "isolation": self.isolation})
        os._exit(0)


def wait_for(pid: int) -> int:
    """The wait status of ``pid`` (0 when it is already gone)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def parent_pid(stat: str) -> int:
    """The parent pid in a ``/proc/PID/stat`` line (the command name may hold spaces)."""
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def kill_leftovers() -> None:
    """SIGKILL every remaining child (orphans included) and reap them; a PID namespace would do
    this by itself when we exit, without one it is our job."""
    me = os.getpid()
    for _ in range(50):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode("ascii", "replace")
            except OSError:
                continue
            if parent_pid(stat) == me:
                found = True
                with contextlib.suppress(OSError):
                    os.kill(int(entry), signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not found:
            return


def main(argv: list[str]) -> None:
    with open(argv[1]) as f:
        cfg = json.load(f)
    Launcher(cfg, int(argv[2]), int(argv[3])).run()


if __name__ == "__main__":
    main(sys.argv)
