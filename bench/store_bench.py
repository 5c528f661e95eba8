"""Benchmark of the log-structured store, with the physical floor measured in the same run.

    python bench/store_bench.py [--quick] [--versions N] [--json PATH] [--dir DIR]

1. floor: raw ``os.pwrite`` + ``os.fdatasync`` of one frame-sized 4 KiB record at a time into a
   preallocated file on the same disk (what one durable append cannot beat), zero-filled like
   the store's segments, and fallocate-only for comparison;
2. one trio writer, durable 4 KiB chunk appends: latency p50/p99 and ratio to the floor;
3. 16 concurrent trio writers of 4 KiB: durable appends/s (group commit);
4. reopen time of a store holding N small versions (the index is used, the log not replayed).

Prints a table and writes JSON (default ``bench/results/store_bench.json``). Never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fsync_floor, pct

from hdsd.pipeline import TenantKeys, TenantNameSealing
from hdsd.store import ChunkRecord, Store, Version
from hdsd.store import _format as F
from hdsd.store._records import encode_record

# Fixed keys: benchmarks measure the sealing cost, not key management.
SEALING = TenantNameSealing(lambda t: TenantKeys(t, b"\x01" * 32, b"\x02" * 32))

HERE = Path(__file__).resolve().parent
PAYLOAD = 4096


def chunk(i: int) -> ChunkRecord:
    cid = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest()
    return ChunkRecord("bench", cid, cid * (PAYLOAD // 32))


def floor(directory: str, n: int, *, zero_filled: bool) -> dict[str, Any]:
    """The raw pwrite + fdatasync of one frame-sized record (what one durable append cannot
    beat), into a preallocated file on the same disk."""
    size = F.FRAME_HEADER_SIZE + encode_record(chunk(0)).size
    samples = fsync_floor(directory, size, n, zero_filled=zero_filled)
    return {"bytes": size, "n": n, "zero_filled": zero_filled,
            "p50_ms": pct(samples, 0.5) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3}


async def one_writer(store: Store, n: int) -> dict[str, Any]:
    records = [chunk(1_000_000 + i) for i in range(n)]
    samples = []
    for r in records:
        t0 = time.perf_counter()
        await store.commit([r])
        samples.append(time.perf_counter() - t0)
    return {"n": n, "p50_ms": pct(samples, 0.5) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3}


async def concurrent(store: Store, writers: int, per_writer: int) -> dict[str, Any]:
    records = [[chunk(2_000_000 + w * per_writer + i) for i in range(per_writer)]
               for w in range(writers)]
    before = store.statistics()

    async def writer(mine: list[ChunkRecord]) -> None:
        for r in mine:
            await store.commit([r])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for mine in records:
            nursery.start_soon(writer, mine)
    elapsed = time.perf_counter() - t0
    after = store.statistics()
    commits = after.commits - before.commits
    return {"writers": writers, "appends": commits, "seconds": elapsed,
            "appends_per_s": commits / elapsed,
            "fsyncs": after.fsyncs - before.fsyncs,
            "commits_per_fsync": commits / max(1, after.fsyncs - before.fsyncs)}


def reopen(directory: str, n: int) -> dict[str, Any]:
    path = os.path.join(directory, "reopen")
    t0 = time.perf_counter()
    with Store.open(path, sealing=SEALING) as store:
        batch: list[ChunkRecord | Version] = []
        for i in range(n):
            batch.append(Version("bench", f"b{i % 4}", f"key/{i:09d}", i + 1, "n1", size=10,
                                 content_hash=b"h" * 32, chunks=(b"c" * 32,),
                                 inline=b"0123456789"))
            if len(batch) == 2000:
                store.commit_sync(batch)
                batch = []
        if batch:
            store.commit_sync(batch)
    fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    with Store.open(path, sealing=SEALING) as store:
        opened = time.perf_counter() - t0
        current = store.current("bench", "b0", f"key/{0:09d}")
        replayed = store.statistics().replayed_records
    return {"versions": n, "fill_seconds": fill, "reopen_seconds": opened,
            "replayed_records": replayed, "lookup_ok": current is not None}


WARM_SEGMENT = 32 << 20


async def run_store(directory: str, n_one: int, per_writer: int) -> dict[str, Any]:
    # Steady state: the first segment of a fresh store is only fallocate'd (zero-filling 256 MiB
    # at creation would stall open); later ones are zero-filled ahead by a background thread.
    # Fill the first segment, then let the spare after the next one finish before measuring.
    with Store.open(os.path.join(directory, "store"), segment_bytes=WARM_SEGMENT,
                    sealing=SEALING) as store:
        big = [ChunkRecord("bench", chunk(3_000_000 + i).chunk_id, os.urandom(1 << 20))
               for i in range(WARM_SEGMENT >> 20)]
        for r in big:
            await store.commit([r])
        await trio.sleep(1.0)
        one = await one_writer(store, n_one)
        many = await concurrent(store, 16, per_writer)
        segment = store.statistics().head_segment
    return {"one_writer": one, "concurrent": many, "segment_bytes": WARM_SEGMENT,
            "measured_in_segment": segment}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--versions", type=int, default=None, help="versions for the reopen test")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "store_bench.json")
    ap.add_argument("--dir", default=str(HERE / "results"), help="scratch dir (same disk)")
    args = ap.parse_args()
    n_one = 1000 if args.quick else 5000
    per_writer = 300 if args.quick else 1500
    versions = args.versions if args.versions is not None else (
        100_000 if args.quick else 1_000_000)
    os.makedirs(args.dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="store-bench-", dir=args.dir)
    try:
        fl = floor(scratch, n_one, zero_filled=True)
        fl_alloc = floor(scratch, n_one, zero_filled=False)
        res = trio.run(run_store, scratch, n_one, per_writer)
        ro = reopen(scratch, versions)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    one, many = res["one_writer"], res["concurrent"]
    result = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "quick": args.quick, "floor": fl, "floor_fallocate_only": fl_alloc,
        "one_writer": one, "concurrent": many, "store_segment_bytes": res["segment_bytes"],
        "reopen": ro, "ratio_p50_to_floor": one["p50_ms"] / fl["p50_ms"],
    }
    rows = [
        ("floor: pwrite+fdatasync", f"{fl['bytes']} B", f"p50 {fl['p50_ms']:.3f} ms",
         f"p99 {fl['p99_ms']:.3f} ms  (zero-filled file)"),
        ("floor, fallocate only", f"{fl_alloc['bytes']} B", f"p50 {fl_alloc['p50_ms']:.3f} ms",
         f"p99 {fl_alloc['p99_ms']:.3f} ms"),
        ("durable append, 1 writer", f"{PAYLOAD} B", f"p50 {one['p50_ms']:.3f} ms",
         f"p99 {one['p99_ms']:.3f} ms  ({result['ratio_p50_to_floor']:.2f}x floor; target 1.5x)"),
        ("16 concurrent writers", f"{PAYLOAD} B", f"{many['appends_per_s']:,.0f} appends/s",
         f"{many['commits_per_fsync']:.1f} commits/fsync (target 10,000/s)"),
        ("reopen", f"{ro['versions']:,} versions", f"{ro['reopen_seconds']:.3f} s",
         f"fill {ro['fill_seconds']:.1f} s (target 10 s)"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
