"""Chunk pipeline throughput, with the raw primitives measured in the same run as the floor.

    python bench/pipeline_bench.py [--seconds 0.6] [--json PATH]

Measures, on 1 MiB chunks of incompressible and image-like data: keyed BLAKE3, XChaCha20-
Poly1305 encrypt and zstd-1 alone (one thread: the floor), ChunkCodec.seal/open on one thread,
and seal_stream / concurrent open_in_thread using the pipeline's worker threads (both cores).
Prints a table and writes JSON (default bench/results/pipeline_bench.json). Never asserts.
Calls hdsd.pipeline.tune_allocator() first, as the server does; --no-tune-malloc shows the
cost of glibc's defaults (page faults on every fresh 1 MiB buffer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import blake3
import nacl.bindings
import trio
import zstandard

from hdsd.pipeline import ChunkCodec, TenantKeys, open_in_thread, seal_stream, tune_allocator
from hdsd.pipeline._stream import WORKER_THREADS

MIB = 1 << 20
CHUNK = MIB


def image_like(seed: int) -> bytes:
    """A 16-bit CT-like slice: air around an ellipse of smooth tissue with 2 bits of sensor
    noise (zstd-1 ratio ≈ 3.4)."""
    rnd = random.Random(seed)
    width, rows = 512, CHUNK // 1024
    cx, cy, radius = 256 + rnd.randrange(-20, 20), rows // 2, 200 + rnd.randrange(40)
    noise = rnd.randbytes(width * rows)
    air = (24).to_bytes(2, "little")
    out = bytearray()
    for y in range(rows):
        dy = (y - cy) * 0.5
        half = int(math.sqrt(max(0.0, radius * radius - dy * dy)))
        line = bytearray(air * width)
        for x in range(max(0, cx - half), min(width, cx + half)):
            value = 1000 + ((x * 3 + y) >> 2) + (noise[y * width + x] & 0x03)
            line[2 * x] = value & 0xFF
            line[2 * x + 1] = value >> 8
        out += line
    return bytes(out)


def timed(fn: Callable[[], int], seconds: float) -> float:
    """Run *fn* (returns bytes processed) repeatedly for about *seconds*; MiB/s."""
    fn()  # warm up: thread-local zstd contexts, page faults
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / MIB / elapsed


def bench_kind(name: str, chunks: list[bytes], seconds: float) -> dict[str, float]:
    keys = TenantKeys.generate("bench")
    codec = ChunkCodec(keys, compression_level=1)
    key, nonce = keys.data_key, os.urandom(24)
    comp = zstandard.ZstdCompressor(level=1)
    sealed = [codec.seal(c) for c in chunks]
    size = sum(len(c) for c in chunks)

    def each(op: Callable[[bytes], object]) -> Callable[[], int]:
        def run() -> int:
            for chunk in chunks:
                op(chunk)
            return size

        return run

    r: dict[str, float] = {}
    r["floor blake3 keyed"] = timed(
        each(lambda c: blake3.blake3(c, key=keys.dedup_key).digest()), seconds)
    r["floor xchacha20 encrypt"] = timed(each(
        lambda c: nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(c, b"", nonce, key)),
        seconds)
    r["floor zstd-1 compress"] = timed(each(comp.compress), seconds)
    r["floor serial sum, plain size"] = 1 / sum(1 / r[k] for k in list(r))
    r["seal, 1 thread"] = timed(each(codec.seal), seconds)

    def open_all() -> int:
        for s in sealed:
            codec.open(s.chunk_id, s.payload)
        return size

    r["open, 1 thread"] = timed(open_all, seconds)

    n_stream = max(8, int(r["seal, 1 thread"] * WORKER_THREADS * seconds / (size / MIB)))

    async def stream_run() -> float:
        async def source() -> AsyncIterator[bytes]:
            for _ in range(n_stream):
                for chunk in chunks:
                    yield chunk

        start = time.perf_counter()
        async for _ in seal_stream(codec, source(), chunk_size=CHUNK, max_in_flight=4):
            pass
        return n_stream * size / MIB / (time.perf_counter() - start)

    r[f"seal_stream, {WORKER_THREADS} workers"] = trio.run(stream_run)

    async def open_run() -> float:
        rounds = max(4, int(r["open, 1 thread"] * WORKER_THREADS * seconds / (size / MIB)))
        lanes = WORKER_THREADS * 2
        start = time.perf_counter()

        async def lane(i: int) -> None:
            for _ in range(rounds):
                for s in sealed[i::lanes]:
                    await open_in_thread(codec, s.chunk_id, s.payload)

        async with trio.open_nursery() as nursery:
            for i in range(lanes):
                nursery.start_soon(lane, i)
        return rounds * size / MIB / (time.perf_counter() - start)

    r[f"open_in_thread, {WORKER_THREADS} workers"] = trio.run(open_run)
    ratio = size / sum(len(s.payload) for s in sealed)
    print(f"\n{name}: {len(chunks)} x 1 MiB chunks, stored ratio {ratio:.2f}")
    for label, value in r.items():
        print(f"  {label:<32} {value:9.0f} MiB/s")
    r["stored ratio"] = ratio
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.6, help="per measurement")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results"
                        / "pipeline_bench.json")
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="keep glibc malloc defaults (shows the page-fault cost)")
    args = parser.parse_args()
    tuned = False if args.no_tune_malloc else tune_allocator()
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, zstandard "
          f"{zstandard.__version__}, libsodium via PyNaCl, blake3 {blake3.__version__}, "
          f"malloc tuned: {tuned}")
    results = {
        "incompressible": bench_kind(
            "incompressible", [os.urandom(CHUNK) for _ in range(8)], args.seconds),
        "image-like": bench_kind(
            "image-like", [image_like(i) for i in range(8)], args.seconds),
    }
    report = {
        "bench": "pipeline",
        "unit": "MiB/s",
        "chunk_size": CHUNK,
        "seconds_per_measurement": args.seconds,
        "cpus": os.cpu_count(),
        "malloc_tuned": tuned,
        "python": sys.version.split()[0],
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {args.json}")


if __name__ == "__main__":
    main()
