"""bench/stream_bench.py, in its smallest form: a real two-site cluster, one cell and a small
streaming put and get, each reported with the CPU of every process (user and system apart),
and the page-cache probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stream_bench_reports_the_cells_and_the_big_blob(tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stream_bench.py"), "--big-mib", "16",
         "--cells", "64k1", "--page-probe", "4", "--json", str(out), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    labels = [r["label"] for r in doc["results"]]
    assert labels == ["put 64 KiB x1", "get 64 KiB x1", "single streaming put 16 MiB",
                      "single streaming get 16 MiB"]
    for r in doc["results"]:
        assert r["n"] and r["mib_per_s"] > 0
        assert set(r["cpu_s_per_mib"]) == {"client", "coordinator", "replica", "total"}
    assert set(doc["big_blob_threads_ms_per_mib"]) == {"put", "get"}
    for r in doc["results"][2:]:
        # the big put's and get's CPU, user and system apart, by process
        split = r["user_sys_ms_per_mib"]
        assert set(split) == {"client", "coordinator", "replica"}
        assert all(len(v) == 2 and min(v) >= 0 for v in split.values())
        # /proc counts CPU in 10 ms ticks: one process's share of a small blob can be 0 ticks
        # (it was, for the client's 3 MiB get in CI), all three together over 16 MiB cannot.
        assert sum(sum(v) for v in split.values()) > 0
    probe = doc["page_probe"]
    assert probe["new_pages_ms_per_mib"] >= 0 and probe["cached_pages_ms_per_mib"] >= 0
