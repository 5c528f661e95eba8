from __future__ import annotations

import platform
import subprocess
import sys


def test_tune_allocator_reports_whether_glibc_took_it() -> None:
    # In a child process: the setting is process-wide and must not leak into other tests.
    code = "from hdsd.pipeline import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out == str(expected)
