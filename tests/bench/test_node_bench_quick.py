"""The single-node benchmark runs end to end in --quick mode and writes the JSON it promises.

Checks shape only — which cells exist and that their figures are numbers where they apply —
never a time: a slow machine must not fail this test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "node_bench.py"
KEYS = {"system", "op", "size_bytes", "concurrency", "p50_ms", "p99_ms", "ops_per_s",
        "mib_per_s"}
EXPECTED = {  # (system, op, size_bytes, concurrency, connections): the figures it must carry
    ("floor", "fsync", 4096, 1, None): ("p50_ms", "p99_ms", "ops_per_s", "mib_per_s"),
    ("floor", "fsync", 1 << 20, 1, None): ("p50_ms", "p99_ms", "ops_per_s", "mib_per_s"),
    ("floor", "stream", 64 << 20, 1, None): ("mib_per_s",),
    ("hdsd", "put", 4096, 1, 1): ("p50_ms", "p99_ms", "p90_ms", "p999_ms", "max_ms",
                                  "ops_per_s", "ratio_to_floor"),
    ("hdsd", "put", 4096, 16, 1): ("p50_ms", "p99_ms", "ops_per_s", "ratio_to_floor"),
    ("hdsd", "put", 4096, 16, 16): ("p50_ms", "p99_ms", "ops_per_s", "ratio_to_floor"),
    ("hdsd", "get", 4096, 1, 1): ("p50_ms", "p99_ms", "ops_per_s", "ratio_to_floor"),
    ("hdsd", "put", 64 << 20, 1, None): ("mib_per_s", "ratio_to_floor"),
    ("hdsd", "get", 64 << 20, 1, None): ("mib_per_s", "ratio_to_floor"),
}


def _is_figure(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def test_quick_run_writes_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "node_bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--profile", "--json", str(out), "--dir",
         str(tmp_path)],
        capture_output=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    assert b"hdsd    put" in proc.stdout  # the human table was printed too
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["python"]
    assert doc["machine"]["versions"]["trio"]

    cells = doc["results"]
    assert isinstance(cells, list)
    for c in cells:
        assert KEYS <= c.keys(), c
        assert c["system"] in {"hdsd", "floor"}
        assert c["op"] in {"put", "get", "fsync", "rtt", "stream"}
    assert len({(c["system"], c["op"], c["label"]) for c in cells}) == len(cells), \
        "two cells describe the same measurement"
    by_key = {(c["system"], c["op"], c["size_bytes"], c["concurrency"], c["connections"]): c
              for c in cells if c["op"] != "rtt"}
    for key, figures in EXPECTED.items():
        assert key in by_key, f"missing cell {key}"
        for name in figures:
            assert _is_figure(by_key[key][name]), (key, name, by_key[key][name])
    rtts = [c for c in cells if c["op"] == "rtt"]
    assert sorted(c["label"] for c in rtts) == ["trio TCP echo 64 B", "trio TLS 1.3 echo 64 B"]
    assert all(_is_figure(c["p50_ms"]) for c in rtts)
    # Not applicable figures are null, not zero or missing.
    assert by_key[("hdsd", "put", 64 << 20, 1, None)]["p50_ms"] is None
    assert by_key[("hdsd", "put", 4096, 1, 1)]["mib_per_s"] is None
    # The node profile ran on the measured window and split its time into the layers.
    prof = doc["profile"]
    assert prof["puts"] > 0 and Path(prof["file"]).is_file()
    layers = prof["main_thread_self_ms_per_put"]
    assert {"store (commit, index, sqlite)", "wire codec (frames, state machine)"} <= layers.keys()
    assert all(v >= 0 for v in layers.values()) and sum(layers.values()) > 0
    assert prof["top"] and all(_is_figure(t["cum_ms_per_put"]) for t in prof["top"][:3])
    # Every process the benchmark started is gone and its scratch directory removed.
    assert not list(tmp_path.glob("node-bench-*"))
