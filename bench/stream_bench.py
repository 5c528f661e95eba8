"""The streamed (above ``inline_max``) put and get paths alone: a few cells of
``sync_latency.py`` plus one big streaming put and its streaming get, with CPU per process.

    python bench/stream_bench.py [--big-mib 1024] [--rounds 1] [--cells 64k1,64k16,1m16]
                                 [--json PATH] [--dir DIR] [--perf DIR] [--page-probe MIB]

Starts the same two-site cluster as ``sync_latency.py`` (``each-site``), then per round: the
cells asked for (put then get of what was put; ``64k16`` is 64 KiB x16), one streaming put of
``--big-mib`` MiB (``each-site``: durable in both sites before its acknowledgement) and one
streaming get of it from the coordinator (a single node: the get reads its own copy). Each
figure carries the CPU seconds that the client, the coordinator and the replica spent, per op
and per MiB (from /proc: 10 ms ticks), which is steadier than throughput on a shared machine.
Never asserts; prints a table and writes JSON (default ``bench/results/stream_bench.json``).

Each process's CPU of the big put and get is also split into user and system time (the
``/proc`` fields): the system part is where the VM's own state shows. Writing into page-cache
pages that this VM never touched before cost the kernel ~2 ms of CPU per MiB here, into pages
freed earlier 0.3-0.5, rewriting cached pages ~0.1 (most likely the host backing each guest
page at its first touch), so a freshly booted machine charges each node's log writes several
times what a long-running one does. ``--page-probe MIB`` measures it before the cluster
starts: MIB written to a new scratch file, then the same MIB again over its cached pages, CPU
ms per MiB of each pass (in the JSON as ``page_probe``).

``--perf DIR`` samples the three processes with ``perf record`` (Linux perf, as root or with
``perf_event_paranoid`` low enough) during the big put and during its get, keeps the files in
DIR and prints each process's CPU per MiB by shared object (the interpreter, the kernel, libc's
copies, libcrypto's TLS, blake3, the AEAD, zstd...) and its heaviest symbols: where a streamed
MiB goes, without touching hdsd.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sync_latency as sl  # noqa: E402
from _harness import machine_info, print_table, thread_cpu_seconds, write_json  # noqa: E402

import hdsd  # noqa: E402

KIB, MIB = sl.KIB, sl.MIB
CELLS = {"64k1": (64 * KIB, 1), "64k16": (64 * KIB, 16), "1m1": (MIB, 1), "1m16": (MIB, 16),
         "4k16": (4 * KIB, 16)}
PLAN = sl.Plan(sizes=(), concurrency=(), bytes_per_cell=16 * MIB, max_ops=300, floor_ops=0,
               rtt_ops=0, catchup_mib=0, big_blob=None, profile_puts=0)


def disk_now(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Bytes each process made the block layer read and write so far (``/proc/<pid>/io``:
    a read served by the page cache counts nothing)."""
    out: dict[str, tuple[int, int]] = {}
    for role, pid in pids.items():
        fields = dict(line.split(": ") for line in
                      Path(f"/proc/{pid}/io").read_text().splitlines())
        out[role] = (int(fields["read_bytes"]), int(fields["write_bytes"]))
    return out


def disk_use(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
             ) -> dict[str, list[float]]:
    """MiB read and written per process between two :func:`disk_now` snapshots."""
    return {role: [round((after[role][i] - before[role][i]) / MIB, 1) for i in (0, 1)]
            for role in after}


def user_sys_now(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds so far of each process (all its threads; ``/proc/<pid>/stat``
    fields 14 and 15, 10 ms ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float]] = {}
    for role, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[role] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def user_sys_use(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                 size: int) -> dict[str, list[float]]:
    """ms of user and of system CPU per MiB of each process between two snapshots."""
    mib = size / MIB
    return {role: [round((after[role][i] - before[role][i]) * 1e3 / mib, 2) for i in (0, 1)]
            for role in after}


def page_probe(directory: Path, mib: int) -> dict[str, float]:
    """CPU ms per MiB of writing *mib* MiB into a new file (fresh page-cache pages), then of
    writing them again over the same, cached pages; the file is removed. Neither pass is
    synced: the page cache's own cost, not the disk's."""
    block = os.urandom(MIB)
    path = directory / "page-probe"
    out: dict[str, float] = {}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for name in ("new_pages", "cached_pages"):
            os.lseek(fd, 0, os.SEEK_SET)
            t0 = time.process_time()
            for _ in range(mib):
                os.write(fd, block)
            out[f"{name}_ms_per_mib"] = round((time.process_time() - t0) * 1e3 / mib, 3)
    finally:
        os.close(fd)
        path.unlink()
    return out


def threads_now(pids: dict[str, int]) -> dict[str, dict[tuple[int, str], float]]:
    """CPU seconds so far of every thread of each process, by (thread id, OS thread name);
    the main thread (the trio loop) is named ``main``."""
    out: dict[str, dict[tuple[int, str], float]] = {}
    for role, pid in pids.items():
        per: dict[tuple[int, str], float] = {}
        for tid, used in thread_cpu_seconds(pid).items():
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            per[(tid, "main" if tid == pid else name)] = used
        out[role] = per
    return out


def threads_use(before: dict[str, dict[tuple[int, str], float]],
                after: dict[str, dict[tuple[int, str], float]],
                size: int) -> dict[str, dict[str, float]]:
    """ms of CPU per MiB of each process's threads between two snapshots, by thread name
    (threads of one name summed; a thread that ended meanwhile is not counted)."""
    out: dict[str, dict[str, float]] = {}
    for role, per in after.items():
        by_name: dict[str, float] = {}
        for (tid, name), used in per.items():
            spent = used - before[role].get((tid, name), 0.0)
            if spent > 0:
                by_name[name] = by_name.get(name, 0.0) + spent * 1e3 / (size / MIB)
        out[role] = dict(sorted(by_name.items(), key=lambda kv: -kv[1]))
    return out


def perf_start(pids: dict[str, int], out: Path | None, op: str) -> list[subprocess.Popen[bytes]]:
    """``perf record`` of each process into ``out/<op>-<role>.perf`` (none without *out*)."""
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(pid),
                              "-o", str(out / f"{op}-{role}.perf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, pid in pids.items()]


def perf_stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.wait(timeout=60)


def perf_by_dso(path: Path, ms_per_mib: float, top: int = 8) -> list[tuple[str, float]]:
    """The shared objects of a ``perf record`` file, each as its share of *ms_per_mib*."""
    report = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort",
                             "dso", "--stdio"], capture_output=True, text=True, timeout=300)
    rows: list[tuple[str, float]] = []
    for line in report.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((parts[1], float(parts[0][:-1]) * ms_per_mib / 100))
    return rows[:top]


def perf_by_symbol(path: Path, ms_per_mib: float, top: int = 12) -> list[tuple[str, float]]:
    """The heaviest symbols of a ``perf record`` file (``dso:symbol``), each as its share of
    *ms_per_mib*: which copy, cipher or kernel path a shared object's time is."""
    report = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort",
                             "dso,sym", "--stdio"], capture_output=True, text=True, timeout=300)
    rows: list[tuple[str, float]] = []
    for line in report.stdout.splitlines():
        # "  27.52%  [kernel.kallsyms]  [k] copy_folio_from_iter_atomic"
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((f"{parts[1]}:{parts[3].strip()}",
                         float(parts[0][:-1]) * ms_per_mib / 100))
    return rows[:top]


async def run_round(cluster: sl.Cluster, cells: Sequence[str], big: int, base: bytes,
                    threads: dict[str, Any], perf: Path | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    keep: dict[tuple[str, str, int, int], list[float]] = {}
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600)) for _ in range(16)]
        first = clients[0]
        for c in clients:
            await c.status()
        for i in range(20):
            await sl._put(first, f"warm/{i}", base, 64 * KIB)

        async def put(client: hdsd.AsyncClient, key: str, size: int) -> float:
            return await sl._put(client, key, base, size)

        target = sl.Target("hdsd", "each-site", clients, put, sl._get, cluster.pids(),
                           cluster.check)
        for name in cells:
            size, conc = CELLS[name]
            out += await sl._measure_cell(target, PLAN, size, conc, keep)
        if big:
            pids = cluster.pids()
            key = f"big/{time.monotonic_ns()}"
            sl.progress(f"hdsd each-site: one streaming put of {big // MIB} MiB")
            sampling = perf_start(pids, perf, "put")
            cpu0, th0, io0 = sl.cpu_now(pids), threads_now(pids), disk_now(pids)
            us0 = user_sys_now(pids)
            took = await sl._put(first, key, base, big)
            cpu1, th1, io1 = sl.cpu_now(pids), threads_now(pids), disk_now(pids)
            us1 = user_sys_now(pids)
            perf_stop(sampling)
            sl.progress(f"  {big / MIB / took:.0f} MiB/s; streaming get")
            sampling = perf_start(pids, perf, "get")
            cpu_g, th_g = sl.cpu_now(pids), threads_now(pids)
            got_s = await sl._get(first, key, big)
            cpu2, th2, io2 = sl.cpu_now(pids), threads_now(pids), disk_now(pids)
            us2 = user_sys_now(pids)
            perf_stop(sampling)
            threads["put"] = threads_use(th0, th1, big)
            threads["get"] = threads_use(th_g, th2, big)
            for op, s, cpu, disk, us in (("put", took, sl.cpu_use(cpu0, cpu1, 1, big),
                                          disk_use(io0, io1), user_sys_use(us0, us1, big)),
                                         ("get", got_s, sl.cpu_use(cpu_g, cpu2, 1, big),
                                          disk_use(io1, io2), user_sys_use(us1, us2, big))):
                out.append(sl.cell("hdsd", op, "each-site", big, 1,
                                   f"single streaming {op} {big // MIB} MiB",
                                   samples=[s], elapsed=s, disk_mib=disk,
                                   user_sys_ms_per_mib=us, **cpu))
                sl.progress(f"  {op}: disk MiB read / written by process {disk}")
                sl.progress(f"  {op}: {big / MIB / s:.0f} MiB/s, "
                            f"{out[-1]['cpu_ms_per_mib']:.2f} ms CPU/MiB")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stream_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-mib", type=int, default=1024, help="the big blob (0: none)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cells", default="64k1,64k16,1m16",
                    help=f"comma-separated, of {', '.join(CELLS)} (empty: none)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "stream_bench.json")
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    ap.add_argument("--perf", type=Path, default=None,
                    help="perf record the three processes during the big put and get into DIR")
    ap.add_argument("--page-probe", type=int, default=0, metavar="MIB",
                    help="first measure the CPU of writing MIB MiB into new, then cached, "
                         "page-cache pages (0: not)")
    args = ap.parse_args(argv)
    if args.perf is not None and shutil.which("perf") is None:
        ap.error("--perf needs Linux perf (the `perf` command)")
    cells = [c for c in args.cells.split(",") if c]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        ap.error(f"unknown cell(s) {', '.join(unknown)}")
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="stream-bench-", dir=args.dir))
    base = os.urandom(MIB)
    results: list[dict[str, Any]] = []
    threads: dict[str, Any] = {}
    probe: dict[str, float] = {}
    try:
        if args.page_probe > 0:
            probe = page_probe(scratch, args.page_probe)
        with ExitStack() as stack:
            cluster = sl.Cluster(scratch / "cluster", 0.0, stack)
            cluster.start("each-site")
            for _ in range(args.rounds):
                results += trio.run(run_round, cluster, cells, args.big_mib * MIB, base,
                                    threads, args.perf)
            cluster.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for r in results:
        per = r.get("cpu_s_per_mib") or {}
        rows.append([r["label"], f"{r['ops_per_s'] or 0:.0f}", f"{r['mib_per_s'] or 0:.1f}",
                     f"{r['p50_ms'] or 0:.2f}", f"{r.get('cpu_ms_per_op', 0):.2f}",
                     f"{r.get('cpu_ms_per_mib', 0):.2f}",
                     " / ".join(f"{per.get(k, 0) * 1e3:.2f}"
                                for k in ("client", "coordinator", "replica"))])
    print_table(["cell", "ops/s", "MiB/s", "p50 ms", "CPU ms/op", "CPU ms/MiB",
                 "ms/MiB client / coord / replica"], rows)
    if probe:
        print(f"\npage cache, CPU ms per MiB written: new pages {probe['new_pages_ms_per_mib']}, "
              f"cached pages {probe['cached_pages_ms_per_mib']}")
    for r in results:
        if "user_sys_ms_per_mib" in r:
            print(f"\n{r['label']}, ms CPU per MiB user / system: " + ", ".join(
                f"{role} {u:.2f} / {k:.2f}" for role, (u, k) in r["user_sys_ms_per_mib"].items()))
    for op, roles in threads.items():
        print(f"\nthe big {op}, ms CPU per MiB by thread (last round):")
        for role, by_name in roles.items():
            print(f"  {role:12} " + ", ".join(f"{n} {v:.2f}" for n, v in by_name.items()))
    perf_rows: dict[str, dict[str, float]] = {}
    perf_syms: dict[str, dict[str, float]] = {}
    if args.perf is not None and args.big_mib:
        for r in results[-2:]:  # the last round's big put and get
            op = r["op"]
            for role, per_mib in (r.get("cpu_s_per_mib") or {}).items():
                path = args.perf / f"{op}-{role}.perf"
                if role == "total" or not path.exists():
                    continue
                by_dso = perf_by_dso(path, per_mib * 1e3)
                by_sym = perf_by_symbol(path, per_mib * 1e3)
                perf_rows[f"{op} {role}"] = dict(by_dso)
                perf_syms[f"{op} {role}"] = dict(by_sym)
                print(f"\nthe big {op}, {role}: ms CPU per MiB by shared object (perf)")
                for dso, ms in by_dso:
                    print(f"  {ms:6.2f}  {dso}")
                print("  heaviest symbols:")
                for sym, ms in by_sym:
                    print(f"  {ms:6.2f}  {sym}")
    write_json(args.json, {"machine": machine_info(), "results": results,
                           "big_blob_threads_ms_per_mib": threads,
                           "big_blob_perf_ms_per_mib": perf_rows,
                           "big_blob_perf_symbols_ms_per_mib": perf_syms,
                           "page_probe": probe})
    return 0


if __name__ == "__main__":
    sys.exit(main())
