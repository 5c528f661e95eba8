"""What a second core gives one node: the coordinator pinned to one core against both, in the
same run (for the many-core design in ``docs/design-notes.md``).

    python bench/core_scaling.py [--rounds N] [--dir DIR]

Starts a two-site cluster (``each-site``), then alternates cells — coordinator pinned to CPU 0
(``taskset -a -p``: every thread of the process), then allowed every CPU — *N* rounds each, so
load drifting on a shared machine hits both alike. A cell is 4 KiB puts by 64 tasks and 1 MiB
puts by 16 tasks from one client process (the replica and the client are never pinned). Prints
ops/s, MiB/s and the coordinator's CPU per op for each, and the ratio of the medians. Never
asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import (  # noqa: E402
    NodeProcess,
    init_cluster,
    print_table,
    process_cpu_seconds,
    set_write_policy,
)

import hdsd  # noqa: E402

KIB, MIB = 1 << 10, 1 << 20
CELLS = ((4 * KIB, 64, 1280), (MIB, 16, 64))  # size, concurrency, ops


def pin(pid: int, cpus: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


async def run_cell(client: hdsd.AsyncClient, size: int, concurrency: int, ops: int,
                   tag: str) -> float:
    data = os.urandom(size)

    async def task(t: int) -> None:
        for i in range(ops // concurrency):
            await client.put("cores", f"{tag}/{t}/{i}", data)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(concurrency):
            nursery.start_soon(task, t)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cores-", dir=args.dir))
    nodes: list[NodeProcess] = []
    # (cores, size) -> [(ops/s, coordinator CPU ms per op)]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        profile = init_cluster(scratch / "cluster")
        for site in ("dc2", "dc1"):
            cfg = scratch / "cluster" / f"{site}-n1" / "node.toml"
            set_write_policy(cfg, "each-site")
            node = NodeProcess(cfg)
            nodes.append(node)
            node.start()
        coordinator = nodes[-1].proc
        assert coordinator is not None

        async def drive() -> None:
            async with hdsd.AsyncClient(profile, site="dc1", timeout=600) as client:
                for i in range(100):  # warm-up: links, caches, the thread pool
                    await client.put("cores", f"warm/{i}", b"x" * 4096)
                for r in range(args.rounds):
                    for cores, cpus in (("1 core", "0"), ("2 cores", all_cpus)):
                        pin(coordinator.pid, cpus)
                        for size, concurrency, ops in CELLS:
                            cpu0 = process_cpu_seconds(coordinator.pid)
                            took = await run_cell(client, size, concurrency, ops,
                                                  f"r{r}/{cores}/{size}")
                            cpu = process_cpu_seconds(coordinator.pid) - cpu0
                            results.setdefault((cores, size), []).append(
                                (ops / took, cpu / ops * 1e3))
                            print(f"[cores] round {r} {cores} {size // KIB} KiB "
                                  f"x{concurrency}: {ops / took:.0f} ops/s", file=sys.stderr)

        trio.run(drive)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for size, concurrency, _ in CELLS:
        one = results[("1 core", size)]
        two = results[("2 cores", size)]
        ops1, ops2 = (statistics.median(o for o, _ in x) for x in (one, two))
        cpu1, cpu2 = (statistics.median(c for _, c in x) for x in (one, two))
        label = f"put {size // KIB} KiB x{concurrency}" if size < MIB else \
            f"put {size // MIB} MiB x{concurrency}"
        rows.append([label, f"{ops1:,.0f}", f"{ops2:,.0f}", f"{ops2 / ops1:.2f}x",
                     f"{cpu1:.2f}", f"{cpu2:.2f}"])
    print_table(["cell (each-site, median of rounds)", "ops/s 1 core", "ops/s 2 cores",
                 "2 / 1", "coord CPU ms/op 1", "coord CPU ms/op 2"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
