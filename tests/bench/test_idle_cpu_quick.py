"""The idle benchmark runs with a tiny store and reports every figure it promises (shape only,
never a time: a slow machine must not fail this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "idle_cpu.py"


def test_tiny_run_reports_each_nodes_cpu_and_the_usage_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    subprocess.run([sys.executable, str(BENCH), "--keys", "200", "--settle", "0",
                    "--seconds", "1", "--dir", str(tmp_path), "--json", str(out)],
                   capture_output=True, timeout=300, check=True, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["keys"] == 200 and set(report["nodes"]) == {"dc1", "dc2"}
    for figures in report["nodes"].values():
        assert set(figures) == {"cpu_s_per_min", "trio_s_per_min", "other_s_per_min"}
        assert figures["cpu_s_per_min"] >= 0
    assert report["usage_scan_cpu_s"] >= 0
    assert report["usage_refresh_x5_unchanged_cpu_s"] >= 0
