"""Session benchmark: the trio glue alone (``WireSession`` over loopback TLS 1.3), no store.

    python bench/session_bench.py [--quick] [--json PATH]

A client session and a server session run in this one process (one thread, so CPU per request
is the *whole* glue cost, both ends) over a real TLS 1.3 loopback connection set up by the
transport's handshake helpers. The server answers like the node does, minus the store: a put
gets its body drained (credit granted back) then a ``Reply``; a get gets ``GetStart``, the body,
``End``. Cells:

* 4 KiB put, sequential: latency, CPU, scheduler passes (``before_io_wait``), task steps and
  transport ``send_all``/``receive_some`` calls per put;
* 16 concurrent 4 KiB puts on one connection: puts/s, the same counts per put;
* streaming put and get of 64 MiB (256 MiB without ``--quick``): MiB/s and counts per MiB;
* floor: a plain trio TLS echo round trip and one-way TLS stream on the same kind of connection.

The client puts the way ``AsyncClient.put`` does for a small body: ``send_many`` of PutStart,
Data and End when the session has it (else three ``send``), then the reply. Never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import latency_ms, machine_info, print_table, write_json

from hdsd import HdsdError
from hdsd.transport import (
    WireSession,
    client_context,
    connect_tls,
    create_ca,
    handshake_and_identify,
    issue_client_cert,
    issue_node_cert,
    listener_port,
    open_tls_listeners,
    server_context,
)
from hdsd.wire import (
    PROTOCOL_VERSION,
    Connection,
    Data,
    End,
    GetRequest,
    GetStart,
    Hello,
    Message,
    PutStart,
    Reply,
    Role,
)

HERE = Path(__file__).resolve().parent
KIB, MIB = 1 << 10, 1 << 20
SMALL = 4 * KIB
CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Counts:
    seq: int
    per_task: int
    stream_mib: int
    rtt: int


QUICK = Counts(seq=2000, per_task=125, stream_mib=64, rtt=2000)
FULL = Counts(seq=10000, per_task=600, stream_mib=256, rtt=10000)


class Meter(trio.abc.Instrument):
    """Counts scheduler passes and task steps (trio's own hooks: exact, noise-free)."""

    def __init__(self) -> None:
        self.passes = 0
        self.steps = 0

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


class IoCounter:
    """Counts transport-level calls (each one at least one syscall) by wrapping the methods of
    ``trio.SocketStream`` for the duration of the run."""

    def __init__(self) -> None:
        self.sends = 0
        self.receives = 0
        send, receive = trio.SocketStream.send_all, trio.SocketStream.receive_some
        counter = self

        async def send_all(self: trio.SocketStream, data: Any) -> None:
            counter.sends += 1
            await send(self, data)

        async def receive_some(self: trio.SocketStream, max_bytes: int | None = None) -> Any:
            counter.receives += 1
            return await receive(self, max_bytes)

        trio.SocketStream.send_all = send_all  # type: ignore[method-assign]
        trio.SocketStream.receive_some = receive_some  # type: ignore[method-assign]


def snapshot(meter: Meter, io: IoCounter) -> tuple[int, int, int, int, float]:
    return meter.passes, meter.steps, io.sends, io.receives, time.process_time()


def per(before: tuple[int, int, int, int, float], after: tuple[int, int, int, int, float],
        n: float, unit: str) -> dict[str, float]:
    d = [a - b for a, b in zip(after, before, strict=True)]
    return {f"passes_per_{unit}": d[0] / n, f"steps_per_{unit}": d[1] / n,
            f"send_calls_per_{unit}": d[2] / n, f"receive_calls_per_{unit}": d[3] / n,
            f"cpu_ms_per_{unit}": d[4] / n * 1e3}


# -- the two ends ------------------------------------------------------------------------------
async def serve_one(listener: trio.SSLListener[trio.SocketStream]) -> None:
    stream = await listener.accept()
    await handshake_and_identify(stream)
    session = WireSession(stream, Connection(Role.SERVER))
    await session.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="bench", peer="srv",
                             window=session.conn.initial_window))
    with trio.fail_after(10):
        await session.receive_hello()
    async with trio.open_nursery() as nursery:
        def on_request(msg: Message) -> None:
            inbox = session.open_inbox(msg.rid)  # type: ignore[attr-defined]
            nursery.start_soon(handle, session, msg, inbox)

        try:
            await session.run_reader(on_request)
        except HdsdError:
            pass  # the client closed: the end of the run
        finally:
            nursery.cancel_scope.cancel()
            await session.aclose()


async def handle(session: WireSession, msg: Message,
                 inbox: trio.MemoryReceiveChannel[Message]) -> None:
    try:
        if isinstance(msg, PutStart):
            while True:
                event = await inbox.receive()
                if isinstance(event, Data):
                    await session.consumed(msg.rid, len(event.data))
                elif isinstance(event, End):
                    break
            await session.send(Reply(rid=msg.rid, body={"ok": True}))
        elif isinstance(msg, GetRequest):
            size = msg.end or 0
            await session.send(GetStart(rid=msg.rid, info={"start": 0, "end": size}))
            piece = os.urandom(MIB)
            sent = 0
            while sent < size:
                n = min(MIB, size - sent)
                await session.send_body(msg.rid, piece[:n])
                sent += n
            await session.send(End(rid=msg.rid))
    finally:
        session.close_inbox(msg.rid)  # type: ignore[attr-defined]


async def quiet_reader(session: WireSession) -> None:
    try:
        await session.run_reader()
    except HdsdError:
        pass  # closed at the end of the run


class Client:
    def __init__(self, session: WireSession) -> None:
        self.session = session
        self.rid = 0

    def next_rid(self) -> int:
        while True:
            self.rid = (self.rid + 1) % (1 << 32)
            if not self.session.conn.in_flight(self.rid):
                return self.rid

    async def put(self, data: bytes) -> None:
        s = self.session
        rid = self.next_rid()
        inbox = s.open_inbox(rid)
        try:
            msgs = [PutStart(rid=rid, request_id=uuid.uuid4().bytes, bucket="b", key="k",
                             size=len(data), metadata={}, policy=None),
                    Data(rid=rid, data=data), End(rid=rid)]
            send_many = getattr(s, "send_many", None)
            if send_many is not None:
                await send_many(msgs)
            else:
                for m in msgs:
                    await s.send(m)
            with trio.fail_after(60):
                event = await inbox.receive()
            assert isinstance(event, Reply), event
        finally:
            s.close_inbox(rid)

    async def stream_put(self, total: int) -> None:
        s = self.session
        rid = self.next_rid()
        inbox = s.open_inbox(rid)
        piece = os.urandom(MIB)
        try:
            await s.send(PutStart(rid=rid, request_id=uuid.uuid4().bytes, bucket="b", key="big",
                                  size=total, metadata={}, policy=None))
            for _ in range(total // MIB):
                await s.send_body(rid, piece)
            await s.send(End(rid=rid))
            event = await inbox.receive()
            assert isinstance(event, Reply), event
        finally:
            s.close_inbox(rid)

    async def stream_get(self, total: int) -> int:
        s = self.session
        rid = self.next_rid()
        inbox = s.open_inbox(rid)
        got = 0
        try:
            await s.send(GetRequest(rid=rid, bucket="b", key="big", version=None, start=0,
                                    end=total))
            head = await inbox.receive()
            assert isinstance(head, GetStart), head
            while True:
                event = await inbox.receive()
                if isinstance(event, End):
                    return got
                assert isinstance(event, Data), event
                got += len(event.data)
                await s.consumed(rid, len(event.data))
        finally:
            s.close_inbox(rid)


# -- cells -------------------------------------------------------------------------------------
async def measure(pki: dict[str, Path], c: Counts, meter: Meter, io: IoCounter
                  ) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    sctx = server_context(pki["node_cert"], pki["node_key"], pki["ca"])
    cctx = client_context(pki["client_cert"], pki["client_key"], pki["ca"])
    listeners = await open_tls_listeners("127.0.0.1", 0, sctx)
    port = listener_port(listeners[0])
    data = os.urandom(SMALL)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one, listeners[0])
        stream = await connect_tls("127.0.0.1", port, cctx, server_hostname="127.0.0.1")
        session = WireSession(stream, Connection(Role.CLIENT))
        await session.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="bench",
                                 peer="client", window=session.conn.initial_window))
        with trio.fail_after(10):
            await session.receive_hello()
        nursery.start_soon(quiet_reader, session)
        client = Client(session)
        for _ in range(200):
            await client.put(data)

        samples: list[float] = []
        b = snapshot(meter, io)
        for _ in range(c.seq):
            t0 = time.perf_counter()
            await client.put(data)
            samples.append(time.perf_counter() - t0)
        a = snapshot(meter, io)
        cells.append({"cell": "put 4 KiB sequential", **latency_ms(samples),
                      "ops_per_s": len(samples) / sum(samples), **per(b, a, c.seq, "put")})

        async def many(_: int) -> None:
            for _ in range(c.per_task):
                await client.put(data)

        b = snapshot(meter, io)
        elapsed = await concurrently(CONCURRENCY, many)
        a = snapshot(meter, io)
        n = CONCURRENCY * c.per_task
        cells.append({"cell": f"put 4 KiB x{CONCURRENCY}, one connection",
                      "ops_per_s": n / elapsed, **per(b, a, n, "put")})

        total = c.stream_mib * MIB
        for name, job in (("streaming put", client.stream_put),
                          ("streaming get", client.stream_get)):
            b = snapshot(meter, io)
            t0 = time.perf_counter()
            await job(total)
            elapsed = time.perf_counter() - t0
            a = snapshot(meter, io)
            cells.append({"cell": f"{name} {c.stream_mib} MiB", "mib_per_s": c.stream_mib / elapsed,
                          **per(b, a, c.stream_mib, "mib")})
        await session.aclose()
        nursery.cancel_scope.cancel()
    for lst in listeners:
        await lst.aclose()
    return cells


async def concurrently(n: int, job: Callable[[int], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(job, i)
    return time.perf_counter() - t0


async def floor(pki: dict[str, Path], c: Counts) -> list[dict[str, Any]]:
    """Plain trio TLS: a 64-byte echo round trip and a one-way stream, same certificates."""
    sctx = server_context(pki["node_cert"], pki["node_key"], pki["ca"])
    cctx = client_context(pki["client_cert"], pki["client_key"], pki["ca"])
    listeners = await open_tls_listeners("127.0.0.1", 0, sctx)
    port = listener_port(listeners[0])
    total = c.stream_mib * MIB

    async def server() -> None:
        for _ in range(2):
            stream = await listeners[0].accept()
            await handshake_and_identify(stream)
            async with stream:
                kind = await stream.receive_some(1)
                if kind == b"S":
                    got = 0
                    while got < total:
                        got += len(await stream.receive_some(256 * KIB))
                    await stream.send_all(b"k")
                else:
                    while data := await stream.receive_some(64 * KIB):
                        await stream.send_all(data)

    cells = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with await connect_tls("127.0.0.1", port, cctx,
                                     server_hostname="127.0.0.1") as stream:
            await stream.send_all(b"E")
            msg = os.urandom(64)
            samples = []
            for _ in range(c.rtt):
                t0 = time.perf_counter()
                await stream.send_all(msg)
                got = 0
                while got < 64:
                    got += len(await stream.receive_some(64))
                samples.append(time.perf_counter() - t0)
            cells.append({"cell": "floor: trio TLS echo 64 B", **latency_ms(samples)})
        async with await connect_tls("127.0.0.1", port, cctx,
                                     server_hostname="127.0.0.1") as stream:
            await stream.send_all(b"S")
            piece = os.urandom(MIB)
            t0 = time.perf_counter()
            for _ in range(c.stream_mib):
                await stream.send_all(piece)
            await stream.receive_some(1)
            cells.append({"cell": "floor: trio TLS one-way stream",
                          "mib_per_s": c.stream_mib / (time.perf_counter() - t0)})
    for lst in listeners:
        await lst.aclose()
    return cells


def make_pki(root: Path) -> dict[str, Path]:
    create_ca(root / "ca", "bench")
    node_cert, node_key = issue_node_cert(root / "ca", root / "certs", name="n1", site="dc1")
    client_cert, client_key = issue_client_cert(root / "ca", root / "certs", name="bench",
                                                tenant="t", role="writer")
    return {"ca": root / "ca" / "ca.crt", "node_cert": node_cert, "node_key": node_key,
            "client_cert": client_cert, "client_key": client_key}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts; a few seconds")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "session_bench.json")
    args = ap.parse_args()
    c = QUICK if args.quick else FULL
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="session-bench-") as tmp:
        pki = make_pki(Path(tmp))
        cells = trio.run(floor, pki, c)
        meter, io = Meter(), IoCounter()
        cells += trio.run(measure, pki, c, meter, io, instruments=[meter])
    keys = ["p50_ms", "p99_ms", "ops_per_s", "mib_per_s"]
    counts = ["cpu_ms", "passes", "steps", "send_calls", "receive_calls"]
    rows = []
    for cell in cells:
        unit = "put" if "put 4" in cell["cell"] else "mib"
        rows.append([cell["cell"], *(_fmt(cell.get(k)) for k in keys),
                     *(_fmt(cell.get(f"{k}_per_{unit}")) for k in counts),
                     unit if "cpu_ms_per_" + unit in cell else ""])
    print_table(["cell", *keys, "cpu ms", "passes", "task steps", "send_all", "receive_some",
                 "per"], rows)
    write_json(args.json, {"benchmark": "session_bench", "quick": args.quick,
                           "machine": machine_info(), "started": started,
                           "seconds": time.time() - started, "results": cells})
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
