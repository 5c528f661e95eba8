"""The S3 payload benchmark runs in --quick mode and prints the cells it promises (shape only,
never a time: a slow machine must not fail this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "s3_payload_bench.py"


def test_quick_run_prints_every_case() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                          timeout=600, check=True)
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()
            if line.startswith("{")]
    cases = {r["case"]: r for r in rows}
    for name in ("sha256 payload", "UNSIGNED-PAYLOAD", "unsigned trailer crc32",
                 "unsigned trailer crc32c", "unsigned trailer crc64nvme",
                 "signed chunks (1 MiB)"):
        assert cases[name]["mib_per_s"] > 0 and cases[name]["ratio_to_md5"] > 0
    assert cases["SigV4 header verification"]["per_s"] > 0
