"""bench/ab_cpu.py runs two sides (here the same tree twice, a few puts per cell) and reports
every cell and metric for both, with their ratios; it leaves no process or scratch behind.

Checks shape only — which cells and metrics exist and that figures are numbers — never a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "ab_cpu.py"
METRICS = {"ops_per_s", "p50_ms", "client", "coordinator", "replica", "total",
           "coordinator.main", "coordinator.threads", "replica.main", "replica.threads"}


def test_ab_cpu_reports_both_sides_of_every_cell(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the A/B harness runs each side under <tree>/.venv; this tree has none")
    out = tmp_path / "ab.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--base", str(ROOT), "--candidate", str(ROOT), "--ops", "8",
         "--rounds", "2", "--concurrency", "1,4", "--gets", "--connections", "2",
         "--policy", "local", "--dir", str(scratch), "--json", str(out)],
        capture_output=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    doc = json.loads(out.read_text())
    assert doc["policy"] == "local"
    rows = doc["summary"]
    cells = {r["cell"] for r in rows}
    assert cells == {f"{op} 4096 x{c}" for op in ("put", "get") for c in (1, 4)}
    for cell in cells:
        assert {r["metric"] for r in rows if r["cell"] == cell} == METRICS
        for side in ("base", "candidate"):
            assert len(doc["runs"][cell][side]) == 2  # one per round
    for r in rows:
        for side in ("base", "candidate"):
            assert isinstance(r[side], float) and math.isfinite(r[side])
            assert len(r[f"{side}_runs"]) == 2
    # Figures every put cell must have (CPU may round to 0 ticks on a few ops, never below).
    for r in rows:
        if r["cell"].startswith("put") and r["metric"] in ("ops_per_s", "p50_ms"):
            assert r["base"] > 0 and r["candidate"] > 0 and r["ratio"] is not None
        if r["metric"] in ("client", "coordinator", "replica", "total"):
            assert r["base"] >= 0 and r["candidate"] >= 0
    assert "cand/base" in proc.stdout.decode()
    assert list(scratch.iterdir()) == []  # both clusters' directories removed
