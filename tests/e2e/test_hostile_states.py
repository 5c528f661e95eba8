"""Open, half-sent, cancelled and dropped uploads, in any order, against real nodes (issue 13):
a hypothesis state machine over raw connections, plus the upload deadline a trickle cannot
extend. Whatever the sequence, the nodes keep serving, every acknowledged put reads back from
both sites, and no upload that was cancelled or dropped before its End is stored.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import hdsd
from hdsd.wire import (
    Cancel,
    Connection,
    Data,
    End,
    ErrorReply,
    GetRequest,
    GetStart,
    PutStart,
    Reply,
    StatRequest,
)
from tests.helpers.cluster import NodeProcess, init_cluster, start_all
from tests.helpers.hostile import handshaken, raw_frame, reset

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    init_cluster(root)
    for config in root.glob("*/node.toml"):
        config.write_text(config.read_text().replace(
            "[tls]", f"[limits]\nrequest_timeout_s = {REQUEST_TIMEOUT_S}\n\n[tls]", 1))
    return root


@pytest.fixture(scope="module")
def nodes(cluster_dir: Path) -> Iterator[list[NodeProcess]]:
    procs = start_all([cluster_dir / n / "node.toml" for n in ("dc2-n1", "dc1-n1")])
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def _put_start(rid: int, key: str, size: int | None) -> PutStart:
    return PutStart(rid=rid, request_id=os.urandom(16), bucket="states", key=key, size=size,
                    metadata={}, policy=None)


def _final(sock: ssl.SSLSocket, conn: Connection, rid: int,
           finals: dict[int, object]) -> object | None:
    """Read until *rid*'s final frame (Reply/ErrorReply/Cancel) or the connection ends."""
    sock.settimeout(60)  # bounds a hang only
    while rid not in finals:
        event = conn.next_event()
        if isinstance(event, (Reply, ErrorReply, Cancel)):
            finals[event.rid] = event
        elif type(event).__name__ == "NeedData":
            try:
                data = sock.recv(65536)
            except (OSError, ssl.SSLError):
                data = b""
            conn.receive_data(data)
        elif type(event).__name__ in ("ConnectionClosed", "Goodbye"):
            return None
    return finals.pop(rid)


@dataclass
class _Upload:
    key: str
    size: int | None
    sent: bytearray = field(default_factory=bytearray)


@dataclass
class _Conn:
    sock: ssl.SSLSocket
    conn: Connection
    uploads: dict[int, _Upload] = field(default_factory=dict)
    finals: dict[int, object] = field(default_factory=dict)
    next_rid: int = 1


def test_any_sequence_of_uploads_leaves_the_nodes_serving(cluster_dir: Path,
                                                          nodes: list[NodeProcess]) -> None:
    profile = cluster_dir / "client.toml"
    acked: dict[str, bytes] = {}
    abandoned: set[str] = set()
    counter = [0]

    class Uploads(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.conns: list[_Conn] = []

        def _key(self) -> str:
            counter[0] += 1
            return f"k{counter[0]}"

        @precondition(lambda self: len(self.conns) < 3)
        @rule()
        def open_connection(self) -> None:
            sock, conn = handshaken(profile)
            self.conns.append(_Conn(sock, conn))

        @precondition(lambda self: self.conns)
        @rule(which=st.integers(0, 2), declared=st.booleans(),
              size=st.sampled_from([0, 1000, 300_000, 64 << 20]))
        def start_upload(self, which: int, declared: bool, size: int) -> None:
            c = self.conns[which % len(self.conns)]
            rid, c.next_rid = c.next_rid, c.next_rid + 1
            up = _Upload(self._key(), size if declared else None)
            c.sock.sendall(c.conn.send(_put_start(rid, up.key, up.size)))
            c.uploads[rid] = up

        def _pick(self, which: int) -> tuple[_Conn, int, _Upload] | None:
            pairs = [(c, rid, u) for c in self.conns for rid, u in c.uploads.items()]
            return pairs[which % len(pairs)] if pairs else None

        @precondition(lambda self: any(c.uploads for c in self.conns))
        @rule(which=st.integers(0, 20), n=st.integers(1, 1_500_000))
        def send_data(self, which: int, n: int) -> None:
            picked = self._pick(which)
            if picked is None:
                return
            c, rid, up = picked
            n = min(n, c.conn.send_credit_available(rid))
            if n:
                data = os.urandom(n)
                c.sock.sendall(c.conn.send(Data(rid=rid, data=data)))
                up.sent += data

        @precondition(lambda self: any(c.uploads for c in self.conns))
        @rule(which=st.integers(0, 20))
        def end_upload(self, which: int) -> None:
            picked = self._pick(which)
            if picked is None:
                return
            c, rid, up = picked
            del c.uploads[rid]
            c.sock.sendall(c.conn.send(End(rid=rid)))
            final = _final(c.sock, c.conn, rid, c.finals)
            if isinstance(final, Reply):
                assert up.size in (None, len(up.sent))
                acked[up.key] = bytes(up.sent)
            elif final is None:
                self.conns.remove(c)  # the node dropped us: fine, if nothing was acked

        @precondition(lambda self: any(c.uploads for c in self.conns))
        @rule(which=st.integers(0, 20))
        def cancel_upload(self, which: int) -> None:
            picked = self._pick(which)
            if picked is None:
                return
            c, rid, up = picked
            del c.uploads[rid]
            c.sock.sendall(c.conn.send(Cancel(rid=rid)))
            abandoned.add(up.key)

        @precondition(lambda self: self.conns)
        @rule(which=st.integers(0, 2), how=st.sampled_from(["close", "reset", "protocol"]),
              burst=st.sampled_from([0, 1 << 20, 3 << 20]))
        def drop_connection(self, which: int, how: str, burst: int) -> None:
            c = self.conns.pop(which % len(self.conns))
            abandoned.update(u.key for u in c.uploads.values())
            for rid, up in list(c.uploads.items())[:1]:  # a burst, then the drop at once:
                # chunks are being sealed and replicated when the connection goes
                room = burst if up.size is None else up.size - len(up.sent)
                n = min(burst, room, c.conn.send_credit_available(rid))
                while n > 0:
                    piece = min(n, 1 << 20)
                    c.sock.sendall(c.conn.send(Data(rid=rid, data=os.urandom(piece))))
                    n -= piece
            if how == "protocol" and c.uploads:
                rid = next(iter(c.uploads))  # a request on the rid of an open put
                c.sock.sendall(raw_frame(StatRequest(rid=rid, bucket="b", key="k",
                                                     version=None)))
            if how == "reset":
                reset(c.sock)
            else:
                c.sock.close()

        @invariant()
        def nodes_alive(self) -> None:
            for n in nodes:
                assert n.alive, n.log()

        def teardown(self) -> None:
            for c in self.conns:
                abandoned.update(u.key for u in c.uploads.values())
                c.sock.close()

    run_state_machine_as_test(Uploads, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
    for site in ("dc1", "dc2"):
        with hdsd.Client(profile, site=site) as client:
            for key, data in acked.items():
                assert client.get("states", key) == data, (site, key)
            for key in abandoned - set(acked):
                with pytest.raises(hdsd.NotFound):
                    client.stat("states", key)
    print(f"\n[state machine] {counter[0]} uploads, {len(acked)} acknowledged (all read back "
          f"from both sites), {len(abandoned)} cancelled or dropped (none stored)")


def test_a_trickle_cannot_extend_an_upload(cluster_dir: Path, nodes: list[NodeProcess]) -> None:
    """One byte every second (well within the per-event timeout): the upload still ends at its
    deadline, request_timeout_s plus its bytes at the minimum rate."""
    sock, conn = handshaken(cluster_dir / "client.toml")
    with sock:
        sock.sendall(conn.send(_put_start(1, "trickle", 1 << 20)))
        started = time.monotonic()
        final = None
        sock.settimeout(1)
        finals: dict[int, object] = {}
        while final is None and time.monotonic() - started < 6 * REQUEST_TIMEOUT_S:
            sock.sendall(conn.send(Data(rid=1, data=b"x")))
            try:
                conn.receive_data(sock.recv(65536))
            except TimeoutError:
                continue
            while type(event := conn.next_event()).__name__ != "NeedData":
                if isinstance(event, (Reply, ErrorReply)):
                    finals[event.rid] = event
            final = finals.get(1)
        elapsed = time.monotonic() - started
    assert isinstance(final, ErrorReply) and final.code == "timeout", final
    print(f"\n[trickle, 1 byte/s] upload ended by its deadline after {elapsed:.1f} s")


def test_a_small_get_comes_in_one_write(cluster_dir: Path, nodes: list[NodeProcess]) -> None:
    """A get within one chunk is read first, then its start, body and end go out in one write:
    one TLS record, so the first read of the reply holds all three (the streaming path sends
    the start on its own first)."""
    profile = cluster_dir / "client.toml"
    body = os.urandom(4096)
    with hdsd.Client(profile, site="dc1") as client:
        client.put("states", "one-write", body)
    sock, conn = handshaken(profile)
    with sock:
        sock.settimeout(60)  # bounds a hang only
        sock.sendall(conn.send(GetRequest(rid=1, bucket="states", key="one-write", version=None,
                                          start=None, end=None)))
        conn.receive_data(sock.recv(65536))  # one TLS record
        events = []
        while type(event := conn.next_event()).__name__ != "NeedData":
            events.append(event)
    assert [type(e) for e in events] == [GetStart, Data, End], events
    assert isinstance(events[1], Data) and events[1].data == body
