"""Synchronisation benchmark: a real two-site hdsd cluster (one ``hdsd serve`` per site, TLS,
encryption, fsync) against the physical floor and, when asked, replicated peer systems.

    python bench/sync_latency.py [--quick] [--rtt-ms MS] [--peers pg,etcd,redis] [--profile]
                                 [--json PATH] [--dir DIR] [--plots DIR | --no-plots]
    hdsd bench sync ...          (the same options)

Cells: sizes 4 KiB, 64 KiB, 1 MiB, 64 MiB x concurrency 1, 16, 64 x write policies ``each-site``
and ``local`` (the nodes are restarted with the policy changed between groups): put-ack latency
p50/p90/p99/p999/max, ops/s and MiB/s, then the get latency of what was just written. The floor,
in the same run and on the same disk: pwrite+fdatasync of each size and a loopback TCP (and TLS)
round trip; every hdsd figure also as a ratio to it. ``--rtt-ms`` routes each site's link to the
other through a delay proxy (``tests/helpers/faultproxy.py``), adding that round trip. Peers run
the same cells (sizes a peer cannot take are recorded as skipped, with the reason). Catch-up:
with dc2 stopped and dc1 degraded (``hdsd site degrade dc1``), write N MiB, restart dc2 and time
the return to RPO 0. The full run adds a single 1 GiB streaming put.

Writes JSON (default ``bench/results/sync_latency.json``) with one flat ``results`` list, prints
a table, draws PNG plots when matplotlib is installed, reports progress on stderr. Never asserts
a time; stops every process it started, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import trio_floor  # noqa: E402
from _harness import (  # noqa: E402
    NodeProcess,
    free_ports,
    fsync_floor,
    latency_ms,
    machine_info,
    print_table,
    process_cpu_seconds,
    profile_breakdown,
    profiler_prefix,
    set_write_policy,
    write_json,
)
from _peers import PEERS, SYSTEM_OF, Peer, PeerUnavailable  # noqa: E402

import hdsd  # noqa: E402

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
POLICIES = ("each-site", "local")
# Peers hold whole values in memory (theirs and this process's): cap what is in flight at once.
PEER_INFLIGHT_MAX = 1 * GIB


@dataclass(frozen=True, slots=True)
class Plan:
    sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    bytes_per_cell: int  # ops per cell = this / size, clamped to [concurrency, max_ops]
    max_ops: int
    floor_ops: int
    rtt_ops: int
    catchup_mib: int
    big_blob: int | None
    profile_puts: int


QUICK = Plan(sizes=(4 * KIB, 64 * KIB, MIB), concurrency=(1, 16, 64), bytes_per_cell=16 * MIB,
             max_ops=300, floor_ops=200, rtt_ops=300, catchup_mib=16, big_blob=None,
             profile_puts=300)
FULL = Plan(sizes=(4 * KIB, 64 * KIB, MIB, 64 * MIB), concurrency=(1, 16, 64),
            bytes_per_cell=256 * MIB, max_ops=3000, floor_ops=1000, rtt_ops=3000,
            catchup_mib=256, big_blob=GIB, profile_puts=2000)


def ops_for(plan: Plan, size: int, concurrency: int) -> int:
    n = max(concurrency, min(plan.max_ops, plan.bytes_per_cell // size))
    return -(-n // concurrency) * concurrency  # whole rounds: every task does the same work


def human(size: int) -> str:
    return f"{size // GIB} GiB" if size >= GIB else f"{size // MIB} MiB" if size >= MIB \
        else f"{size // KIB} KiB"


def progress(msg: str) -> None:
    print(f"[sync {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cell(system: str, op: str, policy: str | None, size: int, concurrency: int, label: str,
         *, samples: Sequence[float] | None = None, elapsed: float | None = None,
         **extra: Any) -> dict[str, Any]:
    """One result row. *samples* are seconds per op; *elapsed* the wall time of all of them."""
    lat = latency_ms(samples) if samples else {}
    n = len(samples) if samples else None
    ops = n / elapsed if n and elapsed else None
    return {"system": system, "op": op, "policy": policy, "size_bytes": size,
            "concurrency": concurrency, "label": label,
            "p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"),
            "p99_ms": lat.get("p99_ms"), "p999_ms": lat.get("p999_ms"),
            "max_ms": lat.get("max_ms"), "ops_per_s": ops,
            "mib_per_s": ops * size / MIB if ops and op in ("put", "get", "fsync") else None,
            "n": n, **extra}


def skipped(system: str, op: str, policy: str | None, size: int, concurrency: int,
            reason: str) -> dict[str, Any]:
    return {**cell(system, op, policy, size, concurrency, f"{op} {human(size)} x{concurrency}"),
            "skipped": reason}


# -- the floor -------------------------------------------------------------------------------
async def _echo(stream: trio.abc.Stream) -> None:
    async with stream:
        while data := await stream.receive_some(64 * KIB):
            await stream.send_all(data)


async def loopback_rtt(n: int, ssl_pair: tuple[Any, Any] | None) -> list[float]:
    """Seconds per 64-byte echo over a trio TCP (or TLS, given (server ctx, client ctx))
    connection on 127.0.0.1."""

    async def handler(tcp: trio.SocketStream) -> None:
        await _echo(tcp if ssl_pair is None else trio.SSLStream(tcp, ssl_pair[0],
                                                                server_side=True))

    samples: list[float] = []
    msg = os.urandom(64)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, handler, 0)
            port = listeners[0].socket.getsockname()[1]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream: trio.abc.Stream = tcp
            if ssl_pair is not None:
                stream = trio.SSLStream(tcp, ssl_pair[1], server_hostname="127.0.0.1")
            async with stream:
                for _ in range(n):
                    t0 = time.perf_counter()
                    await stream.send_all(msg)
                    got = 0
                    while got < len(msg):
                        got += len(await stream.receive_some(64))
                    samples.append(time.perf_counter() - t0)
            nursery.cancel_scope.cancel()
    return samples


def measure_floor(scratch: Path, cluster: Path, plan: Plan) -> list[dict[str, Any]]:
    from hdsd.client import load_profile
    from hdsd.node import load_node_config
    from hdsd.transport import client_context, server_context

    out = []
    for size in plan.sizes:
        n = max(3, min(plan.floor_ops, (256 * MIB) // size))
        progress(f"floor: pwrite+fdatasync {human(size)} x{n}")
        samples = fsync_floor(scratch, size, n)
        out.append(cell("floor", "fsync", None, size, 1, f"pwrite+fdatasync {human(size)}",
                        samples=samples, elapsed=sum(samples)))
    node = load_node_config(cluster / "dc1-n1" / "node.toml")
    prof = load_profile(cluster / "client.toml")
    pair = (server_context(node.cert, node.key, node.ca),
            client_context(prof.cert, prof.key, prof.ca))
    for label, ctx in (("loopback TCP round trip 64 B (trio)", None),
                       ("loopback TLS 1.3 round trip 64 B (trio)", pair)):
        progress(f"floor: {label} x{plan.rtt_ops}")
        samples = trio.run(loopback_rtt, plan.rtt_ops, ctx)
        out.append(cell("floor", "rtt", None, 64, 1, label, samples=samples,
                        elapsed=sum(samples), transport="tls" if ctx else "tcp"))
    return out


# -- the hdsd cluster ------------------------------------------------------------------------
class Cluster:
    """Two sites, one node each, optionally linked through delay proxies; stops all it started."""

    def __init__(self, root: Path, rtt_ms: float, stack: ExitStack) -> None:
        self.root = root
        self.profile = root / "client.toml"
        self.configs = {site: root / f"{site}-n1" / "node.toml" for site in ("dc1", "dc2")}
        self.nodes: dict[str, NodeProcess] = {}
        self.stack = stack
        ports = free_ports(2)
        proc = subprocess.run([sys.executable, "-m", "hdsd", "init", str(root), "--ports",
                               ",".join(map(str, ports))], capture_output=True, timeout=300,
                              cwd=root.parent)
        if proc.returncode != 0:
            raise RuntimeError(f"hdsd init failed: {proc.stderr.decode(errors='replace')}")
        self.proxied = False
        if rtt_ms > 0:
            self._proxy(ports, rtt_ms / 2e3)
        stack.callback(self.stop)

    def _proxy(self, ports: list[int], one_way_s: float) -> None:
        """Each node reaches the other site through its own delay proxy: addresses are not part
        of the layout id, so only the other site's entry in each node.toml changes."""
        sys.path.insert(0, str(HERE.parent))
        from tests.helpers.faultproxy import FaultProxy

        for me, other, port in (("dc1", "dc2", ports[1]), ("dc2", "dc1", ports[0])):
            proxy = self.stack.enter_context(FaultProxy("127.0.0.1", port))
            proxy.set_delay(one_way_s)
            cfg = self.configs[me]
            text = cfg.read_text()
            block = text[text.index(f'name = "{other}"', text.index("[[sites]]")):]
            new_block = block.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}", 1)
            cfg.write_text(text.replace(block, new_block))
        self.proxied = True

    def start(self, policy: str, sites: Sequence[str] = ("dc1", "dc2"),
              prefix: dict[str, list[str]] | None = None) -> None:
        for site in sites:
            set_write_policy(self.configs[site], policy)
            node = NodeProcess(self.configs[site], prefix=(prefix or {}).get(site, ()))
            node.start()
            self.nodes[site] = node

    def stop(self, sites: Sequence[str] = ("dc1", "dc2")) -> None:
        for site in sites:
            node = self.nodes.pop(site, None)
            if node is not None:
                node.stop()

    def check(self) -> None:
        for site, node in self.nodes.items():
            if not node.alive:
                raise RuntimeError(f"node {site} died:\n{node.log()}")

    def pids(self) -> dict[str, int]:
        """The processes whose CPU a cell reports: this one (the client), dc1's node (the
        coordinator: the client writes there) and dc2's (the replica)."""
        return {"client": os.getpid(),
                "coordinator": self.nodes["dc1"].proc.pid,  # type: ignore[union-attr]
                "replica": self.nodes["dc2"].proc.pid}  # type: ignore[union-attr]


_TAGS = itertools.count(1)


def _payload(base: bytes, size: int, tag: int) -> bytes:
    """*size* bytes starting with *tag*: distinct bodies, as content addressing would
    deduplicate identical chunks (peers get larger ones as *base* repeated; they do not
    deduplicate, and random bytes leave nothing to compress)."""
    body = base if size <= len(base) else base * -(-size // len(base))
    return tag.to_bytes(8, "little") + body[8:size]


def _stream_body(base: bytes, size: int, tag: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for off in range(0, size, MIB):
            piece = bytearray(base[: min(MIB, size - off)])
            piece[:16] = tag.to_bytes(8, "little") + off.to_bytes(8, "little")
            yield bytes(piece)

    return gen()


async def _put(client: hdsd.AsyncClient, key: str, base: bytes, size: int) -> float:
    tag = next(_TAGS)
    if size <= MIB:
        data = _payload(base, size, tag)
        t0 = time.perf_counter()
        await client.put("bench", key, data)
    else:
        t0 = time.perf_counter()
        await client.put("bench", key, _stream_body(base, size, tag), size=size)
    return time.perf_counter() - t0


async def _get(client: hdsd.AsyncClient, key: str, size: int) -> float:
    t0 = time.perf_counter()
    got = 0
    async with client.open_get("bench", key) as stream:
        async for piece in stream:
            got += len(piece)  # counted, not kept: 64 streams of 64 MiB would not fit
    if got != size:
        raise RuntimeError(f"get {key}: {got} of {size} bytes")
    return time.perf_counter() - t0


async def _run_tasks(c: int, per_task: int, job: Any) -> tuple[list[float], float]:
    """Run *job(t, i)* -> seconds in *c* tasks; (samples, wall time). The first refusal
    (:class:`hdsd.HdsdError`) ends every task and is raised as itself, not in a group."""
    samples: list[float] = []
    errors: list[hdsd.HdsdError] = []

    async def task(t: int, scope: trio.CancelScope) -> None:
        try:
            for i in range(per_task):
                samples.append(await job(t, i))
        except hdsd.HdsdError as exc:
            errors.append(exc)
            scope.cancel()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(c):
            nursery.start_soon(task, t, nursery.cancel_scope)
    if errors:
        raise errors[0]
    return samples, time.perf_counter() - t0


def failed(system: str, op: str, policy: str | None, size: int, concurrency: int,
           exc: BaseException) -> dict[str, Any]:
    """A cell the system refused (e.g. a write timeout under overload): recorded, not fatal."""
    return {**cell(system, op, policy, size, concurrency, f"{op} {human(size)} x{concurrency}"),
            "error": f"{type(exc).__name__}: {exc}"}


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    return {role: process_cpu_seconds(pid) for role, pid in pids.items()}


def cpu_use(before: dict[str, float], after: dict[str, float], n: int,
            size: int) -> dict[str, Any]:
    """CPU (user + system, all threads, from /proc: 10 ms ticks) each process spent on *n* ops
    of *size* bytes, per op and per MiB, and summed over the processes."""
    used = {role: after[role] - before[role] for role in before}
    used["total"] = sum(used.values())
    mib = n * size / MIB
    return {"cpu_s": used, "cpu_s_per_op": {r: v / n for r, v in used.items()},
            "cpu_s_per_mib": {r: v / mib for r, v in used.items()},
            "cpu_ms_per_op": used["total"] / n * 1e3, "cpu_ms_per_mib": used["total"] / mib * 1e3}


@dataclass
class Target:
    """One system's side of the cells: its connections and how to put and get on one."""

    system: str
    policy: str | None
    clients: Sequence[Any]
    put: Callable[[Any, str, int], Awaitable[float]]
    get: Callable[[Any, str, int], Awaitable[float]]
    pids: dict[str, int]
    check: Callable[[], None]
    max_size: int | None = None


async def measure_cells(targets: Sequence[Target], plan: Plan,
                        keep: dict[tuple[str, str, int, int], list[float]]
                        ) -> list[dict[str, Any]]:
    """Every size x concurrency cell, each target's in turn (so a ratio between two systems is
    measured a few seconds apart, not minutes: the machine's load drifts): puts, then gets of
    what was just written, with the CPU each process in the target's *pids* spent on each. A
    refusal (:class:`hdsd.HdsdError`) is a result; *check* raises if a server died."""
    out: list[dict[str, Any]] = []
    for size in plan.sizes:
        for c in plan.concurrency:
            for target in targets:
                out += await _measure_cell(target, plan, size, c, keep)
    return out


async def _measure_cell(target: Target, plan: Plan, size: int, c: int,
                        keep: dict[tuple[str, str, int, int], list[float]]
                        ) -> list[dict[str, Any]]:
    system, policy, clients = target.system, target.policy, target.clients
    put, get, pids, check, max_size = (target.put, target.get, target.pids, target.check,
                                       target.max_size)
    out: list[dict[str, Any]] = []
    name = f"{system} {policy}" if policy else system
    if max_size is not None and size > max_size:
        reason = f"whole bodies in one frame: the {system} measures up to " \
                 f"{human(max_size)}"
        return [skipped(system, op, policy, size, c, reason) for op in ("put", "get")]
    n = ops_for(plan, size, c)
    conns = min(c, len(clients))
    prefix = f"{policy or system}/{size}/{c}"
    label = f"{human(size)} x{c}"
    progress(f"{name}: put {label} ({n} ops)")

    async def do_put(t: int, i: int, prefix: str = prefix, size: int = size,
                     conns: int = conns) -> float:
        return await put(clients[t % conns], f"{prefix}/{t}/{i}", size)

    async def do_get(t: int, i: int, prefix: str = prefix, size: int = size,
                     conns: int = conns) -> float:
        return await get(clients[t % conns], f"{prefix}/{t}/{i}", size)

    try:
        cpu0 = cpu_now(pids)
        put_s, put_el = await _run_tasks(c, n // c, do_put)
        cpu1 = cpu_now(pids)
        check()
        progress(f"{name}: get {label}")
        get_s, get_el = await _run_tasks(c, n // c, do_get)
        cpu2 = cpu_now(pids)
    except hdsd.HdsdError as exc:
        check()  # a refusal is a result; a dead node is not
        progress(f"{name}: {label} FAILED: {exc}")
        return [failed(system, op, policy, size, c, exc) for op in ("put", "get")]
    for op, samples, el, cpu in (("put", put_s, put_el, cpu_use(cpu0, cpu1, n, size)),
                                 ("get", get_s, get_el, cpu_use(cpu1, cpu2, n, size))):
        out.append(cell(system, op, policy, size, c, f"{op} {label}", samples=samples,
                        elapsed=el, connections=conns, **cpu))
        keep[(system, f"{op}/{policy}" if policy else op, size, c)] = samples
    progress(f"  put p50 {out[-2]['p50_ms']:.3f} ms, {out[-2]['ops_per_s']:.0f} ops/s, "
             f"{out[-2]['cpu_ms_per_op']:.2f} ms CPU/op; get p50 "
             f"{out[-1]['p50_ms']:.3f} ms")
    return out


async def hdsd_cells(cluster: Cluster, policy: str, plan: Plan, base: bytes,
                     keep: dict[tuple[str, str, int, int], list[float]],
                     floor: TrioFloor | None = None) -> list[dict[str, Any]]:
    """The hdsd cells under *policy*; with *floor*, each cell of the trio floor just before
    the same hdsd cell."""
    with trio.fail_after(3600):
        async with AsyncExitStack() as stack:
            # Up to 16 connections; beyond that tasks share them (multiplexed streams), as many
            # application threads behind one connection pool would.
            clients = [await stack.enter_async_context(
                hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600))
                for _ in range(16)]
            for cl in clients:
                await cl.status()
            for i in range(20):
                await _put(clients[0], f"warm/{policy}/{i}", base, 4 * KIB)

            async def put(client: hdsd.AsyncClient, key: str, size: int) -> float:
                return await _put(client, key, base, size)

            targets = [Target("hdsd", policy, clients, put, _get, cluster.pids(),
                              cluster.check)]
            if floor is not None:
                targets.insert(0, await floor_target(floor, stack, base))
            return await measure_cells(targets, plan, keep)


# -- the trio floor: a minimal replicated put in trio (bench/trio_floor.py) ----------------
FLOOR_SYSTEM = "trio-floor"
FLOOR_MAX_SIZE = MIB  # it sends a body as one frame and seals it whole


class FloorProcess(NodeProcess):
    def __init__(self, argv: list[str], directory: Path, **kw: Any) -> None:
        super().__init__(directory / "floor", **kw)  # only its directory is used: the cwd
        self.argv = argv

    def command(self) -> list[str]:
        return [*self.wrapper, sys.executable, str(HERE / "trio_floor.py"), *self.argv]


class TrioFloor:
    """The floor's replica and coordinator, with the cluster's node certificates; the client
    uses the cluster's client certificate. Stops both (via *stack*). *process* holds extra
    :class:`NodeProcess` arguments by role (e.g. a wrapper: ``bench/instructions.py``)."""

    def __init__(self, root: Path, cluster: Path, plan: Plan, stack: ExitStack,
                 process: dict[str, dict[str, Any]] | None = None) -> None:
        from hdsd.client import load_profile
        from hdsd.node import load_node_config

        root.mkdir(parents=True, exist_ok=True)
        # The ring holds every cell's puts until its gets have read them.
        need = max(ops_for(plan, s, c) * (s + 64) for s in plan.sizes if s <= FLOOR_MAX_SIZE
                   for c in plan.concurrency)
        ring_mib = -(-need // MIB) + 8
        ports = free_ports(2)
        self.nodes: dict[str, FloorProcess] = {}
        for role, node_dir, port, peer in (("replica", "dc2-n1", ports[1], None),
                                           ("coordinator", "dc1-n1", ports[0], ports[1])):
            cfg = load_node_config(cluster / node_dir / "node.toml")
            argv = ["node", "--port", str(port), "--cert", str(cfg.cert), "--key", str(cfg.key),
                    "--ca", str(cfg.ca), "--log", str(root / f"{role}.ring"),
                    "--ring-mib", str(ring_mib)]
            if peer is not None:
                argv += ["--peer", str(peer)]
            proc = FloorProcess(argv, root, **(process or {}).get(role, {}))
            stack.callback(proc.stop)
            proc.start()
            self.nodes[role] = proc
        self.port = ports[0]
        prof = load_profile(cluster / "client.toml")
        self.ctx = trio_floor.client_context(prof.cert, prof.key, prof.ca)

    def pids(self) -> dict[str, int]:
        return {"client": os.getpid(),
                **{role: p.proc.pid for role, p in self.nodes.items()  # type: ignore[union-attr]
                   }}

    def check(self) -> None:
        for role, node in self.nodes.items():
            if not node.alive:
                raise RuntimeError(f"trio floor {role} died:\n{node.log()}")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


async def floor_target(floor: TrioFloor, stack: AsyncExitStack, base: bytes) -> Target:
    """The trio floor as a target: 16 connections (closed by *stack*), warmed up."""
    async def put(client: trio_floor.FloorClient, key: str, size: int) -> float:
        data = _payload(base, size, next(_TAGS))
        t0 = time.perf_counter()
        await client.put(key, data)
        return time.perf_counter() - t0

    async def get(client: trio_floor.FloorClient, key: str, size: int) -> float:
        t0 = time.perf_counter()
        got = await client.get(key)
        took = time.perf_counter() - t0
        if len(got) != size:
            raise RuntimeError(f"trio floor get {key}: {len(got)} of {size} bytes")
        return took

    clients = [await stack.enter_async_context(trio_floor.FloorClient(floor.port, floor.ctx))
               for _ in range(16)]
    for i in range(20):
        await put(clients[0], f"warm/{i}", 4 * KIB)
    return Target(FLOOR_SYSTEM, None, clients, put, get, floor.pids(), floor.check,
                  FLOOR_MAX_SIZE)


async def big_blob(cluster: Cluster, size: int, base: bytes) -> dict[str, Any]:
    progress(f"hdsd each-site: one streaming put of {human(size)}")
    with trio.fail_after(3600):
        async with hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600) as client:
            took = await _put(client, "big/1", base, size)
    return cell("hdsd", "put", "each-site", size, 1, f"single streaming put {human(size)}",
                samples=[took], elapsed=took)


# -- peers -----------------------------------------------------------------------------------
def _threads(c: int, per_task: int, job: Any) -> tuple[list[float], float]:
    """Run *job(t, i)* -> seconds in *c* threads released together; (samples, wall time)."""
    samples: list[float] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(c + 1)

    def work(t: int) -> None:
        gate.wait()
        try:
            for i in range(per_task):
                samples.append(job(t, i))
        except BaseException as exc:  # reported by the caller, after every thread ended
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(c)]
    for th in threads:
        th.start()
    gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return samples, elapsed


def peer_cells(peer: Peer, plan: Plan, base: bytes,
               keep: dict[tuple[str, str, int, int], list[float]],
               out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the peer's cells to *out* as they are measured (kept if a later one fails)."""
    for size in plan.sizes:
        for c in plan.concurrency:
            reason = peer.skip_reason(size)
            if reason is None and c * size > PEER_INFLIGHT_MAX:
                reason = (f"{c} x {human(size)} in flight exceeds the "
                          f"{human(PEER_INFLIGHT_MAX)} the bench allows a peer (whole values "
                          "in memory, client and server)")
            if reason is not None:
                progress(f"{peer.system}: skip {human(size)} x{c}: {reason}")
                out += [skipped(peer.system, op, None, size, c, reason) for op in ("put", "get")]
                continue
            peer.check()  # a server that died ends this peer's run, with its log
            n = ops_for(plan, size, c)
            per = n // c
            # Values in memory are the peers' limit, not disk: keys are reused in a ring of
            # at most 16 MiB per thread (an update costs them what an insert does: a new row
            # version / revision / AOF record, replicated and synced).
            slots = max(1, min(per, (16 * MIB) // size))
            progress(f"{peer.system}: put {human(size)} x{c} ({n} ops)")
            clients = [peer.connect() for _ in range(c)]
            try:
                def put(t: int, i: int, size: int = size, c: int = c, slots: int = slots,
                        clients: list[Any] = clients) -> float:
                    data = _payload(base, size, next(_TAGS))
                    t0 = time.perf_counter()
                    clients[t].put(f"{size}/{c}/{t}/{i % slots}", data)
                    return time.perf_counter() - t0

                def get(t: int, i: int, size: int = size, c: int = c, slots: int = slots,
                        clients: list[Any] = clients) -> float:
                    t0 = time.perf_counter()
                    got = clients[t].get(f"{size}/{c}/{t}/{i % slots}")
                    took = time.perf_counter() - t0
                    if len(got) != size:
                        raise RuntimeError(f"{peer.system}: got {len(got)} of {size} bytes")
                    return took

                put_s, put_el = _threads(c, per, put)
                get_s, get_el = _threads(c, per, get)
            except Exception as exc:  # one refused cell must not lose the peer's others
                progress(f"{peer.system}: {human(size)} x{c} FAILED: {exc!r}")
                out += [failed(peer.system, op, None, size, c, exc) for op in ("put", "get")]
                continue
            finally:
                for cl in clients:
                    cl.close()
            for op, samples, el in (("put", put_s, put_el), ("get", get_s, get_el)):
                out.append(cell(peer.system, op, None, size, c,
                                f"{op} {human(size)} x{c}", samples=samples, elapsed=el,
                                connections=c))
                keep[(peer.system, op, size, c)] = samples
            progress(f"  put p50 {out[-2]['p50_ms']:.3f} ms, {out[-2]['ops_per_s']:.0f} ops/s")
    return out


def run_peer(name: str, root: Path, plan: Plan, base: bytes,
             keep: dict[tuple[str, str, int, int], list[float]]
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(status for the JSON, cells); never raises for a peer that cannot run here."""
    peer = PEERS[name](root / name)
    progress(f"{peer.system}: starting")
    try:
        peer.start()
    except PeerUnavailable as exc:
        progress(f"{peer.system}: NOT RUN: {exc}")
        return {"status": "unavailable", "reason": str(exc)}, []
    partial: list[dict[str, Any]] = []
    try:
        peer_cells(peer, plan, base, keep, partial)
        return {"status": "ran", **peer.info}, partial
    except Exception as exc:  # a peer failing mid-run must not lose the other results
        progress(f"{peer.system}: FAILED: {exc}")
        return {"status": "failed", "reason": str(exc), **peer.info}, partial
    finally:
        peer.stop()


async def wait_rpo0(cluster: Cluster, limit: float = 1800) -> float:
    """Seconds until dc1 reports RPO 0 (every hint replayed to dc2)."""
    t0 = time.perf_counter()
    with trio.fail_after(limit):
        async with hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600) as client:
            while (rpo := (await client.status())["rpo"])["versions"] != 0:
                progress(f"waiting for RPO 0: {rpo}")
                cluster.check()
                await trio.sleep(1.0)
    return time.perf_counter() - t0


# -- catch-up --------------------------------------------------------------------------------
async def catch_up(cluster: Cluster, mib: int, base: bytes) -> dict[str, Any]:
    """dc2 stopped, dc1 degraded: write *mib* MiB in 1 MiB puts, restart dc2, time RPO 0."""
    # Start from RPO 0: earlier cells may have left a replay backlog that would be counted.
    drained = await wait_rpo0(cluster)
    progress(f"catch-up: stopping dc2, degrading dc1, writing {mib} MiB")
    cluster.stop(["dc2"])
    proc = subprocess.run([sys.executable, "-m", "hdsd", "--profile", str(cluster.profile),
                           "site", "degrade", "dc1", "--reason", "bench"],
                          capture_output=True, timeout=120, cwd=cluster.root.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"hdsd site degrade failed: {proc.stderr.decode(errors='replace')}")
    with trio.fail_after(3600):
        async with hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600) as client:
            samples, elapsed = await _run_tasks(4, mib // 4, lambda t, i: _put(
                client, f"catchup/{t}/{i}", base, MIB))
            before = (await client.status())["rpo"]
            progress(f"catch-up: backlog {before}; restarting dc2")
            t_start = time.perf_counter()
            await trio.to_thread.run_sync(cluster.start, "each-site", ["dc2"])
            t_listening = time.perf_counter()
            polls = 0
            while True:
                status = await client.status()
                polls += 1
                if status["rpo"]["versions"] == 0:
                    break
                cluster.check()
                await trio.sleep(0.02)
            done = time.perf_counter()
            mode = status["mode"]["mode"]
    took = done - t_listening
    backlog_mib = before["bytes"] / MIB
    return {"written_mib": mib, "earlier_backlog_drain_s": drained,
            "degraded_put_mib_per_s": mib / elapsed,
            "degraded_put_p50_ms": latency_ms(samples)["p50_ms"], "backlog_before": before,
            "dc2_start_s": t_listening - t_start, "seconds_to_rpo0": took,
            "seconds_to_rpo0_including_start": done - t_start,
            "catchup_mib_per_s": backlog_mib / took if took > 0 else None,
            "catchup_versions_per_s": before["versions"] / took if took > 0 else None,
            "status_polls": polls,
            "mode_after": mode}


# -- profile: where a replicated 4 KiB put goes on each node --------------------------------
def profile_sites(cluster: Cluster, n: int, out_dir: Path) -> dict[str, Any]:
    from node_bench import CATEGORIES, _in

    categories = [("replication (coordinator, peer links, hints)", _in("hdsd/replication/")),
                  *CATEGORIES]
    # Absolute: the nodes run in their own directories and write these files themselves.
    files = {site: out_dir.resolve() / f"sync_put_{site}.prof" for site in ("dc1", "dc2")}
    for f in files.values():
        f.unlink(missing_ok=True)
    cluster.start("each-site", prefix={s: profiler_prefix(f) for s, f in files.items()})
    try:
        pids = {s: cluster.nodes[s].proc.pid for s in files}  # type: ignore[union-attr]

        async def drive() -> float:
            async with hdsd.AsyncClient(cluster.profile, site="dc1", timeout=600) as client:
                base = os.urandom(4 * KIB)
                for i in range(100):
                    await _put(client, f"pwarm/{i}", base, 4 * KIB)
                for pid in pids.values():
                    os.kill(pid, signal.SIGUSR1)
                await trio.sleep(0.3)  # the handler runs when each main thread next wakes
                t0 = time.perf_counter()
                for i in range(n):
                    await _put(client, f"prof/{i}", base, 4 * KIB)
                took = time.perf_counter() - t0
                for pid in pids.values():
                    os.kill(pid, signal.SIGUSR2)
                while not all(f.exists() for f in files.values()):
                    cluster.check()  # a node that cannot write its profile must not hang us
                    await trio.sleep(0.05)
                return took

        progress(f"profile: {n} sequential replicated 4 KiB puts under cProfile")
        wall = trio.run(drive)
    finally:
        cluster.stop()
    report: dict[str, Any] = {"puts": n, "client_ms_per_put": wall / n * 1e3, "sites": {}}
    for site, f in files.items():
        grouped, top = profile_breakdown(f, categories, top=12)
        role = "coordinator" if site == "dc1" else "replica"
        print(f"\nnode {site} ({role}) main thread, {n} replicated 4 KiB puts "
              f"({wall / n * 1e3:.3f} ms/put seen by the client under cProfile)")
        print_table(["self time by category", "ms/put", "calls/put"],
                    [[name, f"{t / n * 1e3:.4f}", f"{c / n:.1f}"] for name, t, c in grouped])
        print_table(["top functions by self time", "self ms/put", "cum ms/put", "calls/put"],
                    [[fn, f"{t / n * 1e3:.4f}", f"{ct / n * 1e3:.4f}", f"{c / n:.1f}"]
                     for fn, t, ct, c in top])
        report["sites"][site] = {
            "role": role, "file": str(f),
            "main_thread_self_ms_per_put": {name: t / n * 1e3 for name, t, _ in grouped},
            "top": [{"function": fn, "self_ms_per_put": t / n * 1e3,
                     "cum_ms_per_put": ct / n * 1e3, "calls_per_put": c / n}
                    for fn, t, ct, c in top]}
    return report


# -- ratios, table, plots --------------------------------------------------------------------
def add_ratios(cells: list[dict[str, Any]], rtt_ms: float) -> None:
    """hdsd cells get ``floor_ms`` / ``ratio_to_floor`` (p50 over the physical floor: the
    fdatasync of the same size plus one loopback TCP round trip per hop — client to
    coordinator, and for each-site coordinator to the other site plus the emulated RTT) and
    ``mib_ratio_to_floor`` (MiB/s over sequential fdatasync MiB/s of that size: above 1 means
    group commit shares one fdatasync between puts). Against each peer that ran the same cell:
    ``p50_vs_<system>`` (hdsd p50 / peer p50) and ``ops_vs_<system>`` (hdsd ops/s / peer).
    Against the trio floor's same cell: ``p50_vs_trio_floor``, ``ops_vs_trio_floor`` and
    ``cpu_vs_trio_floor`` (CPU per op, all processes together)."""
    fsync = {c["size_bytes"]: c for c in cells if c["op"] == "fsync"}
    tcp = next(c for c in cells if c["op"] == "rtt" and c.get("transport") == "tcp")
    peers = {(c["system"], c["op"], c["size_bytes"], c["concurrency"]): c for c in cells
             if c["system"] in SYSTEM_OF.values() and c["p50_ms"] is not None}
    floor_cell = {(c["op"], c["size_bytes"], c["concurrency"]): c for c in cells
                  if c["system"] == FLOOR_SYSTEM and c["p50_ms"] is not None}
    for c in cells:
        if c["system"] != "hdsd" or c["p50_ms"] is None:
            continue
        t = floor_cell.get((c["op"], c["size_bytes"], c["concurrency"]))
        if t is not None:
            # The same cell of the trio floor (replicated like each-site; a local-policy cell
            # is compared with it too: what hdsd pays over the floor's two fsyncs).
            c["p50_vs_trio_floor"] = c["p50_ms"] / t["p50_ms"]
            c["ops_vs_trio_floor"] = c["ops_per_s"] / t["ops_per_s"]
            if c.get("cpu_ms_per_op") is not None and t.get("cpu_ms_per_op"):
                c["cpu_vs_trio_floor"] = c["cpu_ms_per_op"] / t["cpu_ms_per_op"]
        fs = fsync.get(c["size_bytes"])
        if c["op"] == "put" and fs is not None:
            remote = c["policy"] == "each-site"
            floor = fs["p50_ms"] + tcp["p50_ms"] * (2 if remote else 1) + \
                (rtt_ms if remote else 0.0)
            c.update(floor="fdatasync + loopback rtt per hop" + (" + emulated rtt"
                                                                 if remote and rtt_ms else ""),
                     floor_ms=floor, ratio_to_floor=c["p50_ms"] / floor,
                     mib_ratio_to_floor=c["mib_per_s"] / fs["mib_per_s"])
        elif c["op"] == "get":
            c.update(floor="loopback rtt", floor_ms=tcp["p50_ms"],
                     ratio_to_floor=c["p50_ms"] / tcp["p50_ms"])
        for system in SYSTEM_OF.values():
            p = peers.get((system, c["op"], c["size_bytes"], c["concurrency"]))
            if p is not None and (c["op"] == "get" or c["policy"] == "each-site"):
                c[f"p50_vs_{system}"] = c["p50_ms"] / p["p50_ms"]
                c[f"ops_vs_{system}"] = c["ops_per_s"] / p["ops_per_s"]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def show(cells: list[dict[str, Any]]) -> None:
    ran = [s for s in SYSTEM_OF.values() if any(c["system"] == s and c["p50_ms"] is not None
                                                 for c in cells)]
    rows = []
    for c in cells:
        if c.get("skipped") or c.get("error"):
            continue
        ratio = f"{c['ratio_to_floor']:.2f}x" if "ratio_to_floor" in c else ""
        vs = [f"{c[f'p50_vs_{s}']:.2f}x" if f"p50_vs_{s}" in c else "" for s in ran]
        trio_vs = [f"{c[k]:.2f}x" if k in c else "" for k in ("p50_vs_trio_floor",
                                                             "ops_vs_trio_floor")]
        size = human(c["size_bytes"]) if c["op"] != "rtt" else "64 B"
        rows.append([c["system"], c["op"], c["policy"] or "", size, str(c["concurrency"]),
                     _fmt(c["p50_ms"]), _fmt(c["p90_ms"]), _fmt(c["p99_ms"]),
                     _fmt(c["p999_ms"]), _fmt(c["max_ms"]), _fmt(c["ops_per_s"]),
                     _fmt(c["mib_per_s"]), ratio, *trio_vs, *vs, c["label"]])
    print_table(["system", "op", "policy", "size", "conc", "p50 ms", "p90 ms", "p99 ms",
                 "p999 ms", "max ms", "ops/s", "MiB/s", "p50/floor", "p50/trio", "ops/trio",
                 *[f"p50/{s}" for s in ran], "what"], rows)
    cpu_rows = []
    for c in cells:
        per_op, per_mib = c.get("cpu_s_per_op"), c.get("cpu_s_per_mib")
        if not per_op or not per_mib:
            continue
        cpu_rows.append([c["system"], c["op"], c["policy"] or "", human(c["size_bytes"]),
                         str(c["concurrency"]),
                         *[_fmt(per_op[r] * 1e3) for r in ("client", "coordinator", "replica",
                                                           "total")],
                         _fmt(per_mib["total"] * 1e3),
                         f"{c['cpu_vs_trio_floor']:.2f}x" if "cpu_vs_trio_floor" in c else "",
                         c["label"]])
    if cpu_rows:
        print("\nCPU (user + system, from /proc, 10 ms ticks) per op, by process:")
        print_table(["system", "op", "policy", "size", "conc", "client ms", "coord ms",
                     "replica ms", "total ms", "ms/MiB", "cpu/trio", "what"], cpu_rows)
    for c in cells:
        for what in ("skipped", "error"):
            if c.get(what):
                print(f"{what}: {c['system']} {c['op']} {c['policy'] or ''} "
                      f"{human(c['size_bytes'])} x{c['concurrency']}: {c[what]}")


def plots(cells: list[dict[str, Any]], keep: dict[tuple[str, str, int, int], list[float]],
          out_dir: Path) -> list[str]:
    """Latency CDF per size (one panel per concurrency) and MiB/s vs concurrency per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sizes = sorted({k[2] for k in keep})
    concs = sorted({k[3] for k in keep})
    series = sorted({(k[0], k[1]) for k in keep if "put" in k[1]})
    for size in sizes:
        fig, axes = plt.subplots(1, len(concs), figsize=(5 * len(concs), 4), squeeze=False)
        for ax, c in zip(axes[0], concs, strict=True):
            for system, op in series:
                samples = keep.get((system, op, size, c))
                if not samples:
                    continue
                xs = sorted(s * 1e3 for s in samples)
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))],
                        label=f"{system} {op}".replace("put/", ""))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())  # 2, 10, not 2x10^0
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"put {human(size)}, {c} concurrent")
            ax.set_xlabel("ack latency (ms)")
            ax.set_ylabel("fraction of puts")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sync_cdf_{size}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for system, policy in sorted({(c["system"], c["policy"]) for c in cells
                                      if c["op"] == "put" and c["system"] != "floor"}):
            pts = sorted((c["concurrency"], c["mib_per_s"]) for c in cells
                         if (c["system"], c["policy"], c["op"], c["size_bytes"]) ==
                         (system, policy, "put", size) and c["mib_per_s"] and c["n"]
                         and c["n"] > 1)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{system} {policy or ''}".strip())
        ax.set_xscale("log", base=2)
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.set_title(f"put {human(size)}")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("MiB/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "sync_throughput.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(str(path))
    return written


# -- main ------------------------------------------------------------------------------------
# How long --quick takes on the 2-core reference VM (62 s measured before the trio floor, which
# adds ~10 s; 121 s with the machine shared and loaded; the README says the same,
# and tests/bench/test_sync_quick.py checks that both give this one figure).
QUICK_DURATION = "about a minute and a half"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sync_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer ops, no 64 MiB, no 1 GiB blob, no peers unless asked "
                         f"({QUICK_DURATION})")
    ap.add_argument("--rtt-ms", type=float, default=0.0,
                    help="emulated round trip between the sites (delay proxy), ms")
    ap.add_argument("--peers", default="",
                    help="comma-separated peers to run too: " + ",".join(PEERS))
    ap.add_argument("--profile", action="store_true",
                    help="then profile replicated 4 KiB puts on both nodes (cProfile)")
    ap.add_argument("--catchup-mib", type=int, default=None,
                    help="MiB written while dc2 is down (default 16 quick, 256 full; 0: skip)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "sync_latency.json")
    ap.add_argument("--dir", type=Path, default=HERE / "results",
                    help="scratch directory (nodes, peers and the disk floor: same disk)")
    ap.add_argument("--plots", type=Path, default=None,
                    help="directory for PNG plots (default: beside the JSON)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peer_list if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    return args


def _sigterm(signum: int, frame: Any) -> None:
    # The same orderly stop as Ctrl-C. Re-sent as SIGINT rather than raised here: inside
    # trio.run, trio's own SIGINT handler delivers KeyboardInterrupt where it is safe.
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    catchup_mib = plan.catchup_mib if args.catchup_mib is None else args.catchup_mib
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.dir))
    scratch.chmod(0o755)  # peers may run as another user (postgres) below it
    started = time.time()
    base = os.urandom(MIB)
    keep: dict[tuple[str, str, int, int], list[float]] = {}
    cells: list[dict[str, Any]] = []
    peers: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            cluster = Cluster(scratch / "cluster", args.rtt_ms, stack)
            cells += measure_floor(scratch, cluster.root, plan)
            progress("trio floor: starting its replica and coordinator")
            floor = TrioFloor(scratch / "trio-floor", cluster.root, plan, stack)
            for policy in POLICIES:
                progress(f"hdsd: (re)starting both sites with write_policy = {policy}")
                cluster.stop()
                cluster.start(policy)
                # The floor's cells interleaved with the replicated (each-site) ones.
                cells += trio.run(hdsd_cells, cluster, policy, plan, base, keep,
                                  floor if policy == "each-site" else None)
                floor.stop()
            cluster.stop()
            cluster.start("each-site")
            # The local cells leave dc2 behind; the next measurements start from RPO 0.
            extra["local_backlog_drain_s"] = trio.run(wait_rpo0, cluster)
            if plan.big_blob:
                try:
                    cells.append(trio.run(big_blob, cluster, plan.big_blob, base))
                except hdsd.HdsdError as exc:
                    progress(f"big blob FAILED: {exc}")
                    cells.append(failed("hdsd", "put", "each-site", plan.big_blob, 1, exc))
            # The extras must not cost the cells already measured: a failure is recorded.
            if catchup_mib > 0:
                try:
                    extra["catch_up"] = trio.run(catch_up, cluster, catchup_mib, base)
                    c = extra["catch_up"]
                    progress(f"catch-up: RPO 0 after {c['seconds_to_rpo0']:.2f} s, "
                             f"{c['catchup_mib_per_s']:.1f} MiB/s")
                except Exception as exc:
                    progress(f"catch-up FAILED: {exc!r}")
                    extra["catch_up"] = {"error": repr(exc)}
            cluster.stop()
            if args.profile:
                try:
                    extra["profile"] = profile_sites(cluster, plan.profile_puts,
                                                     args.json.parent)
                except Exception as exc:
                    progress(f"profile FAILED: {exc!r}")
                    extra["profile"] = {"error": repr(exc)}
        for name in args.peer_list:
            peers[SYSTEM_OF[name]], got = run_peer(name, scratch / "peers", plan, base, keep)
            cells += got
    except Exception as exc:  # keep what was measured: report it, then fail the run
        traceback.print_exc()
        extra["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"run FAILED: {extra['error']}; writing the cells measured so far")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not any(c["op"] == "rtt" for c in cells):
        return 1  # failed before the floor: nothing worth a report
    add_ratios(cells, args.rtt_ms)
    print()
    show(cells)
    if "seconds_to_rpo0" in extra.get("catch_up", {}):
        c = extra["catch_up"]
        print(f"\ncatch-up: {c['written_mib']} MiB written with dc2 down (degraded put "
              f"{c['degraded_put_mib_per_s']:.1f} MiB/s, backlog {c['backlog_before']}); "
              f"after dc2 listened again RPO 0 in {c['seconds_to_rpo0']:.2f} s = "
              f"{c['catchup_mib_per_s']:.1f} MiB/s (dc2 start {c['dc2_start_s']:.2f} s)")
    for system, st in peers.items():
        if st["status"] != "ran":
            print(f"peer {system}: {st['status']}: {st['reason']}")
    plot_files: list[str] | str = "disabled (--no-plots)"
    if not args.no_plots:
        try:
            plot_files = plots(cells, keep, args.plots or args.json.parent)
        except ImportError:
            plot_files = "skipped: matplotlib is not installed"
    print(f"plots: {plot_files}")
    write_json(args.json, {
        "benchmark": "sync_latency", "quick": args.quick, "machine": machine_info(),
        "started": started, "seconds": time.time() - started,
        "configuration": {"sites": ["dc1", "dc2"], "nodes_per_site": 1,
                          "policies": list(POLICIES), "rtt_ms": args.rtt_ms,
                          "rtt_emulation": "delay proxy (tests/helpers/faultproxy.py)"
                          if args.rtt_ms else None,
                          "sizes": list(plan.sizes), "concurrency": list(plan.concurrency),
                          "max_connections": 16, "peers": args.peer_list,
                          "bytes_per_cell": plan.bytes_per_cell, "max_ops": plan.max_ops},
        "peers": peers, "plots": plot_files, **extra, "results": cells,
    })
    print(f"JSON: {args.json}")
    return 1 if "error" in extra else 0


if __name__ == "__main__":
    sys.exit(main())
