"""Trio glue: one wire :class:`~hdsd.wire.Connection` over one trio stream, multiplexed.

The client and the node use the same session. Theory of operation:

* One **reader task** (:meth:`WireSession.run_reader`) owns the receiving half: it reads bytes,
  feeds the sans-IO connection and routes each event by its ``rid`` to the *inbox* registered for
  that request (a memory channel). Events for a rid nobody registered are handed to
  ``on_request`` (the node uses it to start a handler); late frames of a request that already
  ended are dropped, as the protocol allows.
* Sending is serialised by a lock: ``conn.send`` then ``stream.send_all`` as one step, so frames
  never interleave.
* Flow control: ``send_body`` splits bytes into frames within the credit the peer granted and
  parks until a ``Credit`` arrives; receivers call ``consumed`` once they have *processed* bytes
  (stored or written out), which grants credit back in batches. A slow consumer therefore slows
  the producer instead of growing a buffer: inboxes hold at most one window of body bytes.
* When the reader ends (EOF, error, cancel) every inbox is closed, so waiting requests wake with
  :class:`ConnectionLost` instead of hanging.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from .._errors import ConnectionLost, HdsdError, ProtocolError, RequestTimeout
from ..wire import (
    Cancel,
    Connection,
    ConnectionClosed,
    Credit,
    Data,
    Goodbye,
    Hello,
    Message,
    NeedData,
)

__all__ = ["WireSession"]

_READ_SIZE = 256 << 10
MAX_DATA_FRAME = 1 << 20


class WireSession:
    def __init__(self, stream: trio.abc.Stream, conn: Connection) -> None:
        self.stream = stream
        self.conn = conn
        self._send_lock = trio.Lock()
        self._inboxes: dict[int, trio.MemorySendChannel[Message]] = {}
        self._credit_lot = trio.lowlevel.ParkingLot()
        self._ungranted: dict[int, int] = {}
        self._closed = False
        self.closed_reason: HdsdError | None = None
        self.their_hello: Hello | None = None

    # -- sending -------------------------------------------------------------------------------
    async def send(self, msg: Message) -> None:
        async with self._send_lock:
            if self._closed and not isinstance(msg, Goodbye):
                raise self._lost()
            data = self.conn.send(msg)
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._closed = True
                raise ConnectionLost(f"connection lost while sending: {exc}") from None

    async def send_body(self, rid: int, data: bytes | memoryview) -> None:
        """Send *data* as Data frames on *rid*, waiting for credit as needed."""
        view = memoryview(data)
        while view:
            available = self.conn.send_credit_available(rid)
            if available <= 0:
                if self._closed:
                    raise self._lost()
                await self._credit_lot.park()
                continue
            n = min(len(view), available, MAX_DATA_FRAME)
            await self.send(Data(rid=rid, data=bytes(view[:n])))
            view = view[n:]

    async def consumed(self, rid: int, nbytes: int) -> None:
        """Tell the peer we processed *nbytes* of *rid*'s body: grant them back in batches."""
        pending = self._ungranted.get(rid, 0) + nbytes
        window = self.conn.initial_window
        if pending >= window // 4:
            self._ungranted[rid] = 0
            await self.send(Credit(rid=rid, amount=pending))
        else:
            self._ungranted[rid] = pending

    # -- request routing -----------------------------------------------------------------------
    def open_inbox(self, rid: int) -> trio.MemoryReceiveChannel[Message]:
        """Register *rid* before sending its request (or, on the node, before returning from
        ``on_request``) so that no event of it is missed."""
        if self._closed:
            raise self._lost()
        send, receive = trio.open_memory_channel[Message](math.inf)
        self._inboxes[rid] = send
        return receive

    def close_inbox(self, rid: int) -> None:
        inbox = self._inboxes.pop(rid, None)
        self._ungranted.pop(rid, None)
        if inbox is not None:
            inbox.close()

    async def receive_hello(self, timeout: float) -> Hello:
        """Read until the peer's Hello (the first frame) arrives; the reader is not running yet."""
        with trio.move_on_after(timeout) as scope:
            while True:
                event = self.conn.next_event()
                if isinstance(event, Hello):
                    self.their_hello = event
                    return event
                if isinstance(event, Goodbye):
                    raise ProtocolError(f"peer refused: {event.code}: {event.message}")
                if isinstance(event, ConnectionClosed):
                    raise ConnectionLost("peer closed the connection during the handshake")
                if isinstance(event, NeedData):
                    await self._feed()
                    continue
                raise ProtocolError(f"expected Hello, got {type(event).__name__}")
        assert scope.cancelled_caught
        raise RequestTimeout(f"no handshake from the peer within {timeout:g} s")

    async def _feed(self) -> None:
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection lost: {exc}") from None
        self.conn.receive_data(bytes(data))

    async def run_reader(
        self, on_request: Callable[[Message], None] | None = None
    ) -> None:
        """Route incoming events until the connection ends; always closes every inbox."""
        try:
            while True:
                event = self.conn.next_event()
                if isinstance(event, NeedData):
                    await self._feed()
                elif isinstance(event, ConnectionClosed):
                    self.closed_reason = ConnectionLost("the peer closed the connection")
                    return
                elif isinstance(event, Goodbye):
                    self.closed_reason = ConnectionLost(
                        f"the peer closed the connection: {event.code}: {event.message}")
                    return
                elif isinstance(event, Credit):
                    self._credit_lot.unpark_all()
                else:
                    self._route(event, on_request)
        except HdsdError as exc:
            self.closed_reason = exc
            raise
        finally:
            self._closed = True
            self._credit_lot.unpark_all()
            for inbox in self._inboxes.values():
                inbox.close()
            self._inboxes.clear()

    def _route(self, event: Message, on_request: Callable[[Message], None] | None) -> None:
        rid = getattr(event, "rid", None)
        inbox = self._inboxes.get(rid) if rid is not None else None
        if inbox is not None:
            try:
                inbox.send_nowait(event)
            except trio.BrokenResourceError:
                self.close_inbox(rid)  # type: ignore[arg-type]
            if isinstance(event, Cancel):
                self.close_inbox(rid)  # type: ignore[arg-type]
        elif on_request is not None and not isinstance(event, (Data, Cancel)):
            on_request(event)
        # else: a late frame of a finished request (drained per the protocol): dropped.

    def _lost(self) -> ConnectionLost:
        if isinstance(self.closed_reason, ConnectionLost):
            return self.closed_reason
        reason = f": {self.closed_reason}" if self.closed_reason else ""
        return ConnectionLost(f"connection closed{reason}")

    async def aclose(self) -> None:
        self._closed = True
        self._credit_lot.unpark_all()
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.stream.aclose()
