"""A tiny run of the chaos suite (``perf/chaos.py``) as a child process: its machinery works
and, with every fault kind (hangs, drips, huge replies, 500/429, malformed 200 replies) and a
backend killed mid-run, nothing crashes and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fault_server import FAULTS

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_chaos_run_crashes_nothing_and_loses_nothing(tmp_path):
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "chaos.py"),
            "--deliberations",
            "8",
            "--concurrency",
            "4",
            "--call-timeout",
            "1",
            "--huge-bytes",
            "6000000",
            "--faults",
            ",".join(FAULTS),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    chaos = result["chaos"]
    assert chaos["run"] == 8 and chaos["crashed"] == 0 and chaos["lost"] == 0
    assert chaos["answered"] + chaos["failed_typed"] == 8
    assert chaos["faulty_calls"] > 0 and chaos["bytes_stored"] > 0
    assert result["fault_free"]["answered"] == 8 == result["fault_free"]["correct"]
    assert set(result["each_fault_alone"]) == set(FAULTS)
    assert all(v == "answered" for v in result["each_fault_alone"].values())
    assert "crashed                0" in done.stdout
