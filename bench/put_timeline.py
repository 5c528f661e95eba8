"""The timeline of one lone replicated 4 KiB put, step by step, across client, coordinator and
replica — beside the trio floor's (``bench/trio_floor.py``), in the same run.

    python bench/put_timeline.py [--puts N] [--warm N] [--no-floor] [--json PATH] [--dir DIR]

Starts a real two-site cluster (``hdsd init``, both nodes as ``hdsd serve``) and the trio
floor's two nodes, each process under this script's tracer (``put_timeline.py trace OUT ...``):
before the program runs, it wraps the functions a put goes through so that each marks a
timestamp (``time.perf_counter_ns``: CLOCK_MONOTONIC, shared by the processes of one machine)
in a list, which SIGUSR2 writes to OUT (SIGUSR1 empties it: the warm-up is not kept). The
client runs here, traced the same way. Nothing in hdsd changes: the tracer is outside it, so
it costs the product nothing when off (on, each mark costs ~1 µs; the put's own p50 is printed
traced, read it as a little slower than untraced).

Each put is a window from the client's ``put >`` to the next put's; every process's marks in
that window are named by (process, label, occurrence) and placed at their offset from the
put's start. The table gives, per step, the median offset over the puts, the median gap from
the step before it, and how often it was seen; scheduler passes (trio instrument: epoll waits
that returned) are counted per process. Never asserts; stops every process it started.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# -- the tracer (runs in every traced process) ---------------------------------------------
EVENTS: list[tuple[int, str, int]] = []  # (monotonic ns, label, this thread's CPU ns)
_now = time.perf_counter_ns
_cpu = time.thread_time_ns
_MAIN = threading.get_ident()


def mark(label: str) -> None:
    if threading.get_ident() != _MAIN:
        label = "[thread] " + label
    EVENTS.append((_now(), label, _cpu()))


def _wrap(owner: Any, name: str, label: str | None = None,
          labeller: Callable[..., str] | None = None) -> None:
    """Mark ``label >`` when owner.name starts and ``label <`` when it returns (awaited, for a
    coroutine function). Missing names are reported, not fatal (an older tree)."""
    orig = getattr(owner, name, None)
    if orig is None:
        print(f"put_timeline: no {owner!r}.{name} to trace", file=sys.stderr)
        return
    text = label or name
    import inspect

    if inspect.iscoroutinefunction(orig):
        @functools.wraps(orig)
        async def awrapper(*a: Any, **k: Any) -> Any:
            what = labeller(*a, **k) if labeller else text
            mark(what + " >")
            try:
                return await orig(*a, **k)
            finally:
                mark(what + " <")
        setattr(owner, name, awrapper)
    else:
        @functools.wraps(orig)
        def wrapper(*a: Any, **k: Any) -> Any:
            what = labeller(*a, **k) if labeller else text
            mark(what + " >")
            try:
                return orig(*a, **k)
            finally:
                mark(what + " <")
        setattr(owner, name, wrapper)


def _types(msgs: Any) -> str:
    return "+".join(type(m).__name__ for m in msgs)


class _Passes:
    """trio instrument: a mark each time the event loop comes back from epoll."""

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            EVENTS.append((_now(), "loop sleeps", _cpu()))

    def after_io_wait(self, timeout: float) -> None:
        EVENTS.append((_now(), "loop wakes", _cpu()))


def _instrument_trio() -> None:
    import trio

    run = trio.run

    @functools.wraps(run)
    def traced_run(*a: Any, **k: Any) -> Any:
        k["instruments"] = [*k.get("instruments", ()), _Passes()]
        return run(*a, **k)

    trio.run = traced_run  # type: ignore[assignment]


def _wire_hooks() -> None:
    """The session (client and nodes): reads, routing, sends."""
    from hdsd import transport

    ws = transport.WireSession
    _wrap(ws, "_feed", "rx")
    orig_route = ws._route

    def route(self: Any, event: Any, on_request: Any) -> Any:
        mark(f"route {type(event).__name__}")
        return orig_route(self, event, on_request)

    ws._route = route  # type: ignore[method-assign]
    _wrap(ws, "send_many", labeller=lambda self, msgs: f"send {_types(msgs)}")
    from hdsd.transport import _tlsread
    from hdsd.wire import Connection

    _wrap(Connection, "send_pieces", "encode")
    _wrap(_tlsread, "_send_now", "socket write")


def install_hdsd_hooks() -> None:
    """The node's put path (the coordinator and the replica run the same hooks)."""
    _instrument_trio()
    _wire_hooks()
    from hdsd.node import _connections, _handlers, _objects, _reads
    from hdsd.peers import PeerPool
    from hdsd.replication import Replicator
    from hdsd.store import Store, _fs, _wake, _writer

    _wrap(_connections, "handle_request", "handle_request")
    # A small put that arrived whole is answered by its connection's group task (one put: a
    # group of one), not by handle_request: its start is the same milestone.
    _wrap(_connections, "put_group", "handle_request")
    _wrap(_handlers, "put_object", "put_object")
    _wrap(_handlers, "audit_request", "audit")
    _wrap(_reads.ReadPaths, "find_request", "find_request")
    _wrap(_objects, "seal_in_thread", "seal")
    # A grouped small put is sealed in place, without a thread (the group's handler imported
    # the function by name: its own reference is the one to wrap).
    _wrap(_handlers, "seal_small", "seal")
    _wrap(Replicator, "write", "replicator.write")
    _wrap(Replicator, "keep_hints", "keep_hints")
    _wrap(PeerPool, "call", "peer call")
    _wrap(Store, "start_commit", "start_commit")
    # The pair write's own commit: its versions encoded before the Replicate (the replica
    # stores them as sealed here), queued once the request is on its way.
    if hasattr(Store, "start_encoded"):
        _wrap(Store, "start_encoded", "start_commit")
    _wrap(Store, "commit", "store.commit")
    _wrap(_writer.LogWriter, "_process", "writer batch")
    _wrap(_writer.LogWriter, "_apply_unindexed", "index update")
    _wrap(_fs.FileSystem, "pwritev", "pwritev")
    _wrap(_fs.FileSystem, "fdatasync", "fdatasync")
    _wrap(_wake.WakerPool, "signal", "signal committer")
    _wrap(_wake.WakerPool, "wait", "wait durable")
    # The replica's acknowledger waits on its connection's bell, rung by the log writer, not
    # on a waker of its own: its return is the same milestone.
    if hasattr(_wake, "Bell"):
        _wrap(_wake.Bell, "wait", "wait durable")


def install_floor_hooks() -> Any:
    _instrument_trio()
    import trio

    sys.path.insert(0, str(HERE))
    import trio_floor

    _wrap(trio.SSLStream, "receive_some", "rx")
    _wrap(trio.SSLStream, "send_all", "tx")
    _wrap(trio_floor.Node, "handle", labeller=lambda self, msg, reply: f"handle {msg[0]}")
    _wrap(trio_floor.Node, "seal", "seal")
    _wrap(trio_floor.Link, "call", labeller=lambda self, op, *a: f"call {op}")
    _wrap(trio_floor.Log, "start", "log.start")
    _wrap(trio_floor.Log, "_write", "write+fdatasync")
    orig = os.fdatasync

    def fdatasync(fd: int) -> None:
        mark("fdatasync >")
        try:
            orig(fd)
        finally:
            mark("fdatasync <")

    trio_floor.os.fdatasync = fdatasync  # type: ignore[attr-defined]
    return trio_floor


def _dump_on_signals(out: str) -> None:
    def clear(*_: Any) -> None:
        EVENTS.clear()

    def dump(*_: Any) -> None:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(list(EVENTS), f)
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)


def trace_main(argv: list[str]) -> None:
    """``trace OUT -m hdsd ...`` or ``trace-floor OUT node ...`` (the traced processes)."""
    import runpy

    kind, out, rest = argv[0], argv[1], argv[2:]
    _dump_on_signals(out)
    if kind == "trace":
        assert rest[:2] == ["-m", "hdsd"], rest
        install_hdsd_hooks()
        sys.argv = ["hdsd", *rest[2:]]
        runpy.run_module("hdsd", run_name="__main__", alter_sys=True)
    else:
        floor = install_floor_hooks()
        sys.exit(floor.main(rest))


# -- analysis ------------------------------------------------------------------------------
Event = tuple[int, str, int]


def timeline(client: list[Event], others: dict[str, list[Event]]
             ) -> tuple[list[dict[str, Any]], dict[str, float], list[float]]:
    """The steps of the puts, from the client's ``put >``/``put <`` marks: per step, the
    median offset from the put's start (ms), the median of each put's gap from the step
    before it, and — within the thread that marked it — the median wall time and CPU time
    since that thread's previous mark (CPU well under wall: the thread slept or waited for a
    core). Also scheduler passes per put per process, and each put's latency (ms)."""
    starts = [t for t, label, _ in client if label == "put >"]
    ends = [t for t, label, _ in client if label == "put <"]
    procs = {"client": client, **others}
    puts: list[dict[tuple[str, str], tuple[float, float, float]]] = []
    order: dict[tuple[str, str], int] = {}
    passes: dict[str, list[int]] = collections.defaultdict(list)
    for i, t0 in enumerate(starts):
        t1 = starts[i + 1] if i + 1 < len(starts) else t0 + 50_000_000
        steps: dict[tuple[str, str], tuple[float, float, float]] = {}
        for proc, events in procs.items():
            seen: collections.Counter[str] = collections.Counter()
            last: dict[bool, tuple[int, int]] = {}  # per thread kind: (t, cpu) of its last mark
            wakes = 0
            for t, label, cpu in events:
                if t < t0 or t >= t1:
                    continue
                if label == "loop wakes":
                    wakes += 1
                threaded = label.startswith("[thread]")
                prev = last.get(threaded, (t0, cpu))
                last[threaded] = (t, cpu)
                if label.startswith("loop "):
                    continue
                seen[label] += 1
                key = (proc, label if seen[label] == 1 else f"{label} #{seen[label]}")
                steps[key] = ((t - t0) / 1e6, (t - prev[0]) / 1e6, (cpu - prev[1]) / 1e6)
                order.setdefault(key, len(order))
            passes[proc].append(wakes)
        puts.append(steps)
    n = len(starts)
    keys = [k for k in order if sum(1 for p in puts if k in p) >= n / 2]
    keys.sort(key=lambda k: statistics.median(p[k][0] for p in puts if k in p))
    out = []
    for j, k in enumerate(keys):
        mine = [p[k] for p in puts if k in p]
        gaps = [p[k][0] - p[keys[j - 1]][0] for p in puts
                if k in p and (j == 0 or keys[j - 1] in p)] if j else [0.0]
        out.append({"process": k[0], "step": k[1], "ms": statistics.median(m[0] for m in mine),
                    "gap_ms": statistics.median(gaps),
                    "thread_wall_ms": statistics.median(m[1] for m in mine),
                    "thread_cpu_ms": statistics.median(m[2] for m in mine),
                    "seen": len(mine) / n})
    latencies = [(e - s) / 1e6 for s, e in zip(starts, ends, strict=False)]
    return out, {p: statistics.mean(v) for p, v in passes.items()}, latencies


# The critical path of a lone put as milestones, the same in both systems: (what, hdsd's mark,
# the floor's mark), each mark (process, label) — "#2" its second occurrence within the put.
Mark = tuple[str, str]
MILESTONES: list[tuple[str, Mark, Mark]] = [
    ("request on the wire (client)", ("client", "socket write <"), ("client", "tx <")),
    ("request read + decrypted", ("coordinator", "rx <"), ("coordinator", "rx <")),
    ("handler task starts", ("coordinator", "handle_request >"), ("coordinator", "handle put >")),
    ("body sealed", ("coordinator", "seal <"), ("coordinator", "seal <")),
    ("Replicate on the wire", ("coordinator", "socket write <"), ("coordinator", "tx <")),
    ("Replicate read (replica)", ("replica", "rx <"), ("replica", "rx <")),
    ("queued to its log writer", ("replica", "start_commit <"), ("replica", "log.start <")),
    ("log writer thread runs", ("replica", "[thread] writer batch >"),
     ("replica", "[thread] write+fdatasync >")),
    ("fdatasync starts", ("replica", "[thread] fdatasync >"),
     ("replica", "[thread] fdatasync >")),
    ("fdatasync returns", ("replica", "[thread] fdatasync <"),
     ("replica", "[thread] fdatasync <")),
    ("committer signalled", ("replica", "[thread] signal committer <"),
     ("replica", "[thread] write+fdatasync <")),
    ("handler runs again", ("replica", "wait durable <"), ("replica", "tx >")),
    ("Reply on the wire (replica)", ("replica", "socket write <"), ("replica", "tx <")),
    ("Reply read (coordinator)", ("coordinator", "rx < #2"), ("coordinator", "rx < #2")),
    ("peer call returns", ("coordinator", "peer call <"), ("coordinator", "call rep <")),
    ("own commit known durable", ("coordinator", "wait durable <"), ("coordinator", "tx > #2")),
    ("ack on the wire", ("coordinator", "socket write < #2"), ("coordinator", "tx < #2")),
    ("ack read (client)", ("client", "rx <"), ("client", "rx <")),
    ("put returns", ("client", "put <"), ("client", "put <")),
]
# The coordinator's own commit, beside the replica's round trip: (what, hdsd, floor), each
# measured from "Replicate on the wire" (negative: before it).
LOCAL_LANE: list[tuple[str, Mark, Mark]] = [
    ("queued to its log writer", ("coordinator", "start_commit <"),
     ("coordinator", "log.start <")),
    ("log writer thread runs", ("coordinator", "[thread] writer batch >"),
     ("coordinator", "[thread] write+fdatasync >")),
    ("fdatasync returns", ("coordinator", "[thread] fdatasync <"),
     ("coordinator", "[thread] fdatasync <")),
    ("committer signalled", ("coordinator", "[thread] signal committer <"),
     ("coordinator", "[thread] write+fdatasync <")),
]


def per_put(client: list[Event], others: dict[str, list[Event]]
            ) -> list[dict[tuple[str, str], float]]:
    """Each put's marks: (process, label[ #n]) -> ms from its start."""
    starts = [t for t, label, _ in client if label == "put >"]
    procs = {"client": client, **others}
    out = []
    for i, t0 in enumerate(starts):
        t1 = starts[i + 1] if i + 1 < len(starts) else t0 + 50_000_000
        marks: dict[tuple[str, str], float] = {}
        for proc, events in procs.items():
            seen: collections.Counter[str] = collections.Counter()
            for t, label, _ in events:
                if t0 <= t < t1 and not label.startswith("loop "):
                    seen[label] += 1
                    name = label if seen[label] == 1 else f"{label} #{seen[label]}"
                    marks[(proc, name)] = (t - t0) / 1e6
        out.append(marks)
    return out


def milestones(puts: list[dict[tuple[str, str], float]], which: int) -> dict[str, Any]:
    """Median of each put's step between consecutive milestones (*which*: 1 hdsd, 2 floor),
    and of the local lane's offsets from the Replicate's send."""
    steps: dict[str, float | None] = {}
    prev: tuple[str, str] = ("client", "put >")
    for m in MILESTONES:
        key: Mark = m[1] if which == 1 else m[2]
        d = [p[key] - p[prev] for p in puts if key in p and prev in p]
        steps[m[0]] = statistics.median(d) if len(d) >= len(puts) / 2 else None
        prev = key
    sent = MILESTONES[4][1] if which == 1 else MILESTONES[4][2]
    lane: dict[str, float | None] = {}
    for m in LOCAL_LANE:
        key = m[1] if which == 1 else m[2]
        d = [p[key] - p[sent] for p in puts if key in p and sent in p]
        lane[m[0]] = statistics.median(d) if len(d) >= len(puts) / 2 else None
    return {"steps": steps, "local_lane": lane}


def print_milestones(hdsd: dict[str, Any], floor: dict[str, Any] | None) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print("\nthe critical path, median of each put's step (ms):")
    print(f"{'step ends when':<32} {'hdsd':>7} {'floor':>7} {'diff':>7}")
    th = tf = 0.0
    for name, _, _ in MILESTONES:
        h = hdsd["steps"][name]
        fl = floor["steps"][name] if floor else None
        th += h or 0.0
        tf += fl or 0.0
        diff = f(h - fl) if h is not None and fl is not None else ""
        print(f"{name:<32} {f(h):>7} {f(fl):>7} {diff:>7}")
    print(f"{'sum of the medians':<32} {th:7.3f} {tf if floor else 0:7.3f} "
          f"{th - tf if floor else 0:7.3f}")
    print("\nthe coordinator's own commit, ms after its Replicate was on the wire:")
    for name, _, _ in LOCAL_LANE:
        h = hdsd["local_lane"][name]
        fl = floor["local_lane"][name] if floor else None
        print(f"{name:<32} {f(h):>7} {f(fl):>7}")


def print_timeline(title: str, steps: list[dict[str, Any]], passes: dict[str, float],
                   latencies: list[float]) -> None:
    print(f"\n{title}: p50 {statistics.median(latencies):.3f} ms over {len(latencies)} puts "
          "(traced); scheduler passes per put: "
          + ", ".join(f"{p} {v:.1f}" for p, v in passes.items()))
    print(f"{'at ms':>7} {'gap':>6} {'thr wall':>8} {'thr cpu':>7}  {'process':<12} step")
    for s in steps:
        seen = "" if s["seen"] > 0.98 else f"  ({s['seen']:.0%} of puts)"
        print(f"{s['ms']:7.3f} {s['gap_ms']:6.3f} {s['thread_wall_ms']:8.3f} "
              f"{s['thread_cpu_ms']:7.3f}  {s['process']:<12} {s['step']}{seen}")


# -- the run -------------------------------------------------------------------------------
async def _hdsd_puts(profile: Path, n: int, warm: int, nodes: dict[str, Any],
                     outs: dict[str, Path]) -> list[Event]:
    import trio

    import hdsd

    data = os.urandom(4 << 10)
    async with hdsd.AsyncClient(profile, site="dc1", timeout=60) as client:
        for i in range(warm):
            await client.put("bench", f"warm/{i}", data)
        await _signal_all(nodes, signal.SIGUSR1)
        EVENTS.clear()
        for i in range(n):
            mark("put >")
            await client.put("bench", f"tl/{i}", data)
            mark("put <")
            await trio.sleep(0.002)  # a lone put: what the last one left behind has settled
        mine = list(EVENTS)
    await _collect(nodes, outs)
    return mine


async def _floor_puts(port: int, ctx: Any, n: int, warm: int, nodes: dict[str, Any],
                      outs: dict[str, Path]) -> list[Event]:
    import trio
    import trio_floor

    data = os.urandom(4 << 10)
    async with trio_floor.FloorClient(port, ctx) as client:
        for i in range(warm):
            await client.put(f"warm/{i}", data)
        await _signal_all(nodes, signal.SIGUSR1)
        EVENTS.clear()
        for i in range(n):
            mark("put >")
            await client.put(f"tl/{i}", data)
            mark("put <")
            await trio.sleep(0.002)
        mine = list(EVENTS)
    await _collect(nodes, outs)
    return mine


async def _signal_all(nodes: dict[str, Any], sig: int) -> None:
    import trio

    for node in nodes.values():
        node.proc.send_signal(sig)
    await trio.sleep(0.3)  # handled when each node's main thread next runs


async def _collect(nodes: dict[str, Any], outs: dict[str, Path]) -> None:
    import trio

    for out in outs.values():
        out.unlink(missing_ok=True)
    await _signal_all(nodes, signal.SIGUSR2)
    with trio.fail_after(30):
        while not all(o.exists() for o in outs.values()):
            await trio.sleep(0.05)


def _load(outs: dict[str, Path]) -> dict[str, list[Event]]:
    return {name: [(t, label, cpu) for t, label, cpu in json.loads(p.read_text())]
            for name, p in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=500)
    ap.add_argument("--warm", type=int, default=100)
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--raw", type=Path, default=None,
                    help="also write each hdsd put's marks (ms from its start) there")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "put_timeline.json")
    ap.add_argument("--dir", default=str(HERE / "results"),
                    help="scratch directory (the nodes' data)")
    args = ap.parse_args()

    import trio

    sys.path.insert(0, str(HERE))
    import trio_floor
    from _harness import NodeProcess, free_ports, init_cluster, machine_info, write_json

    from hdsd.client import load_profile
    from hdsd.node import load_node_config

    _wire_hooks()  # this process is the client
    _instrument_trio()
    floor_cls = type("TracedFloor", (NodeProcess,), {
        "command": lambda self: [sys.executable, str(Path(__file__).resolve()), "trace-floor",
                                 str(self.out), *self.argv]})
    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="put-timeline-", dir=args.dir))
    doc: dict[str, Any] = {"benchmark": "put_timeline", "machine": machine_info(),
                           "load_average": os.getloadavg(), "started": time.time()}
    try:
        cluster = scratch / "cluster"
        profile = init_cluster(cluster)
        me = str(Path(__file__).resolve())
        outs = {"coordinator": scratch / "dc1.json", "replica": scratch / "dc2.json"}
        with NodeProcess(cluster / "dc2-n1" / "node.toml",
                         prefix=[me, "trace", str(outs["replica"])]) as dc2, \
                NodeProcess(cluster / "dc1-n1" / "node.toml",
                            prefix=[me, "trace", str(outs["coordinator"])]) as dc1:
            nodes = {"coordinator": dc1, "replica": dc2}
            client = trio.run(_hdsd_puts, profile, args.puts, args.warm, nodes, outs)
            steps, passes, lat = timeline(client, _load(outs))
            puts = per_put(client, _load(outs))
            miles = milestones(puts, 1)
            if args.raw:
                args.raw.write_text(json.dumps([{f"{k[0]}|{k[1]}": v for k, v in p.items()}
                                                for p in puts]))
        print_timeline("hdsd each-site, put 4 KiB x1", steps, passes, lat)
        doc["hdsd"] = {"timeline": steps, "passes": passes, "p50_ms": statistics.median(lat),
                       **miles}
        fmiles = None
        if not args.no_floor:
            # The floor's client reads and writes through trio's SSLStream itself.
            _wrap(trio.SSLStream, "receive_some", "rx")
            _wrap(trio.SSLStream, "send_all", "tx")
            ports = free_ports(2)
            fouts = {"coordinator": scratch / "f1.json", "replica": scratch / "f2.json"}
            procs = {}
            try:
                for role, node_dir, port, peer in (
                        ("replica", "dc2-n1", ports[1], None),
                        ("coordinator", "dc1-n1", ports[0], ports[1])):
                    cfg = load_node_config(cluster / node_dir / "node.toml")
                    argv = ["node", "--port", str(port), "--cert", str(cfg.cert), "--key",
                            str(cfg.key), "--ca", str(cfg.ca), "--log",
                            str(scratch / f"{role}.ring"), "--ring-mib", "32"]
                    if peer is not None:
                        argv += ["--peer", str(peer)]
                    proc = floor_cls(scratch / "floor")
                    proc.argv, proc.out = argv, fouts[role]
                    procs[role] = proc
                    proc.start()
                prof = load_profile(profile)
                ctx = trio_floor.client_context(prof.cert, prof.key, prof.ca)
                client = trio.run(_floor_puts, ports[0], ctx, args.puts, args.warm, procs,
                                  fouts)
                fsteps, fpasses, flat = timeline(client, _load(fouts))
            finally:
                for proc in procs.values():
                    proc.stop()
            print_timeline("trio floor, put 4 KiB x1", fsteps, fpasses, flat)
            fmiles = milestones(per_put(client, _load(fouts)), 2)
            doc["trio_floor"] = {"timeline": fsteps, "passes": fpasses,
                                 "p50_ms": statistics.median(flat), **fmiles}
            print(f"\nhdsd / trio floor, traced p50: "
                  f"{doc['hdsd']['p50_ms'] / doc['trio_floor']['p50_ms']:.2f}x")
        print_milestones(miles, fmiles)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    doc["seconds"] = time.time() - doc["started"]
    write_json(args.json, doc)
    print(f"JSON: {args.json}  (load average at start {doc['load_average'][0]:.2f})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("trace", "trace-floor"):
        trace_main(sys.argv[1:])
    else:
        main()
