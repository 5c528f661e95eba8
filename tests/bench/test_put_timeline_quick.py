"""The put timeline runs with a few puts and reports every milestone of the critical path for
hdsd and the trio floor (shape only, never a time: a slow machine must not fail this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "put_timeline.py"


def test_tiny_run_traces_every_milestone_of_both_systems(tmp_path: Path) -> None:
    out = tmp_path / "timeline.json"
    subprocess.run([sys.executable, str(BENCH), "--puts", "20", "--warm", "5", "--json",
                    str(out), "--dir", str(tmp_path)], capture_output=True, timeout=600,
                   check=True)
    report = json.loads(out.read_text())
    for system in ("hdsd", "trio_floor"):
        steps = report[system]["steps"]
        # Every hop of the path was seen: each milestone has a median, in all three processes.
        assert None not in steps.values(), (system, steps)
        assert None not in report[system]["local_lane"].values(), system
        assert {s["process"] for s in report[system]["timeline"]} == {
            "client", "coordinator", "replica"}
        assert report[system]["p50_ms"] > 0
    assert list(report["hdsd"]["steps"]) == list(report["trio_floor"]["steps"])
    assert not list(tmp_path.glob("put-timeline-*"))  # its scratch directory is removed
