"""``hdsd import`` reads the manifest with bounded memory whatever its line lengths (issue 13,
finding 7): a 64 MiB manifest line is refused after 1 MiB, not held whole."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hdsd.client import _archive as A
from tests.helpers.cluster import init_cluster

LONG = 64 << 20
LIMIT_KIB = 100 << 10  # the importer's peak RSS; holding the line would pass 128 MiB

_MEASURE = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
    "sys.exit(rc)"
)


def _archive(path: Path, manifest: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in ((A.MANIFEST_NAME, manifest), (A.SUMS_NAME, b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("where", ["header", "entry"])
def test_a_huge_manifest_line_is_refused_with_bounded_memory(tmp_path: Path, where: str) -> None:
    profile = init_cluster(tmp_path / "cluster")  # no node needs to run: refused before
    header = json.dumps({"format": A.FORMAT, "format_version": A.FORMAT_VERSION, "tenant": "t",
                         "cluster": "c", "versions": 1, "objects": 1,
                         "total_bytes": 1}).encode() + b"\n"
    huge = b'{"bucket": "' + b"a" * LONG + b'"}\n'
    archive = tmp_path / "export.tar"
    _archive(archive, huge if where == "header" else header + huge)
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "hdsd",
                           "--profile", str(profile), "import", str(archive)],
                          capture_output=True, timeout=300)
    err = proc.stderr.decode()
    peak = int([x for x in err.splitlines() if x.startswith("maxrss")][-1].split()[1])
    print(f"\n[64 MiB manifest line in the {where}] importer peak RSS {peak >> 10} MiB")
    assert proc.returncode == 5, err
    assert "longer than 1048576 bytes" in err and "Traceback" not in err
    assert peak < LIMIT_KIB, peak
