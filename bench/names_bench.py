"""Cost of sealing names at rest: the put hot path and listings, before and after.

    python bench/names_bench.py [--quick] [--keys N] [--json PATH] [--dir DIR]

Runs against whichever ``hdsd`` is imported, so the same script measures the clear index
(an older checkout on ``PYTHONPATH``) and the sealed one:

1. encode: CPU per small version record on the caller's thread (sealing happens there);
2. commit: 16 concurrent trio writers of small inline versions, durable puts/s and per-commit
   latency (the store's whole put path: encode, group commit + fdatasync, index apply);
3. point lookups: ``current()`` of random keys, µs each;
4. listing: every key of a bucket of N keys (default 100,000) in pages of 1,000, the first
   time after open (cold: the sealed index opens every name into its cache) and again (warm);
5. a restart with the node's warm-up (``Store.warm_listings``, run by a node at start in a
   worker thread): how long the warm-up takes, the first listing once it is done, and the
   first listing sent right after the open, while the warm-up runs (it waits for that build).

Prints a table and writes JSON (default ``bench/results/names_bench.json``). Never asserts.
The machine is shared: compare figures of one run, or ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, pct, print_table, write_json

import hdsd
from hdsd.store import Store, Version
from hdsd.store._records import encode_record

HERE = Path(__file__).resolve().parent
SEALED = "sealing" in inspect.signature(Store.open).parameters
TENANT = "bench"
BUCKET = "patients-2026"


def _sealing() -> Any:
    from hdsd.pipeline import TenantKeys, TenantNameSealing
    keys = TenantKeys(TENANT, b"\x01" * 32, b"\x02" * 32)  # one key set, as a node caches it
    return TenantNameSealing(lambda t: keys if t == TENANT else None)


SEALING = _sealing() if SEALED else None


def open_store(path: str) -> Store:
    kwargs: dict[str, Any] = {"sealing": SEALING} if SEALED else {}
    return Store.open(path, segment_bytes=64 << 20, **kwargs)


def version(i: int, hlc: int) -> Version:
    payload = hashlib.blake2b(i.to_bytes(8, "little")).digest()
    key = f"patient-{i:07d}/compte-rendu-{i % 13}.pdf"
    return Version(tenant=TENANT, bucket=BUCKET, key=key, hlc=hlc, node="n1",
                   size=len(payload), content_hash=payload[:32], chunks=(payload[:32],),
                   inline=payload, metadata={"service": "cardiologie"},
                   request_id=os.urandom(16))


def bench_encode(n: int) -> dict[str, Any]:
    records = [version(i, i + 1) for i in range(n)]
    encode: Any = encode_record  # one argument before names were sealed, two after
    args = (SEALING,) if SEALED else ()
    started = time.perf_counter()
    for r in records:
        encode(r, *args)
    seconds = time.perf_counter() - started
    return {"n": n, "us_per_version": seconds / n * 1e6}


async def bench_commit(store: Store, writers: int, per_writer: int, base: int
                       ) -> dict[str, Any]:
    lat: list[float] = []

    async def writer(w: int) -> None:
        for j in range(per_writer):
            i = base + w * per_writer + j
            t0 = time.perf_counter()
            await store.commit([version(i, i + 1)])
            lat.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)
    seconds = time.perf_counter() - started
    n = writers * per_writer
    return {"writers": writers, "puts": n, "puts_per_s": n / seconds,
            "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def fill(store: Store, n: int, base: int) -> None:
    batch = 1000
    for start in range(0, n, batch):
        store.commit_sync([version(base + i, base + i + 1)
                           for i in range(start, min(n, start + batch))])


def bench_lookups(store: Store, keys: int, n: int) -> dict[str, Any]:
    rng = random.Random(7)
    picks = [version(rng.randrange(keys), 1).key for _ in range(n)]
    started = time.perf_counter()
    for key in picks:
        assert store.current(TENANT, BUCKET, key) is not None
    return {"n": n, "us_per_lookup": (time.perf_counter() - started) / n * 1e6}


FIRST_PAGE: list[float] = []  # seconds to the first page of each list_all, in order


def list_all(store: Store) -> tuple[int, float]:
    started = time.perf_counter()
    after, count = "", 0
    while True:
        page = store.list_current(TENANT, BUCKET, after=after, limit=1000)
        if not after:
            FIRST_PAGE.append(time.perf_counter() - started)
        if not page:
            return count, time.perf_counter() - started
        count += len(page)
        after = page[-1].key


def run(directory: str, keys: int, writers: int, per_writer: int) -> dict[str, Any]:
    path = os.path.join(directory, "store")
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {"sealed": SEALED, "hdsd": os.path.dirname(hdsd.__file__)}
    out["encode"] = bench_encode(20_000)
    with open_store(path) as store:
        out["commit"] = trio.run(bench_commit, store, writers, per_writer, 10_000_000)
        started = time.perf_counter()
        fill(store, keys, 0)
        out["fill_seconds"] = time.perf_counter() - started
    with open_store(path) as store:  # a fresh open: listing caches (if any) are cold
        cold_n, cold = list_all(store)
        warm_n, warm = list_all(store)
        out["listing"] = {"keys": cold_n, "cold_seconds": cold, "warm_seconds": warm,
                          "warm_keys": warm_n, "cold_first_page_seconds": FIRST_PAGE[-2],
                          "warm_first_page_seconds": FIRST_PAGE[-1]}
        out["lookups"] = bench_lookups(store, keys, 5000)
    if hasattr(Store, "warm_listings"):
        with open_store(path) as store:  # a restart: the warm-up, then the first listing
            started = time.perf_counter()
            buckets, names = store.warm_listings(lambda: False)
            warmup = time.perf_counter() - started
            after_n, after = list_all(store)
            after_first = FIRST_PAGE[-1]
        with open_store(path) as store:  # a restart: the first listing during the warm-up
            warming = threading.Thread(target=store.warm_listings, args=(lambda: False,))
            warming.start()
            during_n, during = list_all(store)
            during_first = FIRST_PAGE[-1]
            warming.join()
        out["warm_start"] = {"buckets": buckets, "names": names, "warmup_seconds": warmup,
                             "first_listing_after_warmup_seconds": after,
                             "first_listing_during_warmup_seconds": during,
                             "first_page_after_warmup_seconds": after_first,
                             "first_page_during_warmup_seconds": during_first,
                             "keys": after_n, "keys_during": during_n}
    shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k keys, a few seconds")
    ap.add_argument("--keys", type=int, default=None)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "names_bench.json")
    ap.add_argument("--dir", default=str(HERE / "results"), help="scratch dir (same disk)")
    args = ap.parse_args()
    keys = args.keys or (10_000 if args.quick else 100_000)
    os.makedirs(args.dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        result = run(d, keys, 16, 50 if args.quick else 200)
    result["machine"] = machine_info()
    write_json(args.json, result)
    c, li, lo = result["commit"], result["listing"], result["lookups"]
    print_table(["measure", "value"], [
        ["index", "sealed names" if SEALED else "names in clear"],
        ["encode one small version (µs)", f"{result['encode']['us_per_version']:.1f}"],
        [f"commit, {c['writers']} writers (puts/s)", f"{c['puts_per_s']:.0f}"],
        ["commit p50 / p99 (ms)", f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}"],
        ["point lookup current() (µs)", f"{lo['us_per_lookup']:.1f}"],
        [f"list {li['keys']} keys, cold (s)", f"{li['cold_seconds']:.3f}"],
        [f"list {li['warm_keys']} keys, warm (s)", f"{li['warm_seconds']:.3f}"],
        ["first page of 1,000, cold / warm (s)",
         f"{li['cold_first_page_seconds']:.3f} / {li['warm_first_page_seconds']:.3f}"],
    ] + ([
        ["restart: warm-up in the background (s)", f"{ws['warmup_seconds']:.3f}"],
        ["restart: first listing after the warm-up (s)",
         f"{ws['first_listing_after_warmup_seconds']:.3f}"],
        ["restart: first listing sent during the warm-up (s)",
         f"{ws['first_listing_during_warmup_seconds']:.3f}"],
        ["restart: its first page, after / during the warm-up (s)",
         f"{ws['first_page_after_warmup_seconds']:.3f} / "
         f"{ws['first_page_during_warmup_seconds']:.3f}"],
    ] if (ws := result.get("warm_start")) else []))


if __name__ == "__main__":
    main()
