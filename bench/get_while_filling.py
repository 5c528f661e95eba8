"""Does the zero-fill of the log's next segment slow a big streaming get from one node?

    python bench/get_while_filling.py [--big-mib 1024] [--filler-mib 300] [--rounds 3]
                                      [--json PATH] [--dir DIR]

A node prepares its next log segment in a background thread once it starts writing one: it
preallocates it and writes zeros over it (``O_DIRECT``; see ``hdsd/store/_fs.py``), ~the
segment size of disk writes (256 MiB by default) in each node of both sites. After a big put,
the next get of it runs while that fill is going on. This starts the two-site cluster of
``sync_latency.py`` (``each-site``), writes one ``--big-mib`` blob, then per round, in the
same minute: (1) waits until the machine is quiet (no node writing, little dirty page cache),
then gets the blob from the coordinator ("quiet"); (2) puts a blob that ends ``--filler-mib``
MiB past the coordinator's head segment (its rotation starts the next segment's fill), then
gets the blob again at once ("after a put"). Each get's wall time, MiB/s, CPU per MiB by
process and the MiB each node wrote meanwhile are printed and written as JSON (default
``bench/results/get_while_filling.json``). Never asserts; stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sync_latency as sl  # noqa: E402
from _harness import machine_info, print_table, write_json  # noqa: E402
from stream_bench import disk_now, disk_use, threads_now, threads_use  # noqa: E402

import hdsd  # noqa: E402

MIB = sl.MIB


def _meminfo_mib(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _quiet(pids: dict[str, int], limit_s: float = 120.0) -> float:
    """Wait until no node wrote for a second and the dirty page cache is small; seconds
    waited."""
    t0 = time.monotonic()
    nodes = {k: v for k, v in pids.items() if k != "client"}
    last = disk_now(nodes)
    while time.monotonic() - t0 < limit_s:
        await trio.sleep(1.0)
        now = disk_now(nodes)
        still = any(now[k][1] != last[k][1] for k in nodes)
        last = now
        if not still and _meminfo_mib("Dirty") + _meminfo_mib("Writeback") < 64:
            break
    return time.monotonic() - t0


def _machine_ticks() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def _machine_use(before: list[int], after: list[int], seconds: float) -> dict[str, float]:
    """Cores busy (of the machine's) by kind between two :func:`_machine_ticks`."""
    tick = os.sysconf("SC_CLK_TCK")
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: round((a - b) / tick / seconds, 2)
            for n, b, a in zip(names, before, after, strict=True)}


async def _timed_get(client: hdsd.AsyncClient, key: str, size: int, pids: dict[str, int],
                     label: str) -> dict[str, Any]:
    cpu0, io0, m0, th0 = sl.cpu_now(pids), disk_now(pids), _machine_ticks(), threads_now(pids)
    took = await sl._get(client, key, size)
    cpu1, io1, m1, th1 = sl.cpu_now(pids), disk_now(pids), _machine_ticks(), threads_now(pids)
    cpu = sl.cpu_use(cpu0, cpu1, 1, size)
    disk = disk_use(io0, io1)
    row = {"label": label, "seconds": took, "mib_per_s": size / MIB / took,
           "cpu_ms_per_mib": cpu["cpu_ms_per_mib"],
           "cpu_ms_per_mib_by_process": {k: v * 1e3 for k, v in cpu["cpu_s_per_mib"].items()},
           "disk_mib_read_written": disk, "load": os.getloadavg()[0],
           "machine_cores_busy": _machine_use(m0, m1, took),
           "threads_ms_per_mib": threads_use(th0, th1, size)}
    sl.progress(f"  {label}: {row['mib_per_s']:.0f} MiB/s, {row['cpu_ms_per_mib']:.2f} ms "
                f"CPU/MiB, disk MiB (read, written) {disk}, machine cores busy "
                f"{row['machine_cores_busy']}")
    for role in ("client", "coordinator"):
        sl.progress(f"    {role} ms/MiB by thread: " + ", ".join(
            f"{n} {v:.2f}" for n, v in row["threads_ms_per_mib"][role].items()))
    return row


async def run(cluster: sl.Cluster, big: int, filler: int, segment: int,
              rounds: int) -> list[dict[str, Any]]:
    base = os.urandom(MIB)
    rows: list[dict[str, Any]] = []
    pids = cluster.pids()
    async with hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600) as client:
        sl.progress(f"put {big // MIB} MiB")
        await sl._put(client, "big", base, big)
        for r in range(rounds):
            waited = await _quiet(pids)
            sl.progress(f"round {r + 1}: quiet after {waited:.0f} s")
            rows.append(await _timed_get(client, "big", big, pids, "quiet"))
            # Just past the end of the head segment: the rotation, and the next segment's
            # fill, come at the end of the put, so the fill runs during the get.
            head = (await client.status())["store"]["head_offset"]
            size = segment - head + filler
            took = await sl._put(client, f"filler/{r}", base, size)
            sl.progress(f"  put {size / MIB:.0f} MiB: {size / MIB / took:.0f} MiB/s")
            rows.append(await _timed_get(client, "big", big, pids, "after a put"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--filler-mib", type=int, default=8,
                    help="MiB put past the end of the coordinator's head segment")
    ap.add_argument("--segment-mib", type=int, default=256, help="the nodes' segment_mib")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "get_while_filling.json")
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="get-while-filling-", dir=args.dir))
    try:
        with ExitStack() as stack:
            cluster = sl.Cluster(scratch / "cluster", 0.0, stack)
            cluster.start("each-site")
            rows = trio.run(run, cluster, args.big_mib * MIB, args.filler_mib * MIB,
                            args.segment_mib * MIB, args.rounds)
            cluster.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(["get", "MiB/s", "CPU ms/MiB", "client / coord / replica ms/MiB",
                 "MiB written coord, replica", "load"],
                [[r["label"], f"{r['mib_per_s']:.0f}", f"{r['cpu_ms_per_mib']:.2f}",
                  " / ".join(f"{r['cpu_ms_per_mib_by_process'][k]:.2f}"
                             for k in ("client", "coordinator", "replica")),
                  f"{r['disk_mib_read_written']['coordinator'][1]:.0f}, "
                  f"{r['disk_mib_read_written']['replica'][1]:.0f}", f"{r['load']:.1f}"]
                 for r in rows])
    write_json(args.json, {"machine": machine_info(), "big_mib": args.big_mib,
                           "filler_mib": args.filler_mib, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
