"""CPU per MiB of the stages a 1 MiB chunk goes through in a rebuild or a get, in one process.

    python bench/chunk_path_bench.py [--rounds 5] [--json PATH]

Each stage runs on 1 MiB payloads and reports the best of ``--rounds`` (CPU seconds of the
whole process, so a store's log-writer thread counts too) per MiB, with the allocator tuned as
``hdsd serve`` tunes it (so fresh megabyte buffers do not page-fault):

* store write: ``Store.commit_sync`` of 8 chunk records (encode, frame, pwrite into the page
  cache, fdatasync: the fsync's wait is not CPU). The kernel's part (fresh page-cache pages)
  swings with the machine's memory pressure, so the next stage measures the rest alone;
* store encode: the same records encoded and framed, as the log writer gets them, no kernel;
* store read: ``Store.read_chunk`` (pread from the page cache, frame check, decode);
* wire send: ``Connection.send`` of a 1 MiB ``Data`` frame (what a get or a put sends);
* wire receive: the frame fed to a ``Connection`` in 16 KiB pieces, as TLS records come,
  until the ``Data`` event (what the other side decodes);
* reply send / receive: the same for a ``FetchChunk`` reply (``Reply`` with a 1 MiB payload),
  which is what a rebuild moves.

These are the copies and checks of the transport and store paths, without TLS, sockets or
the event loop (the end-to-end figures are ``restore_bench.py``'s). Never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import machine_info, print_table, write_json
from hdsd.pipeline import tune_allocator
from hdsd.store import ChunkRecord, Store, _log
from hdsd.wire import (
    PROTOCOL_VERSION,
    Connection,
    Data,
    FetchChunk,
    Hello,
    NeedData,
    PutStart,
    Reply,
    Role,
)

MIB = 1 << 20
RECORD = 16 << 10


class _NoNames:
    """Sealing for a store that holds chunks only (no version names to seal)."""

    def seal_for(self, tenant: str) -> None:
        return None


def _best(rounds: int, mib: int, fn: Callable[[], None]) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return 1000 * best / mib


def _pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    hello = Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c", peer="p",
                  window=server.initial_window)
    server.receive_data(client.send(hello))
    client.receive_data(server.send(hello))
    server.next_event()
    client.next_event()
    return client, server


def _feed(conn: Connection, frame: bytes) -> object:
    view = memoryview(frame)
    event: object = None
    for at in range(0, len(frame), RECORD):
        conn.receive_data(bytes(view[at:at + RECORD]))
        while not isinstance(ev := conn.next_event(), NeedData):
            event = ev
    return event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("bench/results/chunk_path_bench.json"))
    args = ap.parse_args()
    tune_allocator()
    payloads = [os.urandom(MIB) for _ in range(16)]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "s", sealing=_NoNames(),
                           segment_bytes=1 << 30)
        ids: list[bytes] = []

        def write() -> None:
            for start in range(0, 16, 8):
                batch = [ChunkRecord("t", os.urandom(32), p) for p in payloads[start:start + 8]]
                store.commit_sync(batch)
                ids.extend(r.chunk_id for r in batch)

        results["store write (commit of 8 x 1 MiB, page cache included)"] = _best(
            args.rounds, 16, write)

        def encode() -> None:
            # What the log writer's caller and thread do with a batch before the kernel: the
            # records encoded and framed (a tree without frame_batch_parts joins them).
            for start in range(0, 16, 8):
                batch = [ChunkRecord("t", os.urandom(32), p) for p in payloads[start:start + 8]]
                encoded = store.encode_commit(batch).records
                if hasattr(_log, "frame_batch_parts"):
                    _log.frame_batch_parts(encoded, 32)
                else:
                    _log.frame_batch(encoded, 32)

        results["store encode (records to log pieces, no kernel)"] = _best(args.rounds, 16,
                                                                           encode)

        def read() -> None:
            for cid in ids[-16:]:
                store.read_chunk("t", cid)

        results["store read (read_chunk)"] = _best(args.rounds, 16, read)
        store.close()

    client, server = _pair()
    rids = iter(range(1, 1 << 30))
    frames: list[bytes] = []
    upload = [b""]

    def send_data() -> None:  # one upload per round: 6 MiB, within the 8 MiB window
        rid = next(rids)
        upload[0] = client.send(PutStart(rid=rid, request_id=b"r" * 16, bucket="b", key="k",
                                          size=None, metadata={}, policy=None))
        frames.clear()
        frames.extend(client.send(Data(rid=rid, data=p)) for p in payloads[:6])

    results["wire send (Data frame)"] = _best(args.rounds, 6, send_data)
    best = float("inf")
    for _ in range(args.rounds + 1):
        send_data()
        _feed(server, upload[0])
        t0 = time.process_time()
        for frame in frames:
            assert isinstance(_feed(server, frame), Data)
        best = min(best, time.process_time() - t0)
    results["wire receive (Data frame, 16 KiB records)"] = 1000 * best / 6

    # A FetchChunk's reply, as a rebuild's source sends it and the rebuilding node reads it.
    replies: list[bytes] = []

    def send_reply() -> None:
        opened = []
        for _ in payloads:  # the requests (not timed separately: a few hundred bytes each)
            rid = next(rids)
            server.receive_data(client.send(FetchChunk(rid=rid, layout="l", tenant="t",
                                                       chunk_id=bytes(32))))
            server.next_event()
            opened.append(rid)
        replies.clear()
        replies.extend(server.send(Reply(rid=rid, body={"payload": p}))
                       for rid, p in zip(opened, payloads, strict=True))

    results["reply send (FetchChunk reply, with its request)"] = _best(args.rounds, 16,
                                                                       send_reply)

    best = float("inf")
    for _ in range(args.rounds + 1):
        send_reply()  # fresh replies each round: a reply ends its request
        t0 = time.process_time()
        for frame in replies:
            assert isinstance(_feed(client, frame), Reply)
        best = min(best, time.process_time() - t0)
    results["reply receive (FetchChunk reply)"] = 1000 * best / 16
    print_table(["stage", "ms CPU per MiB"], [[k, f"{v:.3f}"] for k, v in results.items()])
    write_json(args.json, {"machine": machine_info(), "results": results})
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
