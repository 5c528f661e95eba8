"""Replicated small-put benchmark: where a 4 KiB put under ``each-site`` spends its time.

    python bench/put_profile.py [--quick] [--json PATH] [--dir DIR] [--profile]
                                [--profile-concurrency N] [--profile-connections C]
                                [--policy each-site|majority|local]

Starts ``hdsd init`` (two sites, one node each) and both nodes as real ``hdsd serve``
processes (write policy ``--policy``, default ``each-site``), then measures through
``hdsd.AsyncClient(profile, site="dc1")``:
  put 4 KiB sequential (p50/p90/p99/p999/max), 16 concurrent clients x 4 KiB puts over one
  multiplexed connection (puts/s), the node processes' CPU per sequential put (main thread and
  other threads of each node), the log's commits per fdatasync on the coordinator, and the
  hints it kept per 1,000 puts (a replica that had not confirmed when a put was acknowledged:
  none under ``each-site``; under ``local``, the peers that missed the grace).
floor cells: pwrite+fdatasync of 4 KiB on the same disk. A replicated put's floor is about one
  fdatasync (both sites sync in parallel) plus two round trips (client->dc1, dc1->dc2).

``--profile`` then restarts dc1 under cProfile (enabled by SIGUSR1, dumped on SIGUSR2, so the
profile covers exactly the measured puts) and prints the node-side self time per put by layer
and the top functions. Writes JSON (default ``bench/results/put_profile.json``). Never asserts;
stops every process it started, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    NodeProcess,
    concurrently,
    fsync_floor,
    init_cluster,
    latency_ms,
    machine_info,
    print_table,
    profile_breakdown,
    profiler_prefix,
    set_write_policy,
    thread_cpu_seconds,
    timed_puts,
    write_json,
)
from node_bench import CATEGORIES

import hdsd

HERE = Path(__file__).resolve().parent
SMALL = 4 << 10
CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Counts:
    fsync: int
    warm: int
    seq: int
    per_task: int
    profile_puts: int


QUICK = Counts(fsync=300, warm=100, seq=500, per_task=40, profile_puts=500)
FULL = Counts(fsync=2000, warm=300, seq=3000, per_task=250, profile_puts=2000)


def hints_kept(data_dir: Path) -> int:
    """How many hints the node at *data_dir* has ever kept (the table's AUTOINCREMENT
    counter: replay deletes the hints, not the count)."""
    path = data_dir / "hints.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'hints'").fetchone()
        except sqlite3.OperationalError:  # no hint yet: sqlite_sequence not created
            return 0
    return 0 if row is None else int(row[0])


def _cpu(pids: dict[str, int]) -> dict[str, dict[int, float]]:
    return {name: thread_cpu_seconds(pid) for name, pid in pids.items()}


def _cpu_per_put(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
                 pids: dict[str, int], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        b, a = before[name], after[name]
        out[f"{name}_main_ms_per_put"] = (a.get(pid, 0.0) - b.get(pid, 0.0)) / n * 1e3
        out[f"{name}_other_ms_per_put"] = sum(
            v - b.get(t, 0.0) for t, v in a.items() if t != pid) / n * 1e3
    return out


def _cell(label: str, concurrency: int, samples: list[float], ops: float,
          **extra: Any) -> dict[str, Any]:
    return {"system": "hdsd", "op": "put", "label": label, "size_bytes": SMALL,
            "concurrency": concurrency, "ops_per_s": ops, "n": len(samples),
            **latency_ms(samples), **extra}


async def measure(profile: Path, c: Counts, pids: dict[str, int], policy: str,
                  dc1_data: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = os.urandom(SMALL)
    cells: list[dict[str, Any]] = []
    with trio.fail_after(1200):
        async with hdsd.AsyncClient(profile, site="dc1", timeout=120) as client:
            await timed_puts(client, "warm", c.warm, data, [])
            before = (await client.status())["store"]
            seq: list[float] = []
            hints0 = hints_kept(dc1_data)
            cpu0, mine0 = _cpu(pids), time.process_time()
            await timed_puts(client, "seq", c.seq, data, seq)
            cpu1, mine1 = _cpu(pids), time.process_time()
            after = (await client.status())["store"]
            hints1 = hints_kept(dc1_data)
            cpu = _cpu_per_put(cpu0, cpu1, pids, c.seq)
            cpu["client_ms_per_put"] = (mine1 - mine0) / c.seq * 1e3
            cells.append(_cell(f"put 4 KiB sequential, {policy}", 1, seq, len(seq) / sum(seq),
                               hints_per_1000=(hints1 - hints0) * 1000 / len(seq)))

            muxed: list[float] = []
            elapsed = await concurrently(CONCURRENCY, lambda t: timed_puts(
                client, f"mux{t}", c.per_task, data, muxed))
            cells.append(_cell(f"put 4 KiB x{CONCURRENCY}, one connection, {policy}",
                               CONCURRENCY, muxed, len(muxed) / elapsed,
                               hints_per_1000=(hints_kept(dc1_data) - hints1) * 1000
                               / len(muxed)))
    store = {"commits": after["commits"] - before["commits"],
             "fsyncs": after["fsyncs"] - before["fsyncs"], **cpu}
    return cells, store


async def _profiled(profile: Path, node: NodeProcess, n: int, out: Path,
                    concurrency: int = 1, connections: int = 1) -> float:
    assert node.proc is not None
    data = os.urandom(SMALL)
    with trio.fail_after(900):
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(
                hdsd.AsyncClient(profile, site="dc1", timeout=120)) for _ in range(connections)]
            for client in clients:
                await timed_puts(client, "pwarm", 100 // connections, data, [])
            node.proc.send_signal(signal.SIGUSR1)
            await trio.sleep(0.3)  # the handler runs when the node's main thread next wakes
            samples: list[float] = []
            if concurrency == 1:
                await timed_puts(clients[0], "prof", n, data, samples)
            else:  # n puts in all, task t on connection t mod connections
                wall = await concurrently(concurrency, lambda t: timed_puts(
                    clients[t % connections], f"prof{t}", n // concurrency, data, samples))
                samples = [wall]
            node.proc.send_signal(signal.SIGUSR2)
            while not out.exists():
                await trio.sleep(0.05)
    return sum(samples)


def profile_dc1(cluster: Path, profile: Path, n: int, out: Path,
                concurrency: int = 1, connections: int = 1,
                node_name: str = "dc1", policy: str = "each-site") -> dict[str, Any]:
    """Profile *node_name*: dc1 (the coordinator, the default) or dc2 (the replica)."""
    out.unlink(missing_ok=True)
    n -= n % concurrency
    prefixes: dict[str, list[str]] = {"dc1": [], "dc2": []}
    prefixes[node_name] = profiler_prefix(out)
    with NodeProcess(cluster / "dc2-n1" / "node.toml", prefix=prefixes["dc2"]) as dc2, \
            NodeProcess(cluster / "dc1-n1" / "node.toml",
                        prefix=prefixes["dc1"]) as dc1:
        node = dc1 if node_name == "dc1" else dc2
        wall = trio.run(_profiled, profile, node, n, out, concurrency, connections)
    grouped, top = profile_breakdown(out, CATEGORIES, top=25)
    how = "sequential" if concurrency == 1 else f"x{concurrency} ({connections} connections)"
    print(f"\n{node_name} profile: {n} {how} 4 KiB {policy} puts, {wall / n * 1e3:.3f} ms/put "
          "seen by the client (under cProfile, which slows Python code)")
    print_table([f"{node_name} main thread, self time by category", "ms/put", "calls/put"],
                [[name, f"{t / n * 1e3:.4f}", f"{calls / n:.1f}"] for name, t, calls in grouped])
    print()
    print_table(["top functions by self time", "self ms/put", "cum ms/put", "calls/put"],
                [[f, f"{t / n * 1e3:.4f}", f"{ct / n * 1e3:.4f}", f"{c / n:.1f}"]
                 for f, t, ct, c in top])
    print(f"profile: {out}  (python -m pstats {out})")
    return {"puts": n, "concurrency": concurrency, "connections": connections,
            "policy": policy,
            "client_ms_per_put": wall / n * 1e3,
            "main_thread_self_ms_per_put": {name: t / n * 1e3 for name, t, _ in grouped},
            "top": [{"function": f, "self_ms_per_put": t / n * 1e3,
                     "cum_ms_per_put": ct / n * 1e3, "calls_per_put": c / n}
                    for f, t, ct, c in top],
            "file": str(out)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts; about half a minute")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "put_profile.json")
    ap.add_argument("--dir", default=str(HERE / "results"),
                    help="scratch directory (both nodes' data and the disk floor: same disk)")
    ap.add_argument("--profile", action="store_true",
                    help="then profile dc1 under cProfile during sequential puts")
    ap.add_argument("--profile-concurrency", type=int, default=1, metavar="N",
                    help="profile N concurrent puts instead (default 1)")
    ap.add_argument("--profile-node", choices=("dc1", "dc2"), default="dc1",
                    help="the node profiled: dc1, the coordinator (default), or dc2, the replica")
    ap.add_argument("--profile-connections", type=int, default=1, metavar="C",
                    help="... over C client connections (default 1)")
    ap.add_argument("--policy", choices=("each-site", "majority", "local"), default="each-site",
                    help="both nodes' write policy (default each-site)")
    args = ap.parse_args()
    counts = QUICK if args.quick else FULL
    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="put-profile-", dir=args.dir))
    started = time.time()
    profiled = None
    try:
        cluster = scratch / "cluster"
        profile = init_cluster(cluster)
        for site in ("dc1", "dc2"):
            if not set_write_policy(cluster / f"{site}-n1" / "node.toml", args.policy) \
                    and args.policy != "each-site":
                raise SystemExit(f"this hdsd has no write policy {args.policy!r}")
        floor = fsync_floor(str(scratch), SMALL, counts.fsync)
        cells = [{"system": "floor", "op": "fsync", "label": "pwrite+fdatasync 4 KiB",
                  "size_bytes": SMALL, "concurrency": 1, "ops_per_s": len(floor) / sum(floor),
                  "n": len(floor), **latency_ms(floor)}]
        with NodeProcess(cluster / "dc2-n1" / "node.toml") as dc2, \
                NodeProcess(cluster / "dc1-n1" / "node.toml") as dc1:
            assert dc1.proc is not None and dc2.proc is not None
            pids = {"dc1": dc1.proc.pid, "dc2": dc2.proc.pid}
            try:
                measured, store = trio.run(measure, profile, counts, pids, args.policy,
                                           cluster / "dc1-n1" / "data")
            except BaseException:
                print(f"dc1 log:\n{dc1.log()}\ndc2 log:\n{dc2.log()}", file=sys.stderr)
                raise
        cells += measured
        print_table(["system", "what", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms",
                     "ops/s", "hints/1000"],
                    [[c["system"], c["label"], _fmt(c["p50_ms"]), _fmt(c["p90_ms"]),
                      _fmt(c["p99_ms"]), _fmt(c["p999_ms"]), _fmt(c["max_ms"]),
                      _fmt(c["ops_per_s"]), _fmt(c.get("hints_per_1000"))] for c in cells])
        print(f"sequential puts: dc1 {store['commits']} commits in {store['fsyncs']} fdatasyncs; "
              "CPU ms per put: " + ", ".join(f"{k.removesuffix('_ms_per_put')} {v:.3f}"
                                            for k, v in store.items()
                                            if k.endswith("_ms_per_put")))
        if args.profile:
            profiled = profile_dc1(cluster, profile, counts.profile_puts,
                                   args.json.with_name("put_profile.prof"),
                                   args.profile_concurrency, args.profile_connections,
                                   args.profile_node, args.policy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.json, {"benchmark": "put_profile", "quick": args.quick,
                           "policy": args.policy,
                           "machine": machine_info(), "started": started,
                           "seconds": time.time() - started, "results": cells,
                           "sequential": store, "profile": profiled})
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
