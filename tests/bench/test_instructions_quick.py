"""bench/instructions.py in its smallest form: the trio floor and hdsd under callgrind, put 4 KiB
x1, two short windows each. Checks shape and that every count is a count — each process of a
replicated put executed instructions, hdsd's rows carry their ratio to the floor — never a time,
and that nothing is left behind. Valgrind is part of the environment (``.ci/install-valgrind``):
without it this fails, it does not skip."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "instructions.py"
ROLES = {"client", "coordinator", "replica", "total"}


@pytest.mark.e2e
def test_instructions_per_op_by_process_against_the_floor(tmp_path: Path) -> None:
    assert shutil.which("valgrind") and shutil.which("vgdb"), \
        "valgrind is missing: .ci/install-valgrind installs it"
    out = tmp_path / "instructions.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(scratch), "--json", str(out)],
        capture_output=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    doc = json.loads(out.read_text())
    assert (doc["n1"], doc["n2"], doc["repeat"]) == (2, 4, 1)
    rows = doc["results"]
    assert {(r["system"], r["process"]) for r in rows} == \
        {(s, p) for s in ("hdsd", "trio-floor") for p in ROLES}
    for r in rows:
        assert (r["cell"], r["op"], r["concurrency"], r["size_bytes"]) == ("put1", "put", 1, 4096)
        assert len(r["runs"]) == 1 and math.isfinite(r["instructions_per_op"])
        # A replicated put runs Python in all three processes: far above 10,000 instructions.
        assert r["instructions_per_op"] > 10_000, r
        assert r["idle_per_s"] >= 0
    by = {(r["system"], r["process"]): r for r in rows}
    for role in ROLES:
        h, f = by[("hdsd", role)], by[("trio-floor", role)]
        assert h["vs_trio_floor"] == pytest.approx(h["instructions_per_op"] /
                                                   f["instructions_per_op"])
        assert "vs_trio_floor" not in f
    total = by[("hdsd", "total")]["instructions_per_op"]
    assert total == pytest.approx(sum(by[("hdsd", p)]["instructions_per_op"]
                                      for p in ROLES - {"total"}))
    assert "hdsd/floor" in proc.stdout.decode()
    assert list(scratch.iterdir()) == []  # the cluster, rings and callgrind dumps removed
