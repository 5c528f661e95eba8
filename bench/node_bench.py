"""Single-node benchmark: a real ``hdsd serve`` (TLS 1.3, encryption, durable fsync) against the
physical floor measured in the same run.

    python bench/node_bench.py [--quick] [--json PATH] [--dir DIR] [--profile]

hdsd cells (one node, ``AsyncClient`` in this process, 127.0.0.1):
  put 4 KiB sequential (p50/p90/p99/p999/max), 16 concurrent 4 KiB puts over one multiplexed
  connection and over 16 connections (puts/s), 4 KiB get latency, one streaming put of
  incompressible data (1 GiB; 64 MiB with --quick) and the streaming get of it (MiB/s).
floor cells: pwrite+fdatasync of 4 KiB and 1 MiB into a zero-filled preallocated file on the same
  disk, a trio TLS 1.3 echo round trip with the cluster's certificates, a plain trio TCP round
  trip, and one-way TLS streaming throughput.

Every hdsd figure is also printed as a ratio to its floor. ``--profile`` then restarts the node
under cProfile, runs sequential 4 KiB puts and prints where the node's main thread spends its
time per put. Writes JSON (default ``bench/results/node_bench.json``) with a flat ``results``
list. Never asserts; stops every process it started, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
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

import hdsd
from hdsd.client import load_profile
from hdsd.node import load_node_config
from hdsd.transport import client_context, server_context

HERE = Path(__file__).resolve().parent
KIB, MIB = 1 << 10, 1 << 20
SMALL = 4 * KIB
ECHO = 64
CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Counts:
    fsync_small: int
    fsync_big: int
    rtt: int
    tls_stream_mib: int
    put_seq: int
    per_task: int
    get_seq: int
    big_mib: int
    profile_puts: int


QUICK = Counts(fsync_small=300, fsync_big=30, rtt=500, tls_stream_mib=64, put_seq=400,
               per_task=25, get_seq=300, big_mib=64, profile_puts=500)
FULL = Counts(fsync_small=3000, fsync_big=200, rtt=5000, tls_stream_mib=512, put_seq=5000,
              per_task=250, get_seq=3000, big_mib=1024, profile_puts=3000)


def cell(system: str, op: str, label: str, size: int, concurrency: int, *,
         samples: list[float] | None = None, ops_per_s: float | None = None,
         mib_per_s: float | None = None, connections: int | None = None,
         **extra: Any) -> dict[str, Any]:
    lat = latency_ms(samples) if samples else {}
    return {"system": system, "op": op, "label": label, "size_bytes": size,
            "concurrency": concurrency, "connections": connections,
            "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
            "ops_per_s": ops_per_s, "mib_per_s": mib_per_s,
            "p90_ms": lat.get("p90_ms"), "p999_ms": lat.get("p999_ms"),
            "max_ms": lat.get("max_ms"), "n": len(samples) if samples else None, **extra}


# -- floor -----------------------------------------------------------------------------------
def disk_floor(directory: str, c: Counts) -> list[dict[str, Any]]:
    out = []
    for size, n in ((SMALL, c.fsync_small), (MIB, c.fsync_big)):
        samples = fsync_floor(directory, size, n)
        out.append(cell("floor", "fsync", f"pwrite+fdatasync {size // KIB} KiB", size, 1,
                        samples=samples, ops_per_s=len(samples) / sum(samples),
                        mib_per_s=size * len(samples) / sum(samples) / MIB))
    return out


class _FloorServer:
    """Echo (plain or TLS) and a TLS sink, chosen by the first byte the client sends."""

    def __init__(self, ctx: Any, stream_total: int) -> None:
        self.ctx = ctx
        self.stream_total = stream_total

    async def handle(self, tcp: trio.SocketStream) -> None:
        kind = await tcp.receive_some(1)
        stream: trio.abc.Stream = tcp
        if kind != b"P":
            stream = trio.SSLStream(tcp, self.ctx, server_side=True)
        async with stream:
            if kind == b"S":
                got = 0
                while got < self.stream_total:
                    piece = await stream.receive_some(256 * KIB)
                    if not piece:
                        return
                    got += len(piece)
                await stream.send_all(b"k")  # every byte arrived: the sender stops its clock
                return
            while data := await stream.receive_some(64 * KIB):
                await stream.send_all(data)


async def _floor_stream(kind: bytes, port: int, ctx: Any) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    await tcp.send_all(kind)
    if kind == b"P":
        return tcp
    tls = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
    await tls.do_handshake()
    return tls


async def network_floor(cluster: Path, profile_path: Path, c: Counts) -> list[dict[str, Any]]:
    node = load_node_config(cluster / "dc1-n1" / "node.toml")
    prof = load_profile(profile_path)
    client_ctx = client_context(prof.cert, prof.key, prof.ca)
    total = c.tls_stream_mib * MIB
    server = _FloorServer(server_context(node.cert, node.key, node.ca), total)
    out = []
    msg = os.urandom(ECHO)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            for label, kind in (("trio TCP echo 64 B", b"P"), ("trio TLS 1.3 echo 64 B", b"T")):
                samples = []
                async with await _floor_stream(kind, port, client_ctx) as stream:
                    for _ in range(c.rtt):
                        t0 = time.perf_counter()
                        await stream.send_all(msg)
                        got = 0
                        while got < ECHO:
                            got += len(await stream.receive_some(ECHO))
                        samples.append(time.perf_counter() - t0)
                out.append(cell("floor", "rtt", label, ECHO, 1, samples=samples,
                                ops_per_s=len(samples) / sum(samples)))
            piece = os.urandom(MIB)
            async with await _floor_stream(b"S", port, client_ctx) as stream:
                t0 = time.perf_counter()
                for _ in range(c.tls_stream_mib):
                    await stream.send_all(piece)
                await stream.receive_some(1)
                elapsed = time.perf_counter() - t0
            out.append(cell("floor", "stream", "trio TLS 1.3 one-way stream", total, 1,
                            mib_per_s=total / MIB / elapsed))
            nursery.cancel_scope.cancel()
    return out


# -- hdsd ------------------------------------------------------------------------------------
def _big_body(n_mib: int) -> AsyncIterator[bytes]:
    """Incompressible 1 MiB pieces, each distinct (content addressing would skip repeats)."""
    base = bytearray(os.urandom(MIB))

    async def gen() -> AsyncIterator[bytes]:
        for i in range(n_mib):
            base[:8] = i.to_bytes(8, "little")
            yield bytes(base)

    return gen()


async def measure_node(profile_path: Path, c: Counts,
                       node_pid: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The hdsd cells, and what the sequential 4 KiB puts cost: store commits and fdatasyncs,
    CPU per put of the node's main (trio) thread, its other threads, and this client."""
    out: list[dict[str, Any]] = []
    data = os.urandom(SMALL)
    with trio.fail_after(1800):
        async with hdsd.AsyncClient(profile_path, timeout=300) as client:
            await timed_puts(client, "warm", 50, data, [])

            # Large first: on a fresh node it moves the log past its first (fallocate-only)
            # segment into zero-filled ones, as on a node that has been running a while.
            size = c.big_mib * MIB
            t0 = time.perf_counter()
            await client.put("bench", "big", _big_body(c.big_mib), size=size)
            elapsed = time.perf_counter() - t0
            out.append(cell("hdsd", "put", f"streaming put {c.big_mib} MiB incompressible",
                            size, 1, mib_per_s=size / MIB / elapsed))
            got = 0
            t0 = time.perf_counter()
            async with client.open_get("bench", "big") as stream:
                async for piece in stream:
                    got += len(piece)
            elapsed = time.perf_counter() - t0
            if got != size:
                raise RuntimeError(f"streaming get returned {got} of {size} bytes")
            out.append(cell("hdsd", "get", f"streaming get {c.big_mib} MiB", size, 1,
                            mib_per_s=size / MIB / elapsed))

            before = (await client.status())["store"]
            seq: list[float] = []
            cpu0, mine0 = thread_cpu_seconds(node_pid), time.process_time()
            await timed_puts(client, "seq", c.put_seq, data, seq)
            cpu1, mine1 = thread_cpu_seconds(node_pid), time.process_time()
            main_cpu = cpu1.get(node_pid, 0.0) - cpu0.get(node_pid, 0.0)
            other_cpu = sum(v - cpu0.get(t, 0.0) for t, v in cpu1.items() if t != node_pid)
            cpu = {"node_main_thread_ms_per_put": main_cpu / c.put_seq * 1e3,
                   "node_other_threads_ms_per_put": other_cpu / c.put_seq * 1e3,
                   "client_process_ms_per_put": (mine1 - mine0) / c.put_seq * 1e3}
            out.append(cell("hdsd", "put", "put 4 KiB sequential", SMALL, 1, connections=1,
                            samples=seq, ops_per_s=len(seq) / sum(seq)))

            muxed: list[float] = []
            elapsed = await concurrently(CONCURRENCY, lambda t: timed_puts(
                client, f"mux{t}", c.per_task, data, muxed))
            out.append(cell("hdsd", "put", "put 4 KiB x16, one connection", SMALL, CONCURRENCY,
                            connections=1, samples=muxed, ops_per_s=len(muxed) / elapsed))

            gets: list[float] = []
            for i in range(c.get_seq):
                key = f"seq/{i % c.put_seq:07d}"
                t0 = time.perf_counter()
                await client.get("bench", key)
                gets.append(time.perf_counter() - t0)
            out.append(cell("hdsd", "get", "get 4 KiB sequential", SMALL, 1, connections=1,
                            samples=gets, ops_per_s=len(gets) / sum(gets)))
            after = (await client.status())["store"]

        async with AsyncExitStack() as stack:
            opened = [await stack.enter_async_context(hdsd.AsyncClient(profile_path, timeout=300))
                      for _ in range(CONCURRENCY)]
            for cl in opened:
                await cl.status()  # connect before the clock starts
            conns: list[float] = []
            elapsed = await concurrently(CONCURRENCY, lambda t: timed_puts(
                opened[t], f"conn{t}", c.per_task, data, conns))
        out.append(cell("hdsd", "put", "put 4 KiB x16, 16 connections", SMALL, CONCURRENCY,
                        connections=CONCURRENCY, samples=conns, ops_per_s=len(conns) / elapsed))
    store = {"segment_during_small_puts": before["head_segment"],
             "commits": after["commits"] - before["commits"],
             "fsyncs": after["fsyncs"] - before["fsyncs"],
             "batches": after["batches"] - before["batches"], **cpu}
    return out, store


# -- ratios and table ------------------------------------------------------------------------
def _find(cells: list[dict[str, Any]], system: str, op: str, size: int,
          concurrency: int = 1, connections: int | None = None) -> dict[str, Any]:
    for c in cells:
        if (c["system"], c["op"], c["size_bytes"], c["concurrency"]) == (
                system, op, size, concurrency) and (
                connections is None or c["connections"] == connections):
            return c
    raise KeyError((system, op, size, concurrency, connections))


def add_ratios(cells: list[dict[str, Any]], big: int) -> None:
    """Each hdsd cell gets ``floor`` (what it is compared with) and ``ratio_to_floor``: for a
    latency hdsd p50 / floor p50 (1 would be perfect, higher is slower); for a throughput hdsd
    rate / floor rate (higher is better; above 1 means the floor is not the limit, e.g. group
    commit sharing one fdatasync between many puts)."""
    fs4 = next(c for c in cells if c["op"] == "fsync" and c["size_bytes"] == SMALL)
    fs1m = next(c for c in cells if c["op"] == "fsync" and c["size_bytes"] == MIB)
    tls = next(c for c in cells if c["op"] == "rtt" and "TLS" in c["label"])
    stream = next(c for c in cells if c["op"] == "stream")
    put = _find(cells, "hdsd", "put", SMALL)
    put.update(floor="fdatasync 4 KiB + TLS rtt",
               ratio_to_floor=put["p50_ms"] / (fs4["p50_ms"] + tls["p50_ms"]))
    get = _find(cells, "hdsd", "get", SMALL)
    get.update(floor="TLS rtt", ratio_to_floor=get["p50_ms"] / tls["p50_ms"])
    for conns in (1, CONCURRENCY):
        c = _find(cells, "hdsd", "put", SMALL, CONCURRENCY, conns)
        c.update(floor="1 / fdatasync 4 KiB p50",
                 ratio_to_floor=c["ops_per_s"] / (1e3 / fs4["p50_ms"]))
    c = _find(cells, "hdsd", "put", big)
    c.update(floor="fdatasync 1 MiB MiB/s", ratio_to_floor=c["mib_per_s"] / fs1m["mib_per_s"])
    c = _find(cells, "hdsd", "get", big)
    c.update(floor="TLS one-way stream MiB/s",
             ratio_to_floor=c["mib_per_s"] / stream["mib_per_s"])


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if v >= 100 else f"{v:.3f}{unit}" if v < 10 else f"{v:.1f}{unit}"


def show(cells: list[dict[str, Any]]) -> None:
    rows = []
    for c in cells:
        ratio = (f"{c['ratio_to_floor']:.2f}x  ({c['floor']})" if "ratio_to_floor" in c
                 else "")
        rows.append([c["system"], c["op"], c["label"], _fmt(c["p50_ms"]), _fmt(c["p90_ms"]),
                     _fmt(c["p99_ms"]), _fmt(c["p999_ms"]), _fmt(c["max_ms"]),
                     _fmt(c["ops_per_s"]), _fmt(c["mib_per_s"]), ratio])
    print_table(["system", "op", "what", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms",
                 "ops/s", "MiB/s", "vs floor"], rows)


# -- where a 4 KiB put goes on the node --------------------------------------------------------
def _in(*parts: str) -> Callable[[str, str], bool]:
    return lambda filename, func: any(p in filename or p in func for p in parts)


CATEGORIES = [
    ("idle: epoll wait (client, fsync wakeups)", _in("'select.epoll'")),
    ("TLS record encrypt/decrypt", _in("'_ssl.", "/ssl.py", "trio/_ssl.py")),
    ("socket send/recv syscalls", _in("'_socket.socket'")),
    ("msgpack", _in("msgpack", "hdsd/_packing.py")),
    ("wire codec (frames, state machine)", _in("hdsd/wire/")),
    ("transport session glue", _in("hdsd/transport/")),
    ("handlers + node", _in("hdsd/node/", "hdsd/cluster/", "hdsd/_groups.py")),
    ("seal (hash, zstd, AEAD) + thread hop", _in("hdsd/pipeline/", "trio/_threads.py", "nacl/")),
    ("store (commit, index, sqlite)", _in("hdsd/store/")),
    ("trio scheduler, channels, cancel scopes", _in("/trio/", "outcome")),
]


async def _profiled_puts(profile_path: Path, node: NodeProcess, n: int,
                         out: Path) -> tuple[float, dict[int, float], dict[int, float]]:
    assert node.proc is not None
    pid = node.proc.pid
    data = os.urandom(SMALL)
    with trio.fail_after(900):
        async with hdsd.AsyncClient(profile_path, timeout=300) as client:
            await timed_puts(client, "pwarm", 100, data, [])
            node.proc.send_signal(signal.SIGUSR1)
            await trio.sleep(0.3)  # the handler runs when the node's main thread next wakes
            cpu0 = thread_cpu_seconds(pid)
            samples: list[float] = []
            await timed_puts(client, "prof", n, data, samples)
            cpu1 = thread_cpu_seconds(pid)
            node.proc.send_signal(signal.SIGUSR2)
            while not out.exists():
                await trio.sleep(0.05)
    return sum(samples), cpu0, cpu1


def profile_node(config: Path, profile_path: Path, n: int, out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    with NodeProcess(config, prefix=profiler_prefix(out)) as node:
        wall, cpu0, cpu1 = trio.run(_profiled_puts, profile_path, node, n, out)
        main_tid = node.proc.pid if node.proc else 0
    grouped, top = profile_breakdown(out, CATEGORIES)
    main_cpu = cpu1.get(main_tid, 0.0) - cpu0.get(main_tid, 0.0)
    other_cpu = sum(cpu1[t] - cpu0.get(t, 0.0) for t in cpu1 if t != main_tid)
    print(f"\nnode profile: {n} sequential 4 KiB puts, {wall / n * 1e3:.3f} ms/put seen by the "
          f"client (under cProfile, which slows Python code)")
    print(f"node CPU per put: main (trio) thread {main_cpu / n * 1e3:.3f} ms, other threads "
          f"(log writer, seal workers, store spares) {other_cpu / n * 1e3:.3f} ms")
    print_table(["main thread, self time by category", "ms/put", "calls/put"],
                [[name, f"{t / n * 1e3:.4f}", f"{calls / n:.1f}"] for name, t, calls in grouped])
    print()
    print_table(["top functions by self time", "self ms/put", "cum ms/put", "calls/put"],
                [[f, f"{t / n * 1e3:.4f}", f"{ct / n * 1e3:.4f}", f"{c / n:.1f}"]
                 for f, t, ct, c in top])
    print(f"profile: {out}  (python -m pstats {out})")
    return {"puts": n, "client_ms_per_put": wall / n * 1e3,
            "main_thread_cpu_ms_per_put": main_cpu / n * 1e3,
            "other_threads_cpu_ms_per_put": other_cpu / n * 1e3,
            "main_thread_self_ms_per_put": {name: t / n * 1e3 for name, t, _ in grouped},
            "top": [{"function": f, "self_ms_per_put": t / n * 1e3,
                     "cum_ms_per_put": ct / n * 1e3, "calls_per_put": c / n}
                    for f, t, ct, c in top],
            "file": str(out)}


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 64 MiB; under a minute")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "node_bench.json")
    ap.add_argument("--dir", default=str(HERE / "results"),
                    help="scratch directory (the node's data and the disk floor: same disk)")
    ap.add_argument("--profile", action="store_true",
                    help="then profile 4 KiB puts on the node (cProfile) and print a breakdown")
    args = ap.parse_args()
    counts = QUICK if args.quick else FULL
    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="node-bench-", dir=args.dir))
    started = time.time()
    try:
        cluster = scratch / "cluster"
        profile_path = init_cluster(cluster)
        config = cluster / "dc1-n1" / "node.toml"
        # One node alone: with replication built, it must not wait for the other site.
        policy = "local" if set_write_policy(config, "local") else None
        cells = disk_floor(str(scratch), counts)
        cells += trio.run(network_floor, cluster, profile_path, counts)
        with NodeProcess(config) as node:
            assert node.proc is not None
            try:
                measured, store = trio.run(measure_node, profile_path, counts, node.proc.pid)
            except BaseException:
                print(f"node log (last lines):\n{node.log()}", file=sys.stderr)
                raise
            if not node.alive:
                raise RuntimeError(f"the node died during the run:\n{node.log()}")
        cells += measured
        add_ratios(cells, counts.big_mib * MIB)
        show(cells)
        print(f"4 KiB puts and gets: {store['commits']} commits in {store['fsyncs']} fdatasyncs "
              f"(log segment {store['segment_during_small_puts']}); CPU per sequential put: "
              f"node main thread {store['node_main_thread_ms_per_put']:.3f} ms, node other "
              f"threads {store['node_other_threads_ms_per_put']:.3f} ms, client "
              f"{store['client_process_ms_per_put']:.3f} ms")
        profiled = None
        if args.profile:
            profiled = profile_node(config, profile_path, counts.profile_puts,
                                    args.json.with_name("node_put.prof"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.json, {
        "benchmark": "node_bench", "quick": args.quick, "machine": machine_info(),
        "started": started, "seconds": time.time() - started, "results": cells,
        "write_policy": policy, "store_during_small_puts": store, "profile": profiled,
    })
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
