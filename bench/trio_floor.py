"""The trio floor: a minimal replicated put in trio, measured beside hdsd in the same run.

NOT the product. It does the work a replicated put cannot avoid in Python + trio, and nothing
else, so ``bench/sync_latency.py`` can say how far hdsd's hot path is from it:

* TLS 1.3 with client certificates on both hops (client -> coordinator -> replica);
* msgpack frames, one connection multiplexed by request id, one task per request;
* keyed BLAKE3 of the body (the content id) + XChaCha20-Poly1305 (PyNaCl) on the coordinator;
* group commit on both nodes in parallel: the coordinator queues its local append, sends the
  record to the replica, then waits for its own write + fdatasync; the replica appends and
  answers once durable. Whatever is queued while a write + fdatasync runs goes in the next one.

What it leaves out on purpose (hdsd does it): chunking, compression, an index that survives a
restart, request ids and retries, hints, audit, metrics, flow control, limits, error handling
(any failure ends the process). The log is a ring of ``--ring-mib`` zero-filled at start, so
writes never allocate (hdsd also appends into prepared, zero-filled segments); a get reads
what was written since the ring last wrapped.

    python bench/trio_floor.py node --port P --cert C --key K --ca CA --log PATH
                                    [--ring-mib N] [--peer PORT]

prints ``trio-floor listening on P`` on stderr once it accepts connections. With ``--peer`` it
is the coordinator (the replica listens on that port). :class:`FloorClient` is the client.
"""

from __future__ import annotations

import argparse
import itertools
import os
import ssl
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import msgpack
import nacl.bindings
import trio

__all__ = ["FloorClient", "client_context", "main"]

READ = 256 << 10
OFFLOAD = 256 << 10  # bodies this large are hashed and sealed in a worker thread
_encrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt


def _context(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    ctx.check_hostname = True
    return ctx


class Link:
    """One TLS connection carrying concurrent calls: ``[op, rid, *args]`` -> ``[rid, ok, x]``."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.lock = trio.Lock()  # one send_all at a time on a TLS stream
        self.rids = itertools.count()
        self.waiting: dict[int, list[Any]] = {}  # rid -> [Event, reply]

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Link:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        return cls(stream)

    async def call(self, op: str, *args: Any) -> Any:
        rid = next(self.rids)
        slot = self.waiting[rid] = [trio.Event(), None]
        frame = msgpack.packb([op, rid, *args])
        async with self.lock:
            await self.stream.send_all(frame)
        await slot[0].wait()
        _, ok, value = slot[1]
        if not ok:
            raise RuntimeError(f"trio floor: {op} failed: {value}")
        return value

    async def read_replies(self) -> None:
        """Until the peer closes; a broken stream ends the process (a floor has no recovery)."""
        unpacker = msgpack.Unpacker(max_buffer_size=1 << 30)
        while data := await self.stream.receive_some(READ):
            unpacker.feed(data)
            for reply in unpacker:
                slot = self.waiting.pop(reply[0])
                slot[1] = reply
                slot[0].set()


class Log:
    """Group commit into a preallocated, zero-filled ring; ``index`` maps key -> (offset, len)."""

    def __init__(self, path: str, size: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(8 << 20)
        for off in range(0, size, len(zeros)):
            os.pwrite(self.fd, zeros[: size - off], off)
        os.fsync(self.fd)
        self.size, self.head = size, 0
        self.queue: list[tuple[str, bytes, trio.Event]] = []
        self.wake = trio.Event()
        self.index: dict[str, tuple[int, int]] = {}

    def start(self, key: str, record: bytes) -> trio.Event:
        """Queue *record*; the event is set once it is durable."""
        done = trio.Event()
        self.queue.append((key, record, done))
        self.wake.set()
        return done

    def _write(self, data: bytes, at: int) -> None:
        os.pwrite(self.fd, data, at)
        os.fdatasync(self.fd)

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            batch, self.queue = self.queue, []
            data = b"".join(record for _, record, _ in batch)
            at = 0 if self.head + len(data) > self.size else self.head
            await trio.to_thread.run_sync(self._write, data, at)
            for key, record, done in batch:
                self.index[key] = (at, len(record))
                at += len(record)
                done.set()
            self.head = at

    def read(self, key: str) -> bytes:
        at, n = self.index[key]
        return os.pread(self.fd, n, at)


class Node:
    def __init__(self, log: Log, peer: Link | None) -> None:
        self.log = log
        self.peer = peer
        self.key = os.urandom(32)  # content-id key and encryption key (a floor needs no keyring)

    def seal(self, body: bytes) -> bytes:
        content_id = blake3.blake3(body, key=self.key).digest()
        nonce = os.urandom(24)
        return nonce + content_id + _encrypt(body, content_id, nonce, self.key)

    def open(self, record: bytes) -> bytes:
        nonce, content_id = record[:24], record[24:56]
        body: bytes = _decrypt(record[56:], content_id, nonce, self.key)
        if blake3.blake3(body, key=self.key).digest() != content_id:
            raise ValueError("content id mismatch")
        return body

    async def handle(self, msg: list[Any], reply: Any) -> None:
        op, rid = msg[0], msg[1]
        if op == "put":  # coordinator: seal, append here and on the replica in parallel
            key, body = msg[2], msg[3]
            record = self.seal(body) if len(body) < OFFLOAD else \
                await trio.to_thread.run_sync(self.seal, body)
            durable = self.log.start(key, record)
            assert self.peer is not None
            await self.peer.call("rep", key, record)
            await durable.wait()
            await reply([rid, True, None])
        elif op == "rep":  # replica
            await self.log.start(msg[2], msg[3]).wait()
            await reply([rid, True, None])
        elif op == "get":
            record = self.log.read(msg[2])
            body = self.open(record) if len(record) < OFFLOAD else \
                await trio.to_thread.run_sync(self.open, record)
            await reply([rid, True, body])
        else:
            await reply([rid, False, f"unknown op {op!r}"])

    async def serve(self, tcp: trio.SocketStream, ctx: ssl.SSLContext) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        lock = trio.Lock()

        async def reply(frame: list[Any]) -> None:
            data = msgpack.packb(frame)
            async with lock:
                await stream.send_all(data)

        unpacker = msgpack.Unpacker(max_buffer_size=1 << 30)
        try:
            async with trio.open_nursery() as nursery:
                while data := await stream.receive_some(READ):
                    unpacker.feed(data)
                    for msg in unpacker:
                        nursery.start_soon(self.handle, msg, reply)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (replies to it fail too)
        finally:
            await trio.aclose_forcefully(stream)


async def run_node(args: argparse.Namespace) -> None:
    server = _context(ssl.PROTOCOL_TLS_SERVER, args.cert, args.key, args.ca)
    server.num_tickets = 0
    log = Log(str(args.log), args.ring_mib << 20)
    async with trio.open_nursery() as nursery:
        peer = None
        if args.peer:
            peer = await Link.open(args.peer, client_context(args.cert, args.key, args.ca))
            nursery.start_soon(peer.read_replies)
        node = Node(log, peer)
        nursery.start_soon(log.run)
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"),
                                        lambda s: node.serve(s, server), args.port)
        port = listeners[0].socket.getsockname()[1]
        print(f"trio-floor listening on {port}", file=sys.stderr, flush=True)


class FloorClient:
    """``async with FloorClient(port, ctx) as c: await c.put(key, data); await c.get(key)``."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx

    async def __aenter__(self) -> FloorClient:
        self.link = await Link.open(self.port, self.ctx)
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self.link.read_replies)
        self._cancel = nursery.cancel_scope
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cancel.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            await trio.aclose_forcefully(self.link.stream)

    async def put(self, key: str, data: bytes) -> None:
        await self.link.call("put", key, data)

    async def get(self, key: str) -> bytes:
        body: bytes = await self.link.call("get", key)
        return body


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trio_floor", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a coordinator (--peer) or a replica")
    node.add_argument("--port", type=int, default=0)
    node.add_argument("--peer", type=int, default=None, help="the replica's port")
    node.add_argument("--cert", type=Path, required=True)
    node.add_argument("--key", type=Path, required=True)
    node.add_argument("--ca", type=Path, required=True)
    node.add_argument("--log", type=Path, required=True)
    node.add_argument("--ring-mib", type=int, default=64)
    args = ap.parse_args(argv)
    try:
        trio.run(run_node, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
