"""The index benchmark runs with tiny sizes and reports every figure it promises (shape only,
never a time: a slow machine must not fail this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "index_bench.py"


def test_tiny_run_reports_cpu_and_bytes_per_version(tmp_path: Path) -> None:
    out = tmp_path / "index.json"
    subprocess.run([sys.executable, str(BENCH), "--prefill", "500", "--commits", "50",
                    "--rounds", "1", "--json", str(out)], capture_output=True, timeout=300,
                   check=True)
    report = json.loads(out.read_text())
    (run,) = report["rounds"]
    assert run["versions"] == 100 and run["per_commit"] == 2
    assert run["bytes_written_per_version"] > 0 and run["index_file_bytes"] > 0
    assert report["cpu_ms_per_version_min"] >= 0 and report["writer_cpu_ms_per_version_min"] >= 0
