"""The soak benchmark's short form, as a correctness test: many clients at once on a real 1+1
cluster for a minute, then every acknowledged write read back from each site alone. It asserts
no error and no lost or wrong write — never a time (bench/soak.py reports those)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_short_soak_loses_nothing_and_fails_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    seconds = os.environ.get("HDSD_SOAK_SECONDS", "60")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--quick", "--duration", seconds,
         "--clients", "12", "--json", str(out), "--png", str(tmp_path / "soak.png"),
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"]
    assert result["errors"] == 0, [r["error_examples"] for r in result["samples"]]
    assert result["verify"]["lost"] == 0, result["verify"]
    assert result["verify"]["live"] > 100  # it did write
    assert sum(result["totals"].values()) > 500
    # Each sample holds each node's own account of its memory (from its status) and the
    # interval's peak RSS, never below the RSS at its end.
    for row in result["samples"]:
        for site in ("dc1", "dc2"):
            assert row[f"{site}_peak_rss_mib"] >= row[f"{site}_rss_mib"] > 20
            assert row[f"{site}_python_kblocks"] > 10
            if os.confstr("CS_GNU_LIBC_VERSION"):
                assert row[f"{site}_in_use_mib"] > 1
                assert row[f"{site}_py_arenas_mib"] >= 1 and row[f"{site}_sqlite_mib"] >= 0
            # RSS split by mapping: the parts add up to the whole (read a moment apart, from
            # a node allocating 1 MiB buffers meanwhile: a quarter's leeway).
            parts = sum(row[f"{site}_rss_{k}_mib"] for k in
                        ("heap", "arena_heaps", "stacks", "anon_other", "file"))
            assert abs(parts - row[f"{site}_rss_mib"]) < 0.25 * row[f"{site}_rss_mib"], row
            assert row[f"{site}_rss_file_mib"] > 5 and row[f"{site}_rss_heap_mib"] > 1
    assert proc.returncode == 0, proc.stderr[-3000:]
