"""The small-put benchmark runs under another write policy and reports the hints its puts cost
(shape only, never a time: a slow machine must not fail this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "put_profile.py"


def test_quick_run_under_local_reports_its_policy_and_hints(tmp_path: Path) -> None:
    out = tmp_path / "put_profile.json"
    subprocess.run([sys.executable, str(BENCH), "--quick", "--policy", "local", "--json",
                    str(out), "--dir", str(tmp_path)], capture_output=True, timeout=600,
                   check=True)
    report = json.loads(out.read_text())
    assert report["policy"] == "local"
    puts = [c for c in report["results"] if c["system"] == "hdsd"]
    assert [c["label"] for c in puts] == ["put 4 KiB sequential, local",
                                          "put 4 KiB x16, one connection, local"]
    # A hint per put at most: one per replica that had not confirmed, and there is one peer.
    assert all(0 <= c["hints_per_1000"] <= 1000 for c in puts)
    assert puts[0]["n"] == 500 and puts[0]["p50_ms"] > 0
    assert not list(tmp_path.glob("put-profile-*"))  # its scratch directory is removed
