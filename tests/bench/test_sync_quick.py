"""The sync benchmark runs end to end in --quick mode (two real sites behind a delay proxy) and
writes the JSON it promises; an interrupted run leaves no process behind; a peer that cannot run
is reported, not fatal.

Checks shape only — which cells exist and that their figures are numbers — never a time.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.signals import default_sigint

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "sync_latency.py"
KIB, MIB = 1 << 10, 1 << 20
QUICK_SIZES = (4 * KIB, 64 * KIB, MIB)
CONCURRENCY = (1, 16, 64)
KEYS = {"system", "op", "policy", "size_bytes", "concurrency", "p50_ms", "p99_ms", "ops_per_s",
        "mib_per_s"}


def _is_figure(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def _bench(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(BENCH), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=default_sigint)


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention *path* (the run's scratch directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


def _check_cpu(c: dict[str, object]) -> None:
    """The CPU fields of a measured cell: per process and summed, per op and per MiB, all
    consistent with each other and with the cell's op count and size."""
    used, per_op, per_mib = c["cpu_s"], c["cpu_s_per_op"], c["cpu_s_per_mib"]
    assert isinstance(used, dict) and isinstance(per_op, dict) and isinstance(per_mib, dict)
    roles = {"client", "coordinator", "replica"}
    assert set(used) == set(per_op) == set(per_mib) == roles | {"total"}, c
    n, size = c["n"], c["size_bytes"]
    assert isinstance(n, int) and isinstance(size, int)
    for role in roles:
        assert isinstance(used[role], float) and 0 <= used[role] < 3600, (role, used)
        assert per_op[role] == pytest.approx(used[role] / n)
        assert per_mib[role] == pytest.approx(used[role] / (n * size / MIB))
    assert used["total"] == pytest.approx(sum(used[r] for r in roles))
    assert c["cpu_ms_per_op"] == pytest.approx(per_op["total"] * 1e3)
    assert c["cpu_ms_per_mib"] == pytest.approx(per_mib["total"] * 1e3)


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_run_writes_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "sync.json"
    proc = _bench("--quick", "--rtt-ms", "1", "--catchup-mib", "4", "--json", str(out),
                  "--dir", str(tmp_path))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-4000:]
    assert re.search(rb"\nhdsd +put +each-site +4 KiB +1 ", stdout)  # the human table
    assert b"hdsd each-site: put 4 KiB x1" in stderr  # the progress display
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["machine"]["versions"]["trio"]
    assert doc["configuration"]["rtt_ms"] == 1.0
    assert doc["configuration"]["sizes"] == list(QUICK_SIZES)

    cells = doc["results"]
    for c in cells:
        assert KEYS <= c.keys(), c
        assert c["system"] in {"hdsd", "floor", "trio-floor"}
        assert c["op"] in {"put", "get", "fsync", "rtt"}
    # The trio floor ran every quick cell (its sizes stop at 1 MiB, all of --quick's).
    trio_floor = {(c["op"], c["size_bytes"], c["concurrency"]): c
                  for c in cells if c["system"] == "trio-floor"}
    assert set(trio_floor) == {(op, size, conc) for op in ("put", "get")
                               for size in QUICK_SIZES for conc in CONCURRENCY}
    for key, c in trio_floor.items():
        assert c["policy"] is None and "error" not in c and "skipped" not in c, c
        for name in ("p50_ms", "p99_ms", "ops_per_s", "mib_per_s"):
            assert _is_figure(c[name]), (key, name, c[name])
        _check_cpu(c)
    hdsd = {(c["op"], c["policy"], c["size_bytes"], c["concurrency"]): c
            for c in cells if c["system"] == "hdsd"}
    expected = {(op, policy, size, conc) for op in ("put", "get")
                for policy in ("each-site", "local") for size in QUICK_SIZES
                for conc in CONCURRENCY}
    assert set(hdsd) == expected  # no 64 MiB and no 1 GiB blob in --quick
    for key, c in hdsd.items():
        for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "ops_per_s",
                     "mib_per_s", "ratio_to_floor", "floor_ms", "p50_vs_trio_floor",
                     "ops_vs_trio_floor"):
            assert _is_figure(c[name]), (key, name, c[name])
        assert c["n"] >= c["concurrency"] and c["n"] % c["concurrency"] == 0
        _check_cpu(c)
        floor_cell = trio_floor[(key[0], key[2], key[3])]
        assert c["p50_vs_trio_floor"] == pytest.approx(c["p50_ms"] / floor_cell["p50_ms"])
        assert c["ops_vs_trio_floor"] == pytest.approx(c["ops_per_s"] /
                                                       floor_cell["ops_per_s"])
        if floor_cell["cpu_ms_per_op"] > 0:
            assert c["cpu_vs_trio_floor"] == pytest.approx(c["cpu_ms_per_op"] /
                                                           floor_cell["cpu_ms_per_op"])
    # CPU is counted in every process that does the work: over all replicated puts, the
    # client, the coordinator and the replica each spent some (10 ms ticks: summed, not per
    # cell, a sure non-zero).
    for system, cells_of in (("hdsd", [c for k, c in hdsd.items()
                                       if k[0] == "put" and k[1] == "each-site"]),
                             ("trio-floor", [c for k, c in trio_floor.items() if k[0] == "put"])):
        for role in ("client", "coordinator", "replica"):
            assert sum(c["cpu_s"][role] for c in cells_of) > 0, (system, role)
    # The emulated RTT is part of the floor of a replicated put, not of a local one.
    put = hdsd[("put", "each-site", 4 * KIB, 1)]
    local = hdsd[("put", "local", 4 * KIB, 1)]
    assert put["floor_ms"] == pytest.approx(local["floor_ms"] + 1.0 + next(
        c for c in cells if c["op"] == "rtt" and c["transport"] == "tcp")["p50_ms"])

    fsyncs = {c["size_bytes"] for c in cells if c["op"] == "fsync" and _is_figure(c["p50_ms"])}
    assert fsyncs == set(QUICK_SIZES)
    rtts = [c for c in cells if c["op"] == "rtt"]
    assert sorted(c["transport"] for c in rtts) == ["tcp", "tls"]
    assert all(_is_figure(c["p50_ms"]) for c in rtts)

    catch = doc["catch_up"]
    assert "error" not in catch, catch
    assert catch["written_mib"] == 4 and catch["backlog_before"]["versions"] > 0
    assert _is_figure(catch["seconds_to_rpo0"]) and _is_figure(catch["catchup_mib_per_s"])
    assert doc["peers"] == {}  # none unless asked
    plots = doc["plots"]
    assert (isinstance(plots, list) and plots and all(Path(p).is_file() for p in plots)) \
        or plots == "skipped: matplotlib is not installed"
    assert not _processes_under(tmp_path)


@pytest.mark.slow
@pytest.mark.e2e
def test_interrupted_run_stops_every_process(tmp_path: Path) -> None:
    proc = _bench("--quick", "--json", str(tmp_path / "x.json"), "--dir", str(tmp_path))
    assert proc.stderr is not None
    try:
        seen = b""
        while b"hdsd each-site: put" not in seen:  # both nodes are up and serving
            line = proc.stderr.readline()
            assert line, f"benchmark ended early: {seen.decode(errors='replace')[-2000:]}"
            seen += line
        assert len(_processes_under(tmp_path)) >= 3  # the bench and its two nodes
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    deadline = time.monotonic() + 30  # reaped children may linger in /proc for an instant
    while (left := _processes_under(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left
    assert not (tmp_path / "x.json").exists()


def test_a_peer_that_cannot_run_is_reported(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no etcd binary anywhere
    import sync_latency

    status, cells = sync_latency.run_peer("etcd", tmp_path, sync_latency.QUICK, b"x" * MIB, {})
    assert status["status"] == "unavailable" and "etcd not found" in status["reason"]
    assert cells == []


@pytest.mark.parametrize("size", [4 * KIB, 64 * KIB, MIB, 64 * MIB, 1 << 30])
@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_every_task_gets_the_same_whole_number_of_ops(size: int, concurrency: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import sync_latency

    for plan in (sync_latency.QUICK, sync_latency.FULL):
        n = sync_latency.ops_for(plan, size, concurrency)
        assert n >= concurrency and n % concurrency == 0
        assert n <= max(plan.max_ops, concurrency) + concurrency


def test_quick_duration_is_one_figure_everywhere() -> None:
    # The README and --help once gave two different figures for the same run.
    help_text = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True,
                               check=True).stdout.decode()
    flat_help = " ".join(help_text.split())
    said = re.search(r"--quick .*?\(([^()]*)\)", flat_help)
    assert said is not None, help_text
    figure = said.group(1)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claims = re.findall(r"`--quick` takes ([^.]*)\.", readme)
    assert claims, "the README no longer says how long --quick takes"
    assert claims == [figure] * len(claims), (claims, figure)
