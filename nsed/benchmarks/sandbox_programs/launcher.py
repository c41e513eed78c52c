"""The sandbox launcher: prepares the box, starts the program under limits, reports its end.

Copied into every box by :mod:`nsed.benchmarks.sandbox` and run there as
``python -I -S launcher.py CONFIG STATUS_FD ALIVE_FD`` (as root and PID 1 of the namespaces
in the namespace plans). It imports nothing but the standard library: the box never sees
nsed. Steps:

1. plain plans: try ``unshare(CLONE_NEWNET)``, else the runner installs a socket guard;
2. start a watchdog thread that kills the run when nsed goes away (``ALIVE_FD`` closes) or the
   run outlives its limit;
3. become a child subreaper and fork the program's process. In the ``userns`` plan the child
   first enters a nested user namespace, which the launcher maps (child uid ``inner_uid``, a
   non-zero uid, to the launcher's own) while ``/proc`` is still writable: the program is then
   no longer root in the namespace that owns its mounts, so it cannot remount anything;
4. namespace plans: remount every mount read-only and ``nosuid``, mount a size-capped tmpfs
   owned by the program's uid as the working directory and a fresh ``/dev/shm``, and cover
   private directories (``hide``, and any that would hide the interpreter from the program's
   uid) with an empty tmpfs, binding back only the interpreter's prefixes;
5. tell the child to go: it sets the rlimits (RLIMIT_NPROC after the nested namespace exists,
   so the count is this box's own), changes to the working directory, drops to the box's uid
   (root plans), drops every capability (bounding, ambient, inheritable, permitted,
   effective), sets ``no_new_privs`` and ``execve``\\ s the runner;
6. wait for the program, kill whatever it left behind, and write one JSON line to
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
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_CAPBSET_DROP = 24
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
GO = b"go"

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


def covered_by(path: str, tops: Iterable[str]) -> str | None:
    """The directory of ``tops`` that ``path`` lies in (or is), or None."""
    for top in tops:
        if path == top or path.startswith(top.rstrip("/") + "/"):
            return top
    return None


def id_map(inner: int, outer: int = 0) -> str:
    """One line of ``uid_map``/``gid_map``: ``inner`` in the new namespace is ``outer`` outside."""
    return f"{inner} {outer} 1\n"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


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

    def check(self, result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(
        self, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        def enc(s: str | None) -> bytes | None:
            return s.encode() if s is not None else None

        self.check(
            self.libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}"
        )

    # --- the box's file system (namespace plans, in the launcher) --------------------------

    def hide_private_dirs(self) -> None:
        """Cover private directories with an empty tmpfs, binding the interpreter back in."""
        cfg = self.cfg
        tops = set(cfg["hide"])
        if cfg["drop_uid"]:
            for prefix in cfg["expose"]:
                top = hidden_ancestor(prefix)
                if top is not None:
                    if covered_by(cfg["box"], [top]):
                        raise OSError(f"the sandbox box {cfg['box']} lies under {top}")
                    tops.add(top)
        tops = {t for t in tops if os.path.isdir(t) and not covered_by(t, tops - {t})}
        if not tops:
            return
        staged = []
        for i, prefix in enumerate(cfg["expose"]):
            if covered_by(prefix, tops) is None:
                continue
            stage = os.path.join(cfg["box"], "expose", str(i))
            self.mount(prefix, stage, None, MS_BIND | MS_REC)
            staged.append((prefix, stage))
        for top in sorted(tops):
            self.mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for prefix, stage in staged:
            os.makedirs(prefix, mode=0o755, exist_ok=True)
            self.mount(stage, prefix, None, MS_BIND | MS_REC)
        self.isolation.append("private_dirs_hidden")

    def setup_mounts(self) -> None:
        cfg = self.cfg
        self.mount(None, "/", None, MS_REC | MS_PRIVATE)
        self.hide_private_dirs()
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
        owner = f",uid={cfg['uid']},gid={cfg['uid']}" if cfg["drop_uid"] else ""
        self.mount(
            "tmpfs",
            cfg["work"],
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"size={cfg['work_mb']}m,mode=0700{owner}",
        )
        self.isolation.append("tmpfs_work")
        with contextlib.suppress(OSError):
            self.mount(
                "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777"
            )

    def map_nested_user(self, pid: int) -> None:
        """Map the child's nested user namespace: ``inner_uid`` there is our uid (0) here."""
        inner = self.cfg["inner_uid"]
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", id_map(inner)),
            ("gid_map", id_map(inner)),
        ):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        self.isolation.append("userns_uid")

    def contain_network(self) -> None:
        """Plain plans: a network namespace if the kernel lets us, else the socket guard."""
        if self.cfg["try_net_unshare"] and self.libc.unshare(CLONE_NEWNET) == 0:
            self.isolation.append("net_ns")
        else:
            self.isolation.append("socket_guard")

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

    # --- the program's process (the forked child) -------------------------------------------

    def drop_capabilities(self) -> None:
        """Empty the bounding and ambient sets now; inheritable/permitted/effective by capset
        (``drop_uid`` plans also lose them by ``setresuid`` to a non-zero uid)."""
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            self.check(self.libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
        self.libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    def clear_capability_sets(self) -> None:
        header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        self.check(self.libc.capset(ctypes.byref(header), data), "capset")

    def exec_program(self, argv: list[str], go_fd: int, ready_fd: int) -> None:
        """In the forked child: namespace, wait for go, limits, uid, capabilities, ``execve``."""
        cfg = self.cfg
        try:
            if cfg["nested_userns"]:
                self.check(self.libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            if os.read(go_fd, len(GO)) != GO:
                os._exit(126)  # the launcher reports why
            os.close(go_fd)
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
            if cfg["drop_uid"] or cfg["nested_userns"]:
                self.drop_capabilities()
            if cfg["drop_uid"]:
                uid = cfg["uid"]
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            if cfg["drop_uid"] or cfg["nested_userns"]:
                self.clear_capability_sets()
                if os.getuid() == 0:
                    raise OSError("the program would run as uid 0")
            # setuid binaries cannot raise privilege
            self.check(self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
            os.execve(argv[0], argv, cfg["env"])
        except BaseException as exc:
            self.report({"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(127)

    # --- the run --------------------------------------------------------------------------------

    def prepare(self, pid: int, ready_fd: int) -> bool:
        """Contain the forked child's world; False (after reporting) when setup failed."""
        try:
            if os.read(ready_fd, 1) != b"1":
                return False  # the child reported its own setup error
            if self.cfg["nested_userns"]:
                self.map_nested_user(pid)
            if self.cfg["mounts"]:
                self.setup_mounts()
        except Exception as exc:
            self.report({"setup_error": f"{type(exc).__name__}: {exc}"})
            return False
        return True

    def run(self) -> None:
        if not self.cfg["mounts"]:
            self.contain_network()  # before the fork: the child must inherit the namespace
        argv = self.argv()
        os.set_inheritable(self.status_fd, False)
        os.set_inheritable(self.alive_fd, False)
        threading.Thread(target=self.watchdog, daemon=True).start()
        # Orphans of the program re-parent to us (not to init), so none can slip away unseen.
        self.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(ready_r)
            self.exec_program(argv, go_r, ready_w)
        os.close(go_r)
        os.close(ready_w)
        self.libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace or /proc peeking at us
        ready = self.prepare(pid, ready_r)
        if ready:
            os.write(go_w, GO)
        os.close(go_w)
        status = wait_for(pid)
        kill_leftovers()
        if not ready:
            os._exit(0)
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
