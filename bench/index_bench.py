"""What the index costs per small version, on the store alone (no network, no node).

    python bench/index_bench.py [--prefill N] [--commits N] [--per-commit K] [--rounds R]
                                [--random-ids] [--json PATH]

A store is filled with *prefill* small versions (random keys in a few buckets, each with a
request id made as the hdsd client makes them, or random ones with ``--random-ids``), then
*commits* commits of *per-commit* new versions each are made one after another
(``commit_sync``: durable and indexed before the next), which is what the group commit of
concurrent small puts gives the log writer. Reports the process CPU per version, and that of
the threads but the caller's (the log writer's: the index update, the log write and fsync; the
caller seals and encodes the records), bytes written to the disk per version
(``/proc/self/io``: the SQLite WAL, the checkpoints and the log) and the index file's size.
Prints JSON; never asserts. Run it before and after an index change, same machine, same
minute: the CPU is noisy on a shared machine, the bytes are not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hdsd.client import new_request_id
from hdsd.pipeline import TenantKeys, TenantNameSealing
from hdsd.store import Store, Version

# Fixed keys: this measures the index, not key management.
SEALING = TenantNameSealing(lambda t: TenantKeys(t, b"\x01" * 32, b"\x02" * 32))


def _io_written() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _other_threads_cpu() -> dict[int, float]:
    """CPU seconds of each of this process's threads but the calling one (the log writer's
    index update, the commit, the fsync), by thread id, from /proc."""
    me = threading.get_native_id()
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in os.listdir("/proc/self/task"):
        if int(task) == me:
            continue
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # ended meanwhile
        out[int(task)] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


def _cpu_since(before: dict[int, float]) -> float:
    """CPU the other threads spent since *before*, thread by thread: a thread that ended
    meanwhile drops out of both ends instead of making the difference negative."""
    now = _other_threads_cpu()
    return sum(cpu - before.get(tid, 0.0) for tid, cpu in now.items())


def version(i: int, random_ids: bool) -> Version:
    key = os.urandom(8).hex()
    return Version("bench", f"bucket{i % 4}", f"data/{key}", i + 1, "n1", size=10,
                   content_hash=b"h" * 32, chunks=(os.urandom(32),), inline=b"0123456789",
                   request_id=os.urandom(16) if random_ids else new_request_id())


def run(directory: str, prefill: int, commits: int, per_commit: int,
        random_ids: bool) -> dict[str, Any]:
    path = os.path.join(directory, "store")
    hlc = 0
    with Store.open(path, sealing=SEALING) as store:
        batch: list[Version] = []
        for _ in range(prefill):
            hlc += 1
            batch.append(version(hlc, random_ids))
            if len(batch) == 2000:
                store.commit_sync(batch)
                batch = []
        if batch:
            store.commit_sync(batch)
        work = []
        for _ in range(commits):
            one = []
            for _ in range(per_commit):
                hlc += 1
                one.append(version(hlc, random_ids))
            work.append(one)
        cpu0, wall0, io0 = time.process_time(), time.perf_counter(), _io_written()
        writer0 = _other_threads_cpu()
        for one in work:
            store.commit_sync(one)
        cpu, wall, io = (time.process_time() - cpu0, time.perf_counter() - wall0,
                         _io_written() - io0)
        writer = _cpu_since(writer0)
    n = commits * per_commit
    index_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                      if f.startswith("index"))
    return {"prefill": prefill, "versions": n, "per_commit": per_commit,
            "cpu_ms_per_version": cpu / n * 1e3, "writer_cpu_ms_per_version": writer / n * 1e3,
            "wall_ms_per_commit": wall / commits * 1e3,
            "bytes_written_per_version": io / n, "index_file_bytes": index_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefill", type=int, default=100_000)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--per-commit", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--random-ids", action="store_true",
                    help="random request ids instead of the client's (time first)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    for _ in range(args.rounds):
        directory = tempfile.mkdtemp(prefix="hdsd-index-bench-",
                                     dir=os.environ.get("HDSD_BENCH_DIR"))
        try:
            results.append(run(directory, args.prefill, args.commits, args.per_commit,
                               args.random_ids))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {"rounds": results,
           "cpu_ms_per_version_min": min(r["cpu_ms_per_version"] for r in results),
           "writer_cpu_ms_per_version_min": min(r["writer_cpu_ms_per_version"]
                                                for r in results),
           "bytes_written_per_version": min(r["bytes_written_per_version"] for r in results)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
