"""CPU a node uses at rest: a 1+1 cluster whose stores hold N versions, nothing written.

    python bench/idle_cpu.py [--keys 100000] [--settle 30] [--seconds 60]

``hdsd init``, N 4 KiB versions written straight into both stores before the nodes start (as
:mod:`bench.scale_bench` does), both nodes started with their default timers except periodic
repair and scrub (off: they are work an operator schedules, not the cost of being up), left
``--settle`` seconds (their Merkle trees follow the index, the usage snapshot is taken once),
then the CPU of each process over ``--seconds`` with no request at all, from /proc, split by
thread (the trio thread, the others; the process's total counts threads that ended meanwhile).
Then, nodes stopped, what one usage snapshot of that store costs (``Store.tenant_usage``, the
scan the quota figure is made of, median of 3) and what 5 calls of ``Tenancy.refresh_usage``
whose TTL has passed cost on that store unchanged (the quota figure's upkeep at rest).

The measured tree is the one the interpreter running this script imports: run it with that
tree's ``.venv/bin/python`` from outside any work tree (``python -m`` and ``-c`` put the working
directory first on ``sys.path``). Never asserts; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    NodeProcess,
    cluster_sealing,
    init_cluster,
    machine_info,
    prefill_store,
    print_table,
    process_cpu_seconds,
    thread_cpu_seconds,
    wait_merkle_ready,
    write_json,
)

import hdsd
from hdsd.store import Store

BUCKET = "idle"
REFRESHES = 5
HERE = Path(__file__).resolve().parent


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _usage_scan_s(store_dir: Path, root: Path) -> tuple[float, float]:
    """(CPU of one ``Store.tenant_usage``, median of 3; CPU of :data:`REFRESHES` calls of
    ``Tenancy.refresh_usage(max_age=0)`` on that store, unchanged, after a first one) — the
    process's CPU, worker threads included."""
    from types import SimpleNamespace

    import trio

    from hdsd.catalog import Keyring, create_master_key, load_master_key
    from hdsd.cluster import HybridClock
    from hdsd.node._tenancy import Tenancy

    with Store.open(store_dir, segment_bytes=64 << 20, sealing=cluster_sealing(root)) as store:
        times = []
        for _ in range(3):
            t0 = time.process_time()
            store.tenant_usage()
            times.append(time.process_time() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            create_master_key(Path(tmp) / "m.key")
            master = load_master_key(Path(tmp) / "m.key")
            tenancy = Tenancy(Path(tmp), master, Keyring(Path(tmp) / "k.hdsd", master),
                              HybridClock(), operator_tenant="ops", evict=lambda _: None)
            node: Any = SimpleNamespace(store=store)

            async def refreshes() -> float:
                await tenancy.refresh_usage(node, force=True)
                t0 = time.process_time()
                for _ in range(REFRESHES):
                    await tenancy.refresh_usage(node, max_age=0)
                return time.process_time() - t0
            try:
                refresh = trio.run(refreshes)
            finally:
                tenancy.close()
    return statistics.median(times), refresh


def run(args: argparse.Namespace) -> dict[str, Any]:
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
        for s in stores:
            prefill_store(stores[s], tenant, BUCKET, args.keys, "dc1-n1", sealing)
        _log(f"{args.keys:,} versions in each store; starting the nodes")
        nodes = {s: NodeProcess(cfg) for s, cfg in configs.items()}
        try:
            for node in nodes.values():
                node.start()
            wait_merkle_ready(profile)
            _log(f"ready; settling {args.settle:g} s")
            time.sleep(args.settle)
            pids = {s: nd.proc.pid for s, nd in nodes.items() if nd.proc is not None}
            before = {s: thread_cpu_seconds(p) for s, p in pids.items()}
            total0 = {s: process_cpu_seconds(p) for s, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            took = time.monotonic() - t0
            total1 = {s: process_cpu_seconds(p) for s, p in pids.items()}
            after = {s: thread_cpu_seconds(p) for s, p in pids.items()}
        finally:
            for node in nodes.values():
                node.stop()
        per_node: dict[str, dict[str, float]] = {}
        for s, pid in pids.items():
            # The process's figure counts threads that ended in the window too (trio's worker
            # threads retire after 10 s idle, taking their /proc/PID/task entry with them).
            total = total1[s] - total0[s]
            trio_thread = after[s].get(pid, 0.0) - before[s].get(pid, 0.0)
            per_node[s] = {"cpu_s_per_min": round(total * 60 / took, 3),
                           "trio_s_per_min": round(trio_thread * 60 / took, 3),
                           "other_s_per_min": round((total - trio_thread) * 60 / took, 3)}
        scan, refresh = _usage_scan_s(stores["dc1"], root)
    return {"keys": args.keys, "seconds": round(took, 1), "nodes": per_node,
            "usage_scan_cpu_s": round(scan, 3),
            f"usage_refresh_x{REFRESHES}_unchanged_cpu_s": round(refresh, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--settle", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--json", type=Path, default=HERE / "results" / "idle_cpu.json")
    args = p.parse_args()
    started = time.time()
    result = run(args)
    print_table(["node", "CPU s/min", "trio s/min", "other threads s/min"],
                [[s, f"{v['cpu_s_per_min']:.3f}", f"{v['trio_s_per_min']:.3f}",
                  f"{v['other_s_per_min']:.3f}"] for s, v in result["nodes"].items()])
    print(f"one usage snapshot of {args.keys:,} versions: {result['usage_scan_cpu_s']:.3f} CPU s;"
          f" {REFRESHES} usage refreshes, store unchanged: "
          f"{result[f'usage_refresh_x{REFRESHES}_unchanged_cpu_s']:.3f} CPU s")
    write_json(args.json, {"benchmark": "idle_cpu", "started": started,
                           "hdsd": str(Path(hdsd.__file__).parent), "settle_s": args.settle,
                           "load_avg": list(os.getloadavg()),
                           "machine": machine_info(), **result})
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
