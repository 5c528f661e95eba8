"""The S3 per-request CPU benchmark runs on a request boto3 really builds (its signature
verifies, its body decodes) and prints every step (shape only, never a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "s3_request_cpu.py"


def test_quick_run_prints_every_step() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "-n", "20"], capture_output=True,
                          timeout=300, check=True)
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()
            if line.startswith("{")]
    assert len(rows) == 4
    assert all(r["bench"] == "s3_request_cpu" and r["size_bytes"] == 4096 for r in rows)
    assert {r["step"].split(":")[0].split(" ")[0] for r in rows} == {"h11", "SigV4", "body",
                                                                      "answer"}
