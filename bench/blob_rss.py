"""Peak memory while storing one huge generated blob: pipeline + store, no network.

    python bench/blob_rss.py [--gib 4] [--dir DIR] [--json PATH]

Generates an incompressible stream on the fly (never held whole), cuts, hashes, compresses and
encrypts it on both cores (`seal_stream`), commits every chunk and the version record to a real
store with fsync, and reports the process's peak RSS (VmHWM) before and after, the throughput,
and the fdatasync floor for 1 MiB in the same run. Target (issue 2): ≤ 200 MiB RSS for 4 GiB.
Prints a table and writes JSON (default bench/results/blob_rss.json). Never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fsync_floor, latency_ms, machine_info, print_table, write_json

from hdsd.cluster import HybridClock
from hdsd.pipeline import ChunkCodec, TenantKeys, TenantNameSealing, seal_stream, tune_allocator
from hdsd.store import ChunkRecord, Store, Version

# Fixed keys: benchmarks measure the sealing cost, not key management.
SEALING = TenantNameSealing(lambda t: TenantKeys(t, b"\x01" * 32, b"\x02" * 32))

MIB = 1 << 20


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


async def generated(total: int) -> AsyncIterator[bytes]:
    base = hashlib.shake_256(b"hdsd").digest(MIB)
    for i in range(total // MIB):
        k = (i * 4099) % MIB
        yield base[k:] + base[:k]  # distinct, incompressible 1 MiB pieces


async def store_blob(directory: Path, total: int) -> dict[str, float]:
    codec = ChunkCodec(TenantKeys.generate("bench"))
    hasher = codec.content_hasher()
    ids: list[bytes] = []
    with Store.open(directory / "store", sealing=SEALING) as store:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            limiter = trio.Semaphore(4)

            async def commit(record: ChunkRecord) -> None:
                try:
                    await store.commit([record])
                finally:
                    limiter.release()

            async for sealed in seal_stream(codec, generated(total), hasher=hasher):
                await limiter.acquire()
                ids.append(sealed.chunk_id)
                nursery.start_soon(commit, ChunkRecord("bench", sealed.chunk_id, sealed.payload))
        await store.commit([Version(tenant="bench", bucket="b", key="huge",
                                    hlc=HybridClock().now(), node="bench", size=total,
                                    content_hash=hasher.digest(), chunks=tuple(ids),
                                    chunk_size=MIB)])
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "mib_per_s": total / MIB / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" /
                                              "blob_rss.json"))
    args = parser.parse_args()
    tune_allocator()
    total = int(args.gib * 1024) * MIB
    before = vm_hwm_kib()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        floor = latency_ms(fsync_floor(tmp, MIB, 50))
        result = trio.run(store_blob, Path(tmp), total)
    peak = vm_hwm_kib()
    doc = {"machine": machine_info(), "blob_bytes": total, "peak_rss_kib": peak,
           "rss_before_kib": before, **result, "floor_fsync_1mib": floor,
           "results": [{"system": "hdsd", "op": "put", "policy": None, "size_bytes": total,
                        "concurrency": 1, "p50_ms": None, "p99_ms": None, "ops_per_s": None,
                        "mib_per_s": round(result["mib_per_s"], 1),
                        "peak_rss_mib": round(peak / 1024, 1)}]}
    print_table(["measure", "value"], [
        ["blob", f"{total / MIB / 1024:.1f} GiB incompressible"],
        ["peak RSS", f"{peak / 1024:.1f} MiB (before the blob: {before / 1024:.1f} MiB)"],
        ["throughput", f"{result['mib_per_s']:.0f} MiB/s (seal on 2 cores + store + fsync)"],
        ["floor fdatasync 1 MiB p50", f"{floor['p50_ms']:.3f} ms"],
    ])
    write_json(Path(args.json), doc)


if __name__ == "__main__":
    main()
