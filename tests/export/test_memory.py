"""A 200 MiB object through ``hdsd export - | hdsd import -`` keeps both CLIs' RSS bounded.

A CLI that held one object whole would pass 200 MiB; the bound is well below that, and the
measured peaks are printed (``pytest -s``) for the report.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.export.conftest import new_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 200 << 20
LIMIT_KIB = 120 << 10

# Runs a command as its child, streaming stdin/stdout through, and reports the child's peak
# RSS (ru_maxrss of waited children, KiB on Linux) on stderr's last line.
_MEASURE = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
    "sys.exit(rc)"
)

# Deterministic, incompressible, generated on the fly (never held whole in memory).
_GENERATOR = (
    "import hashlib, sys\n"
    f"total = {TOTAL}; block = 1 << 20; out = sys.stdout.buffer\n"
    "base = hashlib.shake_256(b'export').digest(block)\n"
    "for i in range(total // block):\n"
    "    out.write(base[i % 4096:] + base[:i % 4096])\n"
)


def _expected_sha256() -> str:
    digest = hashlib.sha256()
    base = hashlib.shake_256(b"export").digest(1 << 20)
    for i in range(TOTAL >> 20):
        digest.update(base[i % 4096:] + base[:i % 4096])
    return digest.hexdigest()


def _peak(stderr: bytes) -> int:
    line = [x for x in stderr.decode().splitlines() if x.startswith("maxrss")][-1]
    return int(line.split()[1])


def test_export_import_of_200_mib_keeps_rss_bounded(target_root: Path) -> None:
    # One small cluster, two tenants: what is measured is the CLIs, not the layout.
    source, target = new_tenant(target_root), new_tenant(target_root)
    cli = [sys.executable, "-m", "hdsd"]
    gen = subprocess.Popen([sys.executable, "-c", _GENERATOR], stdout=subprocess.PIPE)
    put = subprocess.run([*cli, "--profile", str(source), "put", "big/200mib", "-"],
                         stdin=gen.stdout, capture_output=True, timeout=600)
    assert gen.stdout is not None
    gen.stdout.close()
    assert gen.wait(60) == 0
    assert put.returncode == 0, put.stderr.decode()

    export = subprocess.Popen(
        [sys.executable, "-c", _MEASURE, *cli, "--profile", str(source), "export",
         source.stem, "-", "--without-retention"],  # a writer's profile: no locks to read
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run([sys.executable, "-c", _MEASURE, *cli, "--profile", str(target),
                          "import", "-"], stdin=export.stdout, capture_output=True, timeout=600)
    assert export.stdout is not None and export.stderr is not None
    export.stdout.close()
    assert export.wait(600) == 0
    export_err = export.stderr.read()
    export.stderr.close()
    assert imp.returncode == 0, imp.stderr.decode()
    export_peak, import_peak = _peak(export_err), _peak(imp.stderr)
    print(f"\npeak RSS for a 200 MiB export: export {export_peak // 1024} MiB, "
          f"import {import_peak // 1024} MiB")
    assert export_peak < LIMIT_KIB, export_peak
    assert import_peak < LIMIT_KIB, import_peak

    got = subprocess.Popen([*cli, "--profile", str(target), "get", "big/200mib"],
                           stdout=subprocess.PIPE)
    digest = hashlib.sha256()
    assert got.stdout is not None
    with got.stdout:
        while piece := got.stdout.read(1 << 20):
            digest.update(piece)
    assert got.wait(60) == 0
    assert digest.hexdigest() == _expected_sha256()
