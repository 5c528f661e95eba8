"""What the blocking ``hdsd.Client`` costs per call over ``AsyncClient``, on a real cluster.

    python bench/client_overhead.py [--quick] [--ops 1000] [--threads 8] [--rounds 3]
                                    [--profile] [--json PATH] [--dir DIR]

Starts the two-site cluster of ``sync_latency.py`` (one ``hdsd serve`` per site, ``each-site``:
a put is acknowledged once durable in both sites), then per round, through each client in turn
(the order alternates between rounds, so a load change hits both alike): N sequential 4 KiB
puts, N sequential gets of what was put, and N puts spread over K threads sharing one
``hdsd.Client`` (the way a threaded host program uses it) — for ``AsyncClient``, K tasks
sharing one client, its own way of running K calls at once. First, the ``handoff`` cell: N
calls of a coroutine that does nothing, through the blocking client's private call path
(``Client._call``, the thread crossings alone, no request) and awaited directly for
``AsyncClient``. Per cell and client: latency p50/p99, ops/s, the CPU (user + system, every
thread, ``resource.getrusage``: microseconds, not /proc's 10 ms ticks) this process spent per
op, and its context switches per op (a thread put to sleep and woken again: what the thread
crossings cost beside Python); the nodes' CPU per op (from /proc) beside it, as a check that
both clients asked the nodes for the same work. The table gives each cell's median over the
rounds and the blocking client's extra (``Client`` minus ``AsyncClient``).

``--profile`` adds one run of N sequential puts through each client under cProfile, in every
thread of this process (the blocking client's caller and its loop thread): Python calls per
put by thread, and the functions with the most calls, load-free figures.

Never asserts a time. Writes JSON (default ``bench/results/client_overhead.json``), prints the
table, reports progress on stderr, and stops the nodes it started, also on error or Ctrl-C.
Runs on any tree of hdsd: the interpreter chooses which (``/path/to/tree/.venv/bin/python
bench/client_overhead.py`` measures that tree's client and nodes).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sync_latency as sl  # noqa: E402
from _harness import latency_ms, machine_info, print_table, write_json  # noqa: E402

import hdsd  # noqa: E402

KIB = 1 << 10
SIZE = 4 * KIB
CLIENTS = ("async", "sync")
CELLS = ("handoff", "put", "get", "put-threads")
WARMUP = 50
TOP = 25


def usage() -> tuple[float, int]:
    """CPU seconds (user + system, every thread) this process has used so far, and its
    context switches (voluntary and not): a thread that sleeps and is woken counts one."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_nvcsw + ru.ru_nivcsw


class Window:
    """The figures of one cell: this process's CPU and switches, the nodes' CPU, wall time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> Window:
        self.nodes0 = sl.cpu_now(self.pids)
        (self.cpu0, self.switches0), self.t0 = usage(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        cpu, switches = usage()
        self.cpu, self.switches = cpu - self.cpu0, switches - self.switches0
        nodes1 = sl.cpu_now(self.pids)
        self.nodes = sum(nodes1[r] - self.nodes0[r] for r in self.pids)

    def figures(self, label: str, n: int, samples: list[float]) -> dict[str, Any]:
        if len(samples) != n:
            raise RuntimeError(f"{label}: {len(samples)} of {n} ops measured")
        lat = latency_ms(samples)
        return {"n": n, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
                "ops_per_s": n / self.wall, "client_cpu_ms_per_op": self.cpu / n * 1e3,
                "client_switches_per_op": self.switches / n,
                "nodes_cpu_ms_per_op": self.nodes / n * 1e3}


class Payloads:
    """Distinct 4 KiB bodies (content addressing would deduplicate identical ones), made
    before the clock starts."""

    def __init__(self) -> None:
        self.base = os.urandom(SIZE)
        self.n = 0

    def take(self, count: int) -> list[bytes]:
        out = [self.n.to_bytes(8, "little") + self.base[8:]
               for self.n in range(self.n + 1, self.n + 1 + count)]
        return out


def _measure(label: str, n: int, pids: dict[str, int], run: Callable[[], list[float]]
             ) -> dict[str, Any]:
    with Window(pids) as window:
        samples = run()
    return window.figures(label, n, samples)


def run_async(profile: Path, n: int, k: int, bodies: Payloads, pids: dict[str, int],
              tag: str) -> dict[str, dict[str, Any]]:
    """The three cells through one ``AsyncClient`` in a trio loop of this thread."""
    out: dict[str, dict[str, Any]] = {}

    async def main() -> None:
        async with hdsd.AsyncClient(profile, site="dc1", timeout=600) as client:
            for i, body in enumerate(bodies.take(WARMUP)):
                await client.put("bench", f"{tag}/warm/{i}", body)

            async def puts(keys: Sequence[str], data: Sequence[bytes], into: list[float]
                           ) -> None:
                for key, body in zip(keys, data, strict=True):
                    t0 = time.perf_counter()
                    await client.put("bench", key, body)
                    into.append(time.perf_counter() - t0)

            async def gets(keys: Sequence[str], into: list[float]) -> None:
                for key in keys:
                    t0 = time.perf_counter()
                    got = await client.get("bench", key)
                    into.append(time.perf_counter() - t0)
                    if len(got) != SIZE:
                        raise RuntimeError(f"get {key}: {len(got)} bytes")

            async def nothing(into: list[float]) -> None:
                for _ in range(n):
                    t0 = time.perf_counter()
                    await _nothing()
                    into.append(time.perf_counter() - t0)

            keys = [f"{tag}/seq/{i}" for i in range(n)]
            for name, work in (("handoff", nothing),
                               ("put", lambda s: puts(keys, bodies.take(n), s)),
                               ("get", lambda s: gets(keys, s))):
                out[name] = await _ameasure(name, n, pids, work)

            async def threads(into: list[float]) -> None:
                per = n // k
                async with trio.open_nursery() as nursery:
                    for t in range(k):
                        nursery.start_soon(puts, [f"{tag}/par/{t}/{i}" for i in range(per)],
                                           bodies.take(per), into)

            out["put-threads"] = await _ameasure("put-threads", n // k * k, pids, threads)

    trio.run(main)
    return out


async def _nothing() -> None:
    """The handoff cell's call: the thread crossings of a call and nothing else."""


async def _ameasure(label: str, n: int, pids: dict[str, int], work: Any) -> dict[str, Any]:
    samples: list[float] = []
    with Window(pids) as window:
        await work(samples)
    return window.figures(label, n, samples)


def run_sync(profile: Path, n: int, k: int, bodies: Payloads, pids: dict[str, int],
             tag: str) -> dict[str, dict[str, Any]]:
    """The three cells through one blocking ``hdsd.Client``, the last shared by K threads."""
    out: dict[str, dict[str, Any]] = {}
    with hdsd.Client(profile, site="dc1", timeout=600) as client:
        for i, body in enumerate(bodies.take(WARMUP)):
            client.put("bench", f"{tag}/warm/{i}", body)

        def puts(keys: Sequence[str], data: Sequence[bytes], into: list[float]) -> None:
            for key, body in zip(keys, data, strict=True):
                t0 = time.perf_counter()
                client.put("bench", key, body)
                into.append(time.perf_counter() - t0)

        def gets(keys: Sequence[str], into: list[float]) -> None:
            for key in keys:
                t0 = time.perf_counter()
                got = client.get("bench", key)
                into.append(time.perf_counter() - t0)
                if len(got) != SIZE:
                    raise RuntimeError(f"get {key}: {len(got)} bytes")

        keys = [f"{tag}/seq/{i}" for i in range(n)]
        data = bodies.take(n)

        def seq_puts() -> list[float]:
            samples: list[float] = []
            puts(keys, data, samples)
            return samples

        def seq_gets() -> list[float]:
            samples: list[float] = []
            gets(keys, samples)
            return samples

        def handoff() -> list[float]:
            samples: list[float] = []
            for _ in range(n):
                t0 = time.perf_counter()
                client._call(_nothing)  # private: the crossings without a request
                samples.append(time.perf_counter() - t0)
            return samples

        out["handoff"] = _measure("handoff", n, pids, handoff)
        out["put"] = _measure("put", n, pids, seq_puts)
        out["get"] = _measure("get", n, pids, seq_gets)
        per = n // k
        plans = [([f"{tag}/par/{t}/{i}" for i in range(per)], bodies.take(per))
                 for t in range(k)]

        def threaded() -> list[float]:
            samples: list[float] = []  # list.append is atomic: the threads share it
            errors: list[BaseException] = []

            def worker(plan: tuple[list[str], list[bytes]]) -> None:
                try:
                    puts(plan[0], plan[1], samples)
                except BaseException as exc:  # re-raised in the main thread below
                    errors.append(exc)

            workers = [threading.Thread(target=worker, args=(p,)) for p in plans]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            if errors:
                raise errors[0]
            return samples

        out["put-threads"] = _measure("put-threads", per * k, pids, threaded)
    return out


# -- calls per put, every thread -----------------------------------------------------------
class ThreadProfiles:
    """cProfile in every thread of this process while armed: a thread started meanwhile (the
    blocking client's loop thread) gets its profiler at its first Python call once armed, the
    calling thread at :meth:`arm`. Profilers are per thread in CPython 3.11."""

    def __init__(self) -> None:
        self.armed = False
        self.profiles: dict[str, cProfile.Profile] = {}
        self._lock = threading.Lock()

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        if self.armed:
            self._enable_here()

    def _enable_here(self) -> None:
        prof = cProfile.Profile()
        with self._lock:
            self.profiles[threading.current_thread().name] = prof
        prof.enable()

    def install(self) -> None:
        """Before the client (and its threads) start."""
        threading.setprofile(self._hook)

    def arm(self) -> None:
        self.armed = True
        self._enable_here()

    def disarm(self) -> None:
        """In the calling thread; other threads' profilers run on until their thread ends."""
        self.armed = False
        threading.setprofile(None)
        self.profiles[threading.current_thread().name].disable()


async def _profiled_async_puts(profile: Path, keys: Sequence[str], data: Sequence[bytes],
                               probe: ThreadProfiles) -> None:
    async with hdsd.AsyncClient(profile, site="dc1", timeout=600) as client:
        for key, body in zip(keys[:WARMUP], data[:WARMUP], strict=True):
            await client.put("bench", key, body)
        probe.arm()
        for key, body in zip(keys[WARMUP:], data[WARMUP:], strict=True):
            await client.put("bench", key, body)
        probe.disarm()


def profile_calls(profile: Path, n: int, bodies: Payloads, tag: str) -> dict[str, Any]:
    """Python calls per sequential 4 KiB put, by thread, through each client."""
    out: dict[str, Any] = {}
    for which in CLIENTS:
        probe = ThreadProfiles()
        data = bodies.take(n + WARMUP)
        keys = [f"{tag}/prof-{which}/{i}" for i in range(n + WARMUP)]
        if which == "async":
            trio.run(_profiled_async_puts, profile, keys, data, probe)
        else:
            probe.install()
            try:
                with hdsd.Client(profile, site="dc1", timeout=600) as client:
                    for key, body in zip(keys[:WARMUP], data[:WARMUP], strict=True):
                        client.put("bench", key, body)
                    probe.arm()
                    for key, body in zip(keys[WARMUP:], data[WARMUP:], strict=True):
                        client.put("bench", key, body)
                    probe.disarm()
                # close() ran under the loop thread's profiler: a few hundred calls, once.
            finally:
                threading.setprofile(None)
        by_thread: dict[str, float] = {}
        top: dict[str, int] = {}
        for name, prof in probe.profiles.items():
            stats = pstats.Stats(prof)
            by_thread[name] = stats.total_calls / n  # type: ignore[attr-defined]
            for (file, line, func), row in stats.stats.items():  # type: ignore[attr-defined]
                where = f"{Path(file).name}:{line}({func})"
                top[where] = top.get(where, 0) + row[1]
        out[which] = {"calls_per_put": sum(by_thread.values()), "by_thread": by_thread,
                      "top": {k: round(v / n, 2) for k, v in
                              sorted(top.items(), key=lambda kv: -kv[1])[:TOP]}}
    out["extra_calls_per_put"] = out["sync"]["calls_per_put"] - out["async"]["calls_per_put"]
    return out


def summarise(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per cell and client, the median over rounds of each figure; and the extra of ``Client``."""
    rows: list[dict[str, Any]] = []
    for cell in CELLS:
        med: dict[str, dict[str, float]] = {}
        for which in CLIENTS:
            runs = [r[which][cell] for r in rounds]
            med[which] = {f: statistics.median(x[f] for x in runs) for f in
                          ("p50_ms", "p99_ms", "ops_per_s", "client_cpu_ms_per_op",
                           "client_switches_per_op", "nodes_cpu_ms_per_op")}
            rows.append({"cell": cell, "client": which, "n": runs[0]["n"], **med[which],
                         "client_cpu_ms_per_op_rounds": [x["client_cpu_ms_per_op"]
                                                         for x in runs]})
        rows.append({"cell": cell, "client": "sync - async",
                     **{f: med["sync"][f] - med["async"][f] for f in med["sync"]}})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="client_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 40 ops, 4 threads, one round, a 40-put profile")
    ap.add_argument("--ops", type=int, default=1000, help="ops per cell")
    ap.add_argument("--threads", type=int, default=8, help="threads sharing one Client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="also count Python calls per put in every thread (cProfile)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "client_overhead.json")
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.ops, args.threads, args.rounds, args.profile = 40, 4, 1, True
    if args.ops < args.threads or args.threads < 1 or args.rounds < 1:
        ap.error("need --ops >= --threads >= 1 and --rounds >= 1")
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="client-overhead-", dir=args.dir))
    bodies = Payloads()
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    calls: dict[str, Any] | None = None
    load: list[float] = []
    try:
        with ExitStack() as stack:
            cluster = sl.Cluster(scratch / "cluster", 0.0, stack)
            cluster.start("each-site")
            pids = {r: p for r, p in cluster.pids().items() if r != "client"}
            for rnd in range(args.rounds):
                order = CLIENTS if rnd % 2 == 0 else CLIENTS[::-1]
                got: dict[str, dict[str, dict[str, Any]]] = {}
                for which in order:
                    sl.progress(f"round {rnd + 1}/{args.rounds}: {which} client, "
                                f"{args.ops} ops per cell, {args.threads} threads")
                    run = run_async if which == "async" else run_sync
                    got[which] = run(cluster.profile, args.ops, args.threads, bodies, pids,
                                     f"r{rnd}-{which}")
                    cluster.check()
                load.append(os.getloadavg()[0])
                rounds.append(got)
            if args.profile:
                sl.progress(f"cProfile: {args.ops} sequential puts through each client")
                calls = profile_calls(cluster.profile, args.ops, bodies, "profile")
            cluster.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(rounds)
    print_table(["cell", "client", "p50 ms", "p99 ms", "ops/s", "client CPU ms/op",
                 "switches/op", "nodes CPU ms/op"],
                [[r["cell"], r["client"], f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                  f"{r['ops_per_s']:.0f}", f"{r['client_cpu_ms_per_op']:.3f}",
                  f"{r['client_switches_per_op']:.2f}", f"{r['nodes_cpu_ms_per_op']:.3f}"]
                 for r in rows])
    print(f"\n{args.rounds} round(s) of {args.ops} ops per cell, {args.threads} threads; "
          f"medians over rounds; load average at each round's end {load}")
    if calls is not None:
        print("\nPython calls per sequential put (cProfile, every thread of the client):")
        for which in CLIENTS:
            threads = ", ".join(f"{t} {v:.0f}" for t, v in calls[which]["by_thread"].items())
            print(f"  {which:5} {calls[which]['calls_per_put']:.0f}  ({threads})")
        print(f"  sync - async: {calls['extra_calls_per_put']:.0f}")
    write_json(args.json, {"machine": machine_info(), "quick": args.quick,
                           "configuration": {"ops": args.ops, "threads": args.threads,
                                             "rounds": args.rounds, "size_bytes": SIZE},
                           "load_average": load, "rounds": rounds, "results": rows,
                           "calls": calls})
    return 0


if __name__ == "__main__":
    sys.exit(main())
