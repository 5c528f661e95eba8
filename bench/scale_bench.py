"""Throughput against the size of the store: the same load on a 1+1 cluster whose nodes already
hold 10k, 100k (, 1M) keys.

    python bench/scale_bench.py [--sizes 10000,100000] [--seconds 60] [--clients 16]

For each size: ``hdsd init``, N versions written straight into both nodes' stores before they
start (4 KiB inline objects under random-looking key names, as :mod:`bench.repair_bench` does:
a million puts over TLS would take the whole run), both nodes started and their Merkle trees
left to follow the index, then ``--clients`` clients for ``--seconds``: half new 4 KiB puts
(random key names: B-tree inserts land anywhere), a quarter stats of prefilled keys (an index
lookup), a quarter gets of keys put during the run (prefilled records were not sealed by a
node, so they cannot be read back, only looked up). Figures: ops/s, both nodes' CPU per
operation (from /proc) split by thread (the trio thread, the log writer, worker threads), and
p50/p99 by operation. Then, with the nodes stopped, the index itself on that store: µs per
lookup of a random key and per version indexed in a batch — where the size of the store
shows up.

Never asserts; prints a table and writes JSON. The machine may be shared: compare sizes
measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import hdsd
from bench._harness import (
    NodeProcess,
    cluster_sealing,
    init_cluster,
    machine_info,
    prefill_name,
    prefill_store,
    print_table,
    thread_cpu_seconds,
    wait_merkle_ready,
    write_json,
)
from hdsd.pipeline import TenantNameSealing
from hdsd.store import Store, Version

BUCKET = "scale"


def _log(msg: str) -> None:
    print(f"[scale_bench] {msg}", file=sys.stderr, flush=True)


async def _load(profile: Path, n: int, clients: int, seconds: float
                ) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"put": [], "stat": [], "get": []}
    stop = trio.Event()
    data = os.urandom(4096)

    async def client(k: int) -> None:
        rng = random.Random(k)
        mine: list[str] = []
        async with hdsd.AsyncClient(profile, site="dc1" if k % 2 == 0 else "dc2") as c:
            while not stop.is_set():
                r = rng.random()
                t0 = time.perf_counter()
                if r < 0.5 or not mine:
                    key = "n/" + rng.randbytes(8).hex()
                    await c.put(BUCKET, key, data)
                    mine.append(key)
                    op = "put"
                elif r < 0.75:
                    await c.stat(BUCKET, prefill_name(rng.randrange(n)))
                    op = "stat"
                else:
                    await c.get(BUCKET, rng.choice(mine))
                    op = "get"
                lat[op].append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        for k in range(clients):
            nursery.start_soon(client, k)
        await trio.sleep(seconds)
        stop.set()
    return lat


def _index_micro(store_dir: Path, tenant: str, n: int, node: str,
                 sealing: TenantNameSealing) -> dict[str, float]:
    with Store.open(store_dir, segment_bytes=64 << 20, sealing=sealing) as store:
        rng = random.Random(5)
        picks = [prefill_name(rng.randrange(n)) for _ in range(5000)]
        t0 = time.perf_counter()
        for key in picks:
            store.current(tenant, BUCKET, key)
        lookup = (time.perf_counter() - t0) / len(picks)
        payload = os.urandom(4096)
        batch = [Version(tenant, BUCKET, "m/" + rng.randbytes(8).hex(), (1 << 41) + i, node,
                         4096, b"\x00" * 32, (b"\x00" * 32,), inline=payload)
                 for i in range(2000)]
        t0 = time.perf_counter()
        for i in range(0, len(batch), 100):
            store.commit_sync(batch[i:i + 100])
        commit = (time.perf_counter() - t0) / len(batch)
    return {"lookup_us": round(lookup * 1e6, 1), "commit_us_per_version": round(commit * 1e6, 1)}


def _pct(xs: list[float], q: float) -> float | None:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 2) if s else None


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cluster"
        profile = init_cluster(root)
        sealing = cluster_sealing(root)
        tenant = next(line.split("=", 1)[1].strip().strip('"')
                      for line in profile.read_text().splitlines() if line.startswith("tenant"))
        configs = {s: root / f"{s}-n1" / "node.toml" for s in ("dc1", "dc2")}
        for cfg in configs.values():
            cfg.write_text(cfg.read_text() + "\n[repair]\ninterval_s = 0\nscrub_interval_h = 0\n")
        stores = {s: cfg.parent / "data" / "store" for s, cfg in configs.items()}
        t0 = time.monotonic()
        for s in stores:
            prefill_store(stores[s], tenant, BUCKET, n, "dc1-n1", sealing)
        fill_s = time.monotonic() - t0
        _log(f"{n:,} keys written into each store in {fill_s:.0f} s; starting the nodes")
        nodes = {s: NodeProcess(cfg) for s, cfg in configs.items()}
        try:
            for node in nodes.values():
                node.start()
            wait_merkle_ready(profile)
            pids = {s: nd.proc.pid for s, nd in nodes.items() if nd.proc is not None}
            before = {s: thread_cpu_seconds(p) for s, p in pids.items()}
            t = time.perf_counter()
            lat = trio.run(_load, profile, n, args.clients, args.seconds)
            wall = time.perf_counter() - t
            after = {s: thread_cpu_seconds(p) for s, p in pids.items()}
        finally:
            for node in nodes.values():
                node.stop()
        ops = sum(len(v) for v in lat.values())
        split = {"trio": 0.0, "other threads": 0.0}
        for s, pid in pids.items():
            for tid, cpu in after[s].items():
                used = cpu - before[s].get(tid, 0.0)
                split["trio" if tid == pid else "other threads"] += used
        micro = _index_micro(stores["dc1"], tenant, n, "dc1-n1", sealing)
    return {"keys": n, "fill_s": round(fill_s, 1), "ops": ops, "ops_s": round(ops / wall, 1),
            "cpu_ms_per_op": round(sum(split.values()) / ops * 1e3, 3),
            "cpu_ms_per_op_by_thread": {k: round(v / ops * 1e3, 3) for k, v in split.items()},
            **{f"{op}_{k}": f(v) for op, v in lat.items()
               for k, f in (("n", len), ("p50_ms", lambda x: _pct(x, 0.5)),
                            ("p99_ms", lambda x: _pct(x, 0.99)))},
            "index": micro}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--json", type=Path, default=Path("bench/results/scale_bench.json"))
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        _log(f"size {n:,}")
        results.append(run_size(n, args))
    rows = [[f"{r['keys']:,}", f"{r['ops_s']}", f"{r['cpu_ms_per_op']} "
             f"({r['cpu_ms_per_op_by_thread']['trio']} trio)",
             f"{r['put_p50_ms']}/{r['put_p99_ms']}", f"{r['stat_p50_ms']}/{r['stat_p99_ms']}",
             f"{r['index']['lookup_us']}", f"{r['index']['commit_us_per_version']}"]
            for r in results]
    print(f"\nscale_bench: {args.clients} clients x {args.seconds:.0f} s per size, 1+1 cluster "
          f"({os.cpu_count()} cores, shared)")
    print_table(["keys", "ops/s", "node CPU ms/op", "put p50/p99 ms", "stat p50/p99 ms",
                 "index lookup µs", "index µs/version"], rows)
    write_json(args.json, {"machine": machine_info(), "results": results})
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
