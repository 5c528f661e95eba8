"""A 2 GiB generated stream through the CLI keeps node and CLI under 256 MiB RSS each."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cluster import NodeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 2 << 30
LIMIT_KIB = 256 << 10

# Runs a command as its child, streaming stdin/stdout through, and reports the child's peak
# RSS (ru_maxrss of waited children, KiB on Linux) on stderr's last line.
_MEASURE = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
    "sys.exit(rc)"
)


def _generator_script(seed: int) -> str:
    # Deterministic, incompressible, generated on the fly (never held whole in memory).
    return (
        "import hashlib, sys\n"
        f"seed = {seed}; total = {TOTAL}; block = 1 << 20; out = sys.stdout.buffer\n"
        "base = hashlib.shake_256(str(seed).encode()).digest(block)\n"
        "for i in range(total // block):\n"
        "    out.write(base[i % 4096:] + base[:i % 4096])\n"
    )


def _peak(stderr: bytes) -> int:
    line = [x for x in stderr.decode().splitlines() if x.startswith("maxrss")][-1]
    return int(line.split()[1])


def _node_peak_kib(node: NodeProcess) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_two_gib_stream_bounded_memory(profile: Path, node: NodeProcess) -> None:
    cli = [sys.executable, "-m", "hdsd", "--profile", str(profile)]
    gen = subprocess.Popen([sys.executable, "-c", _generator_script(7)], stdout=subprocess.PIPE)
    put = subprocess.run([sys.executable, "-c", _MEASURE, *cli, "put", "mem/2gib", "-"],
                         stdin=gen.stdout, capture_output=True, timeout=900)
    assert gen.stdout is not None
    gen.stdout.close()
    assert gen.wait(60) == 0
    assert put.returncode == 0, put.stderr.decode()
    put_peak = _peak(put.stderr)

    expected = hashlib.sha256()
    regen = subprocess.Popen([sys.executable, "-c", _generator_script(7)], stdout=subprocess.PIPE)
    assert regen.stdout is not None
    while piece := regen.stdout.read(1 << 20):
        expected.update(piece)
    regen.stdout.close()
    regen.wait(60)

    get = subprocess.Popen([sys.executable, "-c", _MEASURE, *cli, "get", "mem/2gib"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = hashlib.sha256()
    size = 0
    assert get.stdout is not None and get.stderr is not None
    while piece := get.stdout.read(1 << 20):
        got.update(piece)
        size += len(piece)
    err = get.stderr.read()
    assert get.wait(900) == 0, err.decode()
    get.stdout.close()
    get.stderr.close()
    assert size == TOTAL and got.hexdigest() == expected.hexdigest()

    node_peak = _node_peak_kib(node)
    print(f"peak RSS: put CLI {put_peak} KiB, get CLI {_peak(err)} KiB, node {node_peak} KiB")
    assert put_peak < LIMIT_KIB
    assert _peak(err) < LIMIT_KIB
    assert node_peak < LIMIT_KIB

