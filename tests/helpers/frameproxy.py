"""A frame-aware fault proxy for a peer link: lose one request (or its answer) on a link that
stays up, or hold one request back past the write timeout.

A :class:`~tests.helpers.faultproxy.FaultProxy` sees TLS records only, so every fault it can
inject that loses a request also breaks the link (a reset, a long cut) — which puts the peers
in doubt, and the reconciliation that follows brings the version over whether or not the
coordinator kept its hint. This proxy terminates the peer link's mutual TLS with the test
cluster's own certificates (the test owns the CA): to the dialling node it presents the
certificate of the node behind it, and it dials that node with the certificate of the node
that dialled it (known from the dialler's verified certificate). Between the two TLS sessions
it cuts the byte stream into whole frames (``length | type | checksum | body``) and decodes
the ones it acts on with ``hdsd.wire``'s own codec; everything else passes untouched.

    proxy = FrameProxy("127.0.0.1", port2, tls=(crt2, key2), certs={"dc1-n1": (crt1, key1)},
                       ca=ca)
    with proxy:                            # listen on proxy.port
        proxy.drop_request()               # the next first-time Replicate is lost
        proxy.drop_answer()                # the answer to the next one is lost
        proxy.hold_request(3.0)            # the next one reaches the peer 3 s late

Only first-time Replicates count (``hint`` false) unless a fault says ``replays=True``: a
hint replay then counts too (the hint's own way over lost as well). A held Replicate is a
plain request, answered on its own rid, so the frames behind it pass it: the peer just sees
a request late, as from a slow network path. The byte-level faults of FaultProxy (delay,
blackhole, reset) still apply.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from hdsd import HdsdError
from hdsd.transport import (
    client_context,
    connect_tls,
    handshake_and_identify,
    identity_from_der,
    server_context,
)
from hdsd.wire import HEADER_SIZE, ErrorReply, Replicate, Reply
from hdsd.wire._constants import HEADER, T_ERROR_REPLY, T_REPLICATE, T_REPLY
from hdsd.wire._registry import decode_body
from tests.helpers.faultproxy import FaultProxy

_READ = 64 << 10
_ANSWERS = frozenset({T_REPLY, T_ERROR_REPLY})


@dataclass(slots=True)
class _Armed:
    """One armed fault: what to do to the next *count* first-time Replicates (and hint
    replays, with *replays*). Armed faults apply in the order they were armed."""

    action: str  # "drop" | "drop_answer" | "hold"
    count: int
    seconds: float = 0.0
    replays: bool = False  # hint replays count too


class FrameProxy(FaultProxy):
    """A :class:`FaultProxy` for a peer link that sees frames; see the module docstring.

    *tls*: the node behind the proxy, ``(cert, key)``; *certs*: the nodes that may dial it,
    by name; *ca*: the cluster CA.
    """

    def __init__(self, target_host: str, target_port: int, *, tls: tuple[Path, Path],
                 certs: dict[str, tuple[Path, Path]], ca: Path,
                 host: str = "127.0.0.1") -> None:
        super().__init__(target_host, target_port, host=host)
        self._server_ctx = server_context(tls[0], tls[1], ca)
        self._client_ctx = {name: client_context(crt, key, ca)
                            for name, (crt, key) in certs.items()}
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        # What was done, for the test to check its fault really happened.
        self.dropped_requests = 0
        self.dropped_answers = 0
        self.held_requests = 0
        # Requests dropped for as long as they are blocked: by frame type, and hint replays.
        self._blocked_codes: frozenset[int] = frozenset()
        self._blocked_replays = False
        self.blocked = 0
        self.replicates = 0  # first-time Replicates seen toward the node behind the proxy
        self.replays = 0  # hint replays seen toward it

    # -- faults (any thread) -----------------------------------------------------------------
    def drop_request(self, count: int = 1, *, replays: bool = False) -> None:
        self._arm(_Armed("drop", count, replays=replays))

    def drop_answer(self, count: int = 1, *, replays: bool = False) -> None:
        self._arm(_Armed("drop_answer", count, replays=replays))

    def hold_request(self, seconds: float, count: int = 1, *, replays: bool = False) -> None:
        self._arm(_Armed("hold", count, seconds, replays=replays))

    def block(self, *codes: int, replays: bool = False) -> None:
        """Until :meth:`unblock`, drop every request toward the node whose frame type is in
        *codes*, and with *replays* every hint replay: e.g. to keep a hint's replay and the
        anti-entropy rounds from bringing the node a version while a test checks that
        something else did."""
        self._blocked_codes = frozenset(codes)
        self._blocked_replays = replays

    def unblock(self) -> None:
        self._blocked_codes = frozenset()
        self._blocked_replays = False

    def armed(self) -> int:
        """Faults armed and not yet applied."""
        with self._lock:
            return sum(a.count for a in self._armed)

    def heal(self) -> None:
        super().heal()
        self.unblock()
        with self._lock:
            self._armed.clear()

    def _arm(self, fault: _Armed) -> None:
        with self._lock:
            self._armed.append(fault)

    def _take(self, replay: bool) -> _Armed | None:
        with self._lock:
            if not self._armed or (replay and not self._armed[0].replays):
                return None
            fault = self._armed[0]
            fault.count -= 1
            if fault.count == 0:
                self._armed.pop(0)
            return fault

    # -- the proxy ---------------------------------------------------------------------------
    async def _handle(self, client: trio.SocketStream) -> None:
        if self.mode == "reset":
            await trio.aclose_forcefully(client)
            return
        outer = trio.SSLStream(client, self._server_ctx, server_side=True)
        server: trio.SSLStream[trio.SocketStream] | None = None
        try:
            with trio.fail_after(30):
                await outer.do_handshake()
                # The dialler's own certificate, verified by the handshake, says whose
                # identity to dial the node behind with.
                der = outer.getpeercert(binary_form=True)
                assert der is not None  # the context requires a certificate
                name = identity_from_der(der).name
                server = await connect_tls(*self.target, self._client_ctx[name],
                                           server_hostname=self.target[0])
                # Only now tell the dialler its certificate was accepted (the node behind
                # accepted the same one): a refusal there is a refusal here.
                await handshake_and_identify(outer)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError, ssl.SSLError, HdsdError):
            # A dialler that went away or was refused: this connection is over, as a node's
            # own listener would end it.
            await trio.aclose_forcefully(outer)
            if server is not None:
                await trio.aclose_forcefully(server)
            return
        self.connections += 1
        self._streams |= {client, server.transport_stream}
        lost: set[int] = set()  # this link's rids whose answer is to be lost
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._frames, outer, server, True, lost,
                                   nursery.cancel_scope)
                nursery.start_soon(self._frames, server, outer, False, lost,
                                   nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._streams -= {client, server.transport_stream}
            for stream in (outer, server):
                await trio.aclose_forcefully(stream)

    async def _frames(self, src: trio.SSLStream[trio.SocketStream],
                      dst: trio.SSLStream[trio.SocketStream], toward_node: bool,
                      lost: set[int], done: trio.CancelScope) -> None:
        """Pump *src* to *dst* frame by frame, applying the armed faults; *toward_node*: the
        direction of the requests (dialler to the node behind the proxy)."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1024)

        async def write() -> None:
            async for deadline, frame in receive:
                await trio.sleep_until(deadline)
                while self.mode == "blackhole":
                    await trio.sleep(0.01)
                await dst.send_all(frame)

        async def release(frame: bytes, seconds: float,
                          late: trio.MemorySendChannel[tuple[float, bytes]]) -> None:
            async with late:
                await trio.sleep(seconds)
                await late.send((trio.current_time(), frame))

        buf = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                async with send:
                    while data := await src.receive_some(_READ):
                        buf += data
                        for frame in _whole_frames(buf):
                            fate = self._fate(frame, toward_node, lost)
                            if fate is None:
                                continue
                            if fate > 0:
                                nursery.start_soon(release, frame, fate, send.clone())
                                continue
                            await send.send((trio.current_time() + self.delay, frame))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            done.cancel()

    def _fate(self, frame: bytes, toward_node: bool, lost: set[int]) -> float | None:
        """None: drop *frame*; 0: pass it; > 0: hold it that many seconds."""
        code = frame[4]
        if toward_node and code in self._blocked_codes:
            self.blocked += 1
            return None
        if toward_node and code == T_REPLICATE:
            msg, _kind = decode_body(code, memoryview(frame)[HEADER_SIZE:])
            assert isinstance(msg, Replicate)
            if msg.hint:
                self.replays += 1
                if self._blocked_replays:
                    self.blocked += 1
                    return None
            else:
                self.replicates += 1
            fault = self._take(msg.hint)
            if fault is None:
                return 0.0
            if fault.action == "drop":
                self.dropped_requests += 1
                return None
            if fault.action == "drop_answer":
                lost.add(msg.rid)
                return 0.0
            self.held_requests += 1
            return fault.seconds
        if not toward_node and code in _ANSWERS and lost:
            msg, _kind = decode_body(code, memoryview(frame)[HEADER_SIZE:])
            assert isinstance(msg, Reply | ErrorReply)
            if msg.rid in lost:
                lost.discard(msg.rid)
                self.dropped_answers += 1
                return None
        return 0.0


def _whole_frames(buf: bytearray) -> Iterator[bytes]:
    """Cut the whole frames off the front of *buf* (the rest stays for the next read)."""
    while len(buf) >= HEADER_SIZE:
        length = HEADER.unpack_from(buf)[0]
        end = HEADER_SIZE + length
        if len(buf) < end:
            return
        frame = bytes(buf[:end])
        del buf[:end]
        yield frame

