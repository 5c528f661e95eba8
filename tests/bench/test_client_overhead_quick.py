"""bench/client_overhead.py in its quick form: a real two-site cluster, every cell through both
clients, the blocking client's extra per op and the calls per put by thread. Checks the shape and
the consistency of the figures, never a time."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELLS = ("handoff", "put", "get", "put-threads")
FIGURES = ("p50_ms", "p99_ms", "ops_per_s", "client_cpu_ms_per_op", "client_switches_per_op",
           "nodes_cpu_ms_per_op")


@pytest.mark.e2e
def test_quick_run_reports_every_cell_for_both_clients(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "client_overhead.py"), "--quick", "--json",
         str(out), "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "put-threads  sync - async" in proc.stdout  # the human table
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    conf = doc["configuration"]
    assert (conf["ops"], conf["threads"], conf["rounds"], conf["size_bytes"]) == (40, 4, 1, 4096)
    rows = {(r["cell"], r["client"]): r for r in doc["results"]}
    assert set(rows) == {(cell, client) for cell in CELLS
                         for client in ("async", "sync", "sync - async")}
    for cell in CELLS:
        for client in ("async", "sync"):
            row = rows[(cell, client)]
            assert row["n"] == 40
            for name in FIGURES:
                assert math.isfinite(row[name]) and row[name] >= 0, (cell, client, name)
            assert row["p50_ms"] > 0 and row["ops_per_s"] > 0
            if cell != "handoff":  # 40 awaits of nothing may cost less than the clock shows
                # 40 TLS requests cost CPU in this process.
                assert row["client_cpu_ms_per_op"] > 0
            assert row["client_cpu_ms_per_op_rounds"] == [row["client_cpu_ms_per_op"]]
        extra = rows[(cell, "sync - async")]
        for name in FIGURES:
            assert extra[name] == pytest.approx(rows[(cell, "sync")][name] -
                                                rows[(cell, "async")][name])
    # Every blocking call puts a thread to sleep and wakes it (the caller, the loop), at least.
    assert rows[("handoff", "sync")]["client_switches_per_op"] >= 1
    calls = doc["calls"]
    assert set(calls["async"]["by_thread"]) == {"MainThread"}
    # The blocking client's calls run in its loop thread; its caller only waits.
    assert set(calls["sync"]["by_thread"]) == {"MainThread", "hdsd-client"}
    assert calls["sync"]["by_thread"]["hdsd-client"] > calls["sync"]["by_thread"]["MainThread"]
    for which in ("async", "sync"):
        assert calls[which]["calls_per_put"] == pytest.approx(
            sum(calls[which]["by_thread"].values()))
        assert calls[which]["calls_per_put"] > 50 and calls[which]["top"]
    assert calls["extra_calls_per_put"] == pytest.approx(
        calls["sync"]["calls_per_put"] - calls["async"]["calls_per_put"])
