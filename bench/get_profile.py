"""Lone small-get benchmark: what a 4 KiB get from the coordinator costs, by process.

    python bench/get_profile.py [--n N] [--size BYTES] [--versions V] [--json PATH] [--dir DIR]
                                [--no-profile]

Starts ``hdsd init`` (two sites, one node each) and both nodes as real ``hdsd serve``
processes, writes one object (*V* versions of one key, default 1: a get reads the current
one), then gets it *N* times in sequence through
``hdsd.AsyncClient(profile, site="dc1")``: latency p50/p90/p99 and the CPU of each process per
get (the client's own, and each node's every thread). Then, deterministic counts that a shared
machine cannot blur: the same gets again with dc1 under cProfile (enabled by SIGUSR1, dumped on
SIGUSR2, so only the gets are counted) and the client under cProfile and a trio instrument —
Python calls per get in each, and scheduler passes per get (the client's by the instrument,
the node's as its calls to the I/O manager's ``get_events``, one per pass). Writes JSON
(default ``bench/results/get_profile.json``). Never asserts; stops every process it started.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    NodeProcess,
    init_cluster,
    latency_ms,
    machine_info,
    profiler_prefix,
    thread_cpu_seconds,
    write_json,
)

import hdsd

HERE = Path(__file__).resolve().parent


class _Passes(trio.abc.Instrument):
    """Counts scheduler passes: one ``before_io_wait`` per pass of trio's run loop."""

    def __init__(self) -> None:
        self.passes = 0

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1


def _calls(stats: pstats.Stats, n: int) -> tuple[float, float]:
    """(Python calls per get, I/O-manager waits per get) of a cProfile dump."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    calls = sum(v[1] for v in table.values())
    waits = sum(v[1] for k, v in table.items() if k[2] == "get_events")
    return calls / n, waits / n


async def _gets(client: hdsd.AsyncClient, key: str, n: int, samples: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        await client.get("bench", key)
        samples.append(time.perf_counter() - t)


async def measure(profile: Path, size: int, versions: int, n: int, pids: dict[str, int],
                  dc1: NodeProcess | None, prof_out: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with trio.fail_after(900):
        async with hdsd.AsyncClient(profile, site="dc1", timeout=120) as client:
            key = "prof" if prof_out else "lat"
            for _ in range(versions):
                await client.put("bench", key, os.urandom(size))
            await _gets(client, key, 200, [])
            if prof_out is None:
                samples: list[float] = []
                cpu0 = {k: sum(thread_cpu_seconds(p).values()) for k, p in pids.items()}
                mine0 = time.process_time()
                await _gets(client, key, n, samples)
                mine1 = time.process_time()
                cpu1 = {k: sum(thread_cpu_seconds(p).values()) for k, p in pids.items()}
                out["latency"] = latency_ms(samples)
                out["cpu_ms_per_get"] = {"client": (mine1 - mine0) / n * 1e3, **{
                    k: (cpu1[k] - cpu0[k]) / n * 1e3 for k in pids}}
                return out
            assert dc1 is not None and dc1.proc is not None
            dc1.proc.send_signal(signal.SIGUSR1)
            await trio.sleep(0.3)  # the handler runs when the node's main thread next wakes
            passes = _Passes()
            trio.lowlevel.add_instrument(passes)
            prof = cProfile.Profile()
            prof.enable()
            await _gets(client, key, n, [])
            prof.disable()
            trio.lowlevel.remove_instrument(passes)
            dc1.proc.send_signal(signal.SIGUSR2)
            while not prof_out.exists():
                await trio.sleep(0.05)
            prof.dump_stats(str(prof_out) + ".client")
            client_calls, _ = _calls(pstats.Stats(prof), n)
            node_calls, node_waits = _calls(pstats.Stats(str(prof_out)), n)
            out["client_calls_per_get"] = client_calls
            out["client_passes_per_get"] = passes.passes / n
            out["dc1_calls_per_get"] = node_calls
            out["dc1_passes_per_get"] = node_waits
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="gets per measure")
    ap.add_argument("--size", type=int, default=4 << 10)
    ap.add_argument("--versions", type=int, default=1, help="versions of the key got")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "get_profile.json")
    ap.add_argument("--dir", default=str(HERE / "results"), help="scratch directory")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile counts")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="get-profile-", dir=args.dir))
    started = time.time()
    result: dict[str, Any] = {}
    try:
        cluster = scratch / "cluster"
        profile = init_cluster(cluster)
        with NodeProcess(cluster / "dc2-n1" / "node.toml") as dc2, \
                NodeProcess(cluster / "dc1-n1" / "node.toml") as dc1:
            assert dc1.proc is not None and dc2.proc is not None
            pids = {"dc1": dc1.proc.pid, "dc2": dc2.proc.pid}
            result.update(trio.run(measure, profile, args.size, args.versions, args.n, pids, None,
                                   None))
        if not args.no_profile:
            prof_out = scratch / "dc1.prof"
            with NodeProcess(cluster / "dc2-n1" / "node.toml"), \
                    NodeProcess(cluster / "dc1-n1" / "node.toml",
                                prefix=profiler_prefix(prof_out)) as dc1:
                result.update(trio.run(measure, profile, args.size, args.versions, args.n,
                                       {}, dc1, prof_out))
            shutil.copy(prof_out, args.json.with_suffix(".prof"))
            shutil.copy(str(prof_out) + ".client", args.json.with_suffix(".client.prof"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lat = result["latency"]
    print(f"get {args.size} B x1 from dc1 ({args.versions} versions), {args.n} gets: "
          f"p50 {lat['p50_ms']:.3f} ms, "
          f"p90 {lat['p90_ms']:.3f}, p99 {lat['p99_ms']:.3f}; CPU ms per get: "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["cpu_ms_per_get"].items()))
    if "dc1_calls_per_get" in result:
        print(f"per get: client {result['client_calls_per_get']:.0f} Python calls, "
              f"{result['client_passes_per_get']:.2f} scheduler passes; dc1 "
              f"{result['dc1_calls_per_get']:.0f} Python calls, "
              f"{result['dc1_passes_per_get']:.2f} scheduler passes")
    write_json(args.json, {"benchmark": "get_profile", "machine": machine_info(),
                           "started": started, "seconds": time.time() - started,
                           "size": args.size, "versions": args.versions, "n": args.n,
                           **result})
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
