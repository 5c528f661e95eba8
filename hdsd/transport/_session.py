"""Trio glue: one wire :class:`~hdsd.wire.Connection` over one trio stream, multiplexed.

The client and the node use the same session. Theory of operation:

* One **reader task** (:meth:`WireSession.run_reader`) owns the receiving half: it reads bytes,
  feeds the sans-IO connection and routes each event by its ``rid`` to the *inbox* registered for
  that request (a memory channel; a :class:`ReplySlot` for a request answered by one message,
  :meth:`WireSession.open_call`). Events for a rid nobody registered are handed to
  ``on_request`` (the node uses it to start a handler); late frames of a request that already
  ended are dropped, as the protocol allows. An upload whose body frames and End were read with
  its start (a small put, sent in one write) is handed over whole instead
  (:meth:`WireSession.take_whole_upload`): no inbox to create, fill and drain. ``on_request``
  may also hand the reader a job to await before it reads on (:meth:`WireSession.run_next`:
  the node's lone small put, served by the reader task itself).
* Sending goes through one *outbox* (a list: small frames appended to one bytearray, a frame
  of :data:`OWN_WRITE` bytes or more kept as the pieces ``conn.send_pieces`` made — its
  header, then its payload as the caller gave it — so a megabyte of body is not copied into a
  frame on its way out, the pieces being written into TLS one after the other): a sender
  encodes its frames with ``conn.send_pieces`` straight into it (so the protocol state and
  the byte order always agree), then
  either becomes the *writer* — if nobody is writing — or waits for the writer. The writer sends
  everything queued, and again whatever other tasks queued meanwhile, until the outbox is empty.
  A TLS stream is written through :func:`._tlsread.tls_sender`: what the socket takes at once
  is sent without passing through the scheduler (trio's ``send_all`` passes twice), so a lone
  request or reply costs no scheduler pass to send. While other requests are in flight on the
  connection the writer yields once before writing, so 16 replies finishing together cost one
  or two TLS records and syscalls, not 16. Every sender
  still returns only once its bytes were handed to the stream (or raises
  :class:`ConnectionLost`). The outbox is bounded: a sender waits while it holds more than
  ``OUTBOX_LIMIT`` bytes, so a fast producer is held back by the socket.
* A write that fails or is cancelled midway leaves the stream in an unknown state (trio's
  ``SSLStream`` marks itself broken): the session is then closed, every inbox and waiting sender
  wakes with :class:`ConnectionLost`, and the stream is closed at once (forcefully), so that
  the other end sees the connection end instead of holding it, and the half-read request on
  it, until its idle timeout. This holds for every owner of a session: the client, the peer
  links and the node's connections. But a session whose owner sets ``finish_frames`` (the
  client) does not let one cancelled caller cut the requests of the others: while other
  requests are in flight, a frame started is finished, within :func:`write_bound`, and the
  cancelled writer leaves the frames after it to a waiting sender (:meth:`_write_shielded`).
* Receiving reads large (see :mod:`._tlsread`): one scheduler pass per socket read of up to
  256 KiB, all its TLS records decrypted at once, instead of one pass per 16 KiB record.
* Flow control: ``send_body`` splits bytes into frames within the credit the peer granted and
  parks until a ``Credit`` arrives; receivers call ``consumed`` once they have *processed* bytes
  (stored or written out), which grants credit back in batches. A slow consumer therefore slows
  the producer instead of growing a buffer: inboxes hold at most one window of body bytes.
* When the reader ends (EOF, error, cancel) every inbox is closed, so waiting requests wake with
  :class:`ConnectionLost` instead of hanging.
* Memory bounds (the node's defence against a client that sends and never reads): the session
  counts the body bytes it delivered to inboxes and that were not yet ``consumed`` (``held``,
  per rid and in all) and the bytes handed to it for sending and not yet written (``unsent``).
  ``run_reader`` takes two optional gates: ``before_read`` is awaited before each socket read
  (the node waits there while the connection holds too many body bytes), ``before_open`` before
  a new request is handed to ``on_request`` (the node waits there while too many requests are
  in flight on the connection or its output is stuck; it returns False to drop the request —
  having answered it itself). While a gate waits nothing more is read:
  TCP pushes back on the client, and the node's memory for the connection stays bounded. Gates
  park on :meth:`wait_progress`, woken whenever held bytes are consumed, output is written or
  an inbox closes (the node also calls :meth:`progress` when a request ends).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from .._errors import (
    ConnectionLost,
    HdsdError,
    ProtocolError,
    error_class_for_code,
)
from .._turns import TurnQueue
from ..wire import (
    Cancel,
    Connection,
    ConnectionClosed,
    Credit,
    Data,
    End,
    Event,
    Goodbye,
    Hello,
    Message,
    NeedData,
    Piece,
    PutStart,
    Request,
)
from ._tlsread import allow_bulk_sends, tls_pieces_receiver, tls_sender

__all__ = ["ReplySlot", "WireSession"]

RequestT = TypeVar("RequestT", bound=Request[Any])

_READ_SIZE = 256 << 10
# Messages that never open a request (the rest may: run_reader asks before_open first).
_NOT_OPENING: frozenset[type[Message]] = frozenset({Data, Cancel, Credit, Goodbye})
MAX_DATA_FRAME = 1 << 20
OUTBOX_LIMIT = 1 << 20
"""A sender waits while the outbox holds more than this (so it holds at most this much plus
one batch of frames per sending task)."""
OWN_WRITE = 64 << 10
"""A frame this large goes to the stream as its own write, from the pieces
``conn.send_pieces`` returned, instead of being copied into the outbox's bytearray."""


WRITE_GRACE = 10.0
"""Seconds a frame's write may take, plus its size at :data:`WRITE_RATE`, once started while
other requests are in flight (see ``WireSession._write_shielded``): past that the other end
is taken not to read, and the write is cut."""
WRITE_RATE = 256 << 10
"""The slowest rate (bytes per second) a started write is given: a 4 MiB frame, the largest
the wire allows by default, has 26 s."""


def write_bound(size: int) -> float:
    """How long a started write of *size* bytes may take before it is cut (see
    :data:`WRITE_GRACE`)."""
    return WRITE_GRACE + size / WRITE_RATE


class _Stuck(Exception):
    """A shielded write ran out of its bound: *reason* closes the session."""

    def __init__(self, reason: ConnectionLost) -> None:
        super().__init__(str(reason))
        self.reason = reason


def _size(data: bytearray | tuple[Piece, ...]) -> int:
    return len(data) if isinstance(data, bytearray) else sum(map(len, data))


def _bytes_of(view: memoryview, n: int) -> bytes:
    """The first *n* bytes of *view*: the bytes object it shows when that is all of it (a
    whole chunk, as a get sends it), else a copy."""
    whole = view.obj
    if type(whole) is bytes and n == view.nbytes == len(whole):
        return whole
    return bytes(view[:n])


class ReplySlot:
    """The inbox of a request answered by one message (a peer's ``Replicate``, see
    :meth:`WireSession.open_call`) or by a few read by one task (the client's get): what the
    session routes to the request is kept here and handed to its one waiter, or, closed,
    :meth:`receive` raises ``trio.EndOfChannel`` once what came is taken — a memory
    channel's behaviour for one receiver, without building a channel pair per request (a
    third of the Python calls of a peer call's wait)."""

    __slots__ = ("_closed", "_messages", "_waiter")

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False

    def send_nowait(self, msg: Message) -> None:
        """Called by the session's reader: keep *msg*, wake the waiter."""
        if self._closed:
            raise trio.BrokenResourceError("the request's inbox is closed")
        self._messages.append(msg)
        self._wake()

    def close(self) -> None:
        """The session closed the inbox: the waiter wakes, once what came is taken."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def receive_nowait(self) -> Message:
        """The next message if one came, without a checkpoint: ``trio.WouldBlock`` if none
        yet, ``trio.EndOfChannel`` once closed and empty (a memory channel's)."""
        if self._messages:
            return self._messages.pop(0)
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Message:
        """The next message of the request; ``trio.EndOfChannel`` once closed and empty.
        One task waits on a slot at a time."""
        if self._messages or self._closed:
            await trio.lowlevel.checkpoint()
        else:  # the usual case: park until the reader hands the answer over (a checkpoint)
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._messages:
            return self._messages.pop(0)
        raise trio.EndOfChannel


class _Abandoned:
    """The inbox of a call whose caller stopped waiting for its answer while the other end
    may still work on it (see :meth:`WireSession.abandon_call`): *on_end* runs once, when the
    answer comes (it is dropped) or the session closes — no task waits for it."""

    __slots__ = ("_on_end",)

    def __init__(self, on_end: Callable[[], None]) -> None:
        self._on_end: Callable[[], None] | None = on_end

    def send_nowait(self, msg: Message) -> None:
        """The answer came: the request ended. Raising makes the reader drop the inbox."""
        self.close()
        raise trio.BrokenResourceError("the call was abandoned")

    def close(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()


class WireSession:
    def __init__(self, stream: trio.abc.Stream, conn: Connection) -> None:
        self.stream = stream
        self.conn = conn
        self._receive_pieces = tls_pieces_receiver(stream)
        self._send_all = tls_sender(stream)
        allow_bulk_sends(stream)
        self._outbox: list[bytearray | tuple[Piece, ...]] = []
        self._outbox_size = 0
        self._writing = False
        self._handed_over = False  # the writer, cancelled between frames, left them queued
        # Set by the owner (the client): while other requests are in flight a frame started
        # is finished, bounded, whatever happens to its writer (see _write_shielded). The
        # peer links shield their sends themselves, within their request bound; the node's
        # connections keep the plain cut rule.
        self.finish_frames = False
        self._queued = 0  # bytes ever put in the outbox ...
        self._written = 0  # ... and ever handed to stream.send_all
        self._flushed = trio.lowlevel.ParkingLot()  # senders waiting for the writer ...
        self._waiting: list[int] = []  # ... and the _queued marks they wait for
        # Senders waiting for room in the outbox, in arrival order (see :meth:`_wait_room`).
        self._room = TurnQueue(self._admit)
        self._inboxes: dict[int, trio.MemorySendChannel[Message] | ReplySlot | _Abandoned] = {}
        self._whole: dict[int, list[Message]] = {}  # uploads read whole with their start
        self._whole_size: dict[int, int] = {}  # ... and their body sizes
        self._credit_lot = trio.lowlevel.ParkingLot()
        self._ungranted: dict[int, int] = {}
        self._closed = False
        self._last_rid = 0
        self.closed_reason: HdsdError | None = None
        self.their_hello: Hello | None = None
        self._held: dict[int, int] = {}  # body bytes delivered to a rid's inbox, not consumed
        self.held = 0  # ... summed over the rids
        self._progress = trio.lowlevel.ParkingLot()
        self.last_activity = time.monotonic()  # last bytes read (the node's idle timeout)
        self._then: Callable[[], Awaitable[None]] | None = None  # see run_next
        self._peer_address: str | None = None

    def peer_address(self) -> str:
        """``host:port`` of the other end, ``?`` when the stream cannot tell. Asked of the
        socket once per connection (every audited request names it: a system call each)."""
        if self._peer_address is None:
            try:
                sock = self.stream.transport_stream.socket  # type: ignore[attr-defined]
                host, port = sock.getpeername()[:2]
            except (AttributeError, OSError):
                return "?"
            self._peer_address = f"{host}:{port}"
        return self._peer_address

    @property
    def unsent(self) -> int:
        """Bytes handed to the session for sending that the stream has not taken yet."""
        return self._queued - self._written

    def progress(self) -> None:
        """Wake the gates (see the module docstring): something they wait on may have moved."""
        if self._progress:
            self._progress.unpark_all()

    async def wait_progress(self) -> None:
        """Park until :meth:`progress` (or the session closes; callers re-check their
        condition, and must give up once ``closed``)."""
        if not self._closed:
            await self._progress.park()

    @property
    def closed(self) -> bool:
        """True once the session failed, its reader ended or it was closed: no new request
        may start on it (read this, never ``_closed``)."""
        return self._closed

    @property
    def open_inboxes(self) -> int:
        """Requests of ours still listening on this connection."""
        return len(self._inboxes)

    def _release(self, rid: int, nbytes: int | None = None) -> None:
        """*nbytes* (None: all) of *rid*'s held body bytes were consumed or dropped."""
        held = self._held.get(rid, 0)
        if not held:
            return
        n = held if nbytes is None else min(nbytes, held)
        if n == held:
            del self._held[rid]
        else:
            self._held[rid] = held - n
        self.held -= n
        if self._progress:
            self._progress.unpark_all()

    # -- sending -------------------------------------------------------------------------------
    async def send(self, msg: Message) -> None:
        """Send one message; returns once its frame was written. Raises :class:`ConnectionLost`
        if the connection is (or becomes) unusable — except that a Goodbye is still tried."""
        await self._send((msg,), None)

    async def send_many(self, msgs: Sequence[Message]) -> None:
        """Send *msgs* back to back in one write (with whatever other tasks queued meanwhile).

        Each message is checked by the wire state machine as it is encoded: if one is refused
        (:class:`~hdsd.wire.LocalProtocolError`), those before it are still sent, then the error
        is raised.
        """
        await self._send(msgs, None)

    async def send_upload(self, start: PutStart, data: bytes) -> None:
        """``send_many([start, Data(start.rid, data), End(start.rid)])`` (no Data if *data* is
        empty), encoded and checked in one pass (``Connection.send_upload``): a small put.
        The same bytes; if a frame is refused, nothing is sent."""
        await self._send((start,), data)

    async def _send(self, msgs: Sequence[Message], upload: bytes | None) -> None:
        # send_many's body; with *upload*, msgs is an upload's start, sent with that body.
        # Check cancellation before the state machine records anything: past this point the
        # frames are committed to go out, whatever happens to this task.
        await trio.lowlevel.checkpoint_if_cancelled()
        if (self._outbox_size > OUTBOX_LIMIT or self._room) and not self._closed:
            await self._wait_room()
        if self._closed and not all(isinstance(m, Goodbye) for m in msgs):
            raise self._lost()
        try:
            if upload is not None:
                self._queue(self.conn.send_upload(msgs[0], upload))
            else:
                for msg in msgs:
                    self._queue(self.conn.send_pieces(msg))
        finally:
            if self._room:
                self._admit()  # room left: the next in line queues too
            mark = self._queued
            if self._writing:
                await self._wait_written(mark)
            elif self._outbox:
                await self._write_out()

    async def _wait_room(self) -> None:
        """Wait for this sender's turn to queue: senders that found the outbox full (or others
        already waiting) get the room in arrival order, one after the other as it drains.

        Waking them all at each drain, as before, let the first few the scheduler happened to
        run take the room, and the rest park again: under a burst of large frames (64
        replication writes of 1 MiB on one peer link, 32 clients' 64 MiB uploads) some
        writes waited drain after drain, past the write timeout, while the link moved data
        at full speed — measured: 23 of 32 such puts refused with QuorumNotReached."""
        await self._room.wait()

    def _admit(self) -> None:
        """Give the first waiting sender its turn, if the outbox has room (or is closed)."""
        if self._room and (self._outbox_size <= OUTBOX_LIMIT or self._closed):
            self._room.give()

    def _queue(self, pieces: tuple[Piece, ...]) -> None:
        size = sum(map(len, pieces))
        if not size:
            return
        outbox = self._outbox
        if size >= OWN_WRITE:
            outbox.append(pieces)
        else:
            if not outbox or not isinstance(outbox[-1], bytearray):
                outbox.append(bytearray())
            last = outbox[-1]
            assert isinstance(last, bytearray)
            for piece in pieces:
                last += piece
        self._outbox_size += size
        self._queued += size

    async def _wait_written(self, mark: int) -> None:
        # The writer loops until the outbox is empty, so it will write our bytes too — unless
        # it was cancelled and handed the rest over (:meth:`_write_out`): then the first
        # waiter to wake becomes the writer.
        self._waiting.append(mark)
        try:
            while self._written < mark:
                if not self._writing:
                    if self._closed:
                        raise self._lost()
                    if self._outbox:
                        await self._write_out()
                        continue
                await self._flushed.park()
        finally:
            self._waiting.remove(mark)

    async def _write_out(self) -> None:
        self._writing = True
        try:
            if self.conn.requests_in_flight > 1:
                # Other requests are in flight: let those whose frames are ready in this pass
                # (16 replies finishing together) queue them first, for one write. A lone
                # request skips this pass: its send is synchronous when the socket takes it.
                await trio.lowlevel.cancel_shielded_checkpoint()
            started = False
            while self._outbox:
                parts, self._outbox, self._outbox_size = self._outbox, [], 0
                if self._room:  # nobody waiting (the usual case): nothing to do
                    self._admit()
                if self.finish_frames and self.conn.requests_in_flight > 1:
                    await self._write_shielded(parts, started)
                    started = True
                    continue
                # A lone request: a cut costs nobody else (see _write_shielded), and its
                # write needs no cancel scope (~50 of a small put's ~500 Python calls).
                for data in parts:
                    await self._send_all(data)
                    self._written += (len(data) if isinstance(data, bytearray)
                                      else sum(map(len, data)))
                    if self._flushed:
                        self._flushed.unpark_all()
                started = True
                if self._progress:
                    self._progress.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._fail(ConnectionLost(f"connection lost while sending: {exc}"))
            raise ConnectionLost(f"connection lost while sending: {exc}") from None
        except _Stuck as exc:
            await self._fail(exc.reason)
            # A writer cancelled meanwhile gets what it asked for; the others, the cause.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise exc.reason from None
        except trio.Cancelled:
            if not self._closed and self._handed_over:
                self._handed_over = False
                raise  # cancelled between two frames: the stream is intact
            await self._fail(ConnectionLost("connection closed: a write on it was interrupted"))
            raise
        except BaseException:
            # Cancelled midway: how much of the stream went out is unknown (the peer may hold
            # half a frame), so nothing more may be written on it.
            await self._fail(ConnectionLost("connection closed: a write on it was interrupted"))
            raise
        finally:
            self._writing = False
            if self._flushed:
                self._flushed.unpark_all()

    def _wrote(self, data: bytearray | tuple[Piece, ...]) -> None:
        self._written += _size(data)
        if self._flushed:
            self._flushed.unpark_all()

    async def _write_shielded(self, parts: list[bytearray | tuple[Piece, ...]],
                              started: bool) -> None:
        """Write *parts* (each whole frames) while other requests are in flight: a frame
        started is finished whatever happens to the writing task, so that one caller's
        cancellation does not cut the connection under every other request on it.

        Each part is written in a shielded scope bounded by :func:`write_bound` of its size
        (the caller's own deadline, an application's timeout, waits as its cancel does): only
        when that expires — the other end does not read, the connection is stuck — is the write
        cut, and the session with it. Before each part but the first this writer writes
        (*started*: it wrote one already) the stream is at a frame boundary: a writer
        cancelled meanwhile puts the parts left back in front of the outbox and hands them
        to a sender waiting for the writer (one whose bytes are not written yet: it becomes
        the writer, :meth:`_wait_written`), and raises ``Cancelled`` (promptly: a busy
        connection would otherwise keep it writing the others' frames). With no sender
        waiting it writes them itself: nobody else would."""
        for i, data in enumerate(parts):
            if started and any(m > self._written for m in self._waiting):
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                except trio.Cancelled:
                    rest = parts[i:]
                    self._outbox[:0] = rest
                    self._outbox_size += sum(map(_size, rest))
                    self._handed_over = True
                    raise
            started = True
            size = _size(data)
            limit = write_bound(size)
            with trio.CancelScope(shield=True,
                                  deadline=trio.current_time() + limit) as scope:
                await self._send_all(data)
            if scope.cancelled_caught:
                raise _Stuck(ConnectionLost(
                    f"connection closed: a write of {size} bytes did not finish within "
                    f"{limit:.3g} s: the other end does not read"))
            self._wrote(data)
        if self._progress:
            self._progress.unpark_all()

    async def _fail(self, reason: ConnectionLost) -> None:
        """The connection cannot send any more: drop what is queued, close the session, and
        close its stream at once.

        The stream goes too because nothing else would close it soon: the reader goes on
        reading, and the other end, holding half a frame (or waiting for the End or Cancel of
        a request we can no longer send), keeps the connection — and that request's state —
        until its idle timeout, while every owner of a session (client, peer link, node) takes
        a closed session for a dead one. Closed now, the other end sees the connection end
        and forgets it, our reader ends, and the owner's clean-up runs. Forcefully: the
        stream is broken (a TLS stream is marked so: no close_notify after half a record),
        and this may run in a cancelled scope — ``aclose_forcefully`` never blocks, and the
        shield keeps the caller's own cancellation from surfacing here instead of at its
        ``raise``."""
        self._outbox, self._outbox_size = [], 0
        self._close(reason)
        await self.abort()

    def _close(self, reason: HdsdError | None = None) -> None:
        """The one close path (a failed write, the reader's end, :meth:`aclose`): mark the
        session closed, keep the first *reason*, and wake everyone who waits on it — senders
        waiting for credit, room or the writer, the gates, and every inbox (closed: their
        requests see :class:`ConnectionLost`)."""
        if reason is not None and self.closed_reason is None:
            self.closed_reason = reason
        self._closed = True
        self._credit_lot.unpark_all()
        while self._room:
            self._room.give()
        self._flushed.unpark_all()
        self._progress.unpark_all()
        for inbox in self._inboxes.values():
            inbox.close()
        self._inboxes.clear()

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
            await self.send(Data(rid=rid, data=_bytes_of(view, n)))
            view = view[n:]

    async def send_whole(self, rid: int, data: bytes) -> None:
        """Send *data* as one Data frame on *rid*, once the credit covers all of it: the
        receiver takes it as it comes instead of joining pieces (a chunk record of a
        ``FetchChunks`` download). *data* must fit one frame and the receiver's window."""
        while self.conn.send_credit_available(rid) < len(data):
            if self._closed:
                raise self._lost()
            await self._credit_lot.park()
        await self.send(Data(rid=rid, data=data))

    async def consumed(self, rid: int, nbytes: int) -> None:
        """Tell the peer we processed *nbytes* of *rid*'s body: grant them back in batches."""
        self._release(rid, nbytes)
        pending = self._ungranted.get(rid, 0) + nbytes
        window = self.conn.initial_window
        if pending >= window // 4:
            self._ungranted[rid] = 0
            await self.send(Credit(rid=rid, amount=pending))
        else:
            self._ungranted[rid] = pending

    # -- request routing -----------------------------------------------------------------------
    def open_request(self, request: RequestT) -> tuple[RequestT,
                                                       trio.MemoryReceiveChannel[Message]]:
        """*request* (built with ``rid=UNSENT``) stamped with a fresh request id, and the inbox
        its answers arrive in, registered before it is sent. With :meth:`open_call`, the one
        place request ids are allocated and stamped (the client and the peer links);
        ``close_inbox(request.rid)`` when done."""
        rid = self._new_rid()
        return request.with_rid(rid), self.open_inbox(rid)

    def open_call(self, request: RequestT) -> tuple[RequestT, ReplySlot]:
        """:meth:`open_request` for a request answered by one message (a ``Reply`` or an
        ``ErrorReply``): its answer arrives in a :class:`ReplySlot`, lighter than a memory
        channel. ``close_inbox(request.rid)`` when done."""
        if self._closed:
            raise self._lost()
        rid = self._new_rid()
        slot = self._inboxes[rid] = ReplySlot()
        return request.with_rid(rid), slot

    def abandon_call(self, rid: int, on_end: Callable[[], None]) -> bool:
        """The caller of :meth:`open_call` *rid* stops waiting for its answer, which the other
        end may still be working on: *on_end* (it must not raise) is called once the request
        ends — its answer arrives (dropped, as any abandoned request's) or the session
        closes — or when ``close_inbox(rid)`` gives up on it. False, and nothing kept, if it
        has ended already (its answer is in, or the session closed): the caller closes the
        inbox as usual."""
        slot = self._inboxes.get(rid)
        if type(slot) is not ReplySlot or slot._messages or slot._closed:
            return False
        self._inboxes[rid] = _Abandoned(on_end)
        return True

    def _new_rid(self) -> int:
        # The next id (mod 2³²) not in flight on this connection.
        while True:
            self._last_rid = (self._last_rid + 1) % (1 << 32)
            if not self.conn.in_flight(self._last_rid):
                return self._last_rid

    def has_whole_upload(self, rid: int) -> bool:
        """Whether upload *rid*'s whole body (its Data frames and End) came in the same reads
        as its start, so that it needs no inbox (see :meth:`take_whole_upload`)."""
        return rid in self._whole

    def whole_upload_size(self, rid: int) -> int | None:
        """The body size of upload *rid* if it was read whole with its start (see
        :meth:`take_whole_upload`, which this does not take), else None."""
        return self._whole_size.get(rid)

    def take_whole_upload(self, rid: int) -> list[Message] | None:
        """Upload *rid*'s Data frames and End, if they were read with its start (a small put
        arrives whole: PutStart, Data and End in one write), else None: then they come
        through its inbox. Their bytes count as held until ``close_inbox(rid)``."""
        self._whole_size.pop(rid, None)
        return self._whole.pop(rid, None)

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
        if self._whole:
            self._whole.pop(rid, None)
            self._whole_size.pop(rid, None)
        self._release(rid)
        if inbox is not None:
            inbox.close()

    async def receive_hello(self) -> Hello:
        """Read until the peer's Hello (the first frame) arrives; the reader is not running yet.
        The caller owns the deadline (``hdsd._deadline.deadline``)."""
        while True:
            event = self.conn.next_event()
            if isinstance(event, Hello):
                self.their_hello = event
                return event
            if isinstance(event, Goodbye):
                # The peer's reason, typed: a full node (retry later) is not a broken one.
                cls = error_class_for_code(event.code)
                if cls is HdsdError:
                    cls = ProtocolError
                raise cls(f"peer refused: {event.code}: {event.message}")
            if isinstance(event, ConnectionClosed):
                raise ConnectionLost("peer closed the connection during the handshake")
            if isinstance(event, NeedData):
                await self._feed()
                continue
            raise ProtocolError(f"expected Hello, got {type(event).__name__}")

    async def _feed(self) -> None:
        try:
            pieces = await self._receive_pieces(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection lost: {exc}") from None
        # Fed as the records they are (never joined: a copy of every byte), all in one call;
        # the connection buffers them until next_event cuts frames out, one read's worth at
        # most.
        if pieces:
            self.conn.receive_pieces(pieces)
        else:
            self.conn.receive_data(b"")  # the end of the stream

    async def run_reader(
        self, on_request: Callable[[Message], None] | None = None, *,
        before_read: Callable[[], Awaitable[None]] | None = None,
        before_open: Callable[[Message], Awaitable[bool]] | None = None,
    ) -> None:
        """Route incoming events until the connection ends; always closes every inbox.
        *before_read* and *before_open* are the gates of the module docstring."""
        pending: Event | None = None  # read ahead of an upload's end, not yet routed
        try:
            while True:
                if pending is None:
                    event = self.conn.next_event()
                else:
                    event, pending = pending, None
                # Events are of their exact classes (the registry's, NeedData,
                # ConnectionClosed): told apart by type, not isinstance (a call each, ~10 per
                # put on a coordinator's two connections).
                if type(event) is NeedData:
                    if before_read is not None:
                        await before_read()
                    await self._feed()
                    self.last_activity = time.monotonic()
                elif type(event) is ConnectionClosed:
                    self._reader_ended(ConnectionLost("the peer closed the connection"))
                    return
                elif (before_open is not None and type(event) not in _NOT_OPENING
                      and getattr(event, "rid", None) not in self._inboxes):
                    # A new request: wait for room before taking it (and reading on).
                    if await before_open(event):
                        if type(event) is PutStart:
                            pending = self._open_upload(event, on_request)
                        else:
                            self._route(event, on_request)
                        if self._then is not None:  # on_request handed the reader a job
                            job, self._then = self._then, None
                            await job()
                elif type(event) is Goodbye:
                    self._reader_ended(ConnectionLost(
                        f"the peer closed the connection: {event.code}: {event.message}"))
                    return
                elif type(event) is Credit:
                    self._credit_lot.unpark_all()
                else:
                    self._route(event, on_request)
        except HdsdError as exc:
            self._reader_ended(exc)
            raise
        finally:
            self._close()

    def _reader_ended(self, reason: HdsdError) -> None:
        # A write that failed first closed the stream under the reader: its reason is the
        # cause, what the reader then met (the stream closed) only its consequence.
        if self.closed_reason is None:
            self.closed_reason = reason

    def run_next(self, job: Callable[[], Awaitable[None]]) -> None:
        """Called by ``on_request`` while it takes a new request (after ``before_open``): the
        reader awaits *job* as soon as that request is routed, and reads nothing more until
        it returns — a request served by the reader task itself, no task handed over to (a
        reschedule and a scheduler pass fewer). Only for work that waits on nothing this
        connection would have to read first; *job* must not raise (what it raises ends the
        reader, as a gate's exception does): it keeps its request's boundary itself, as a
        request's task does (the node's, ``Connections._run_put_group``, answers a put that
        fails, whatever the failure, and contains every ``Exception``)."""
        self._then = job

    def _open_upload(self, start: PutStart,
                     on_request: Callable[[Message], None] | None) -> Event | None:
        """Route a new upload. Its body frames already buffered are read first: when they
        reach its End (a small put, sent in one write), the whole body is kept for the handler
        (:meth:`take_whole_upload`) and the request needs no inbox — no channel to create,
        fill and drain. Otherwise they go to its inbox as usual. Returns the event read past
        the upload's frames (the caller routes it next), if any."""
        rid = start.rid
        size = 0  # the body's bytes, counted as read (asked again by the handler: see _whole)
        after: Event | None = None
        # The usual small put: its Data and End read at once (Connection.next_upload_end).
        whole = self.conn.next_upload_end(rid)
        if whole is not None:
            frames: list[Message] = [*whole]
            size = len(whole[0].data)
        else:
            frames = []
            while True:
                event = self.conn.next_event()
                if type(event) is Data and event.rid == rid:
                    frames.append(event)
                    size += len(event.data)
                elif type(event) is End and event.rid == rid:
                    frames.append(event)
                    break
                else:
                    after = event
                    break
        if after is None:
            self._whole[rid] = frames
            self._whole_size[rid] = size
            if size:
                self._held[rid] = self._held.get(rid, 0) + size
                self.held += size
        self._route(start, on_request)
        if after is not None:
            for frame in frames:
                self._route(frame, on_request)
        return after

    def _route(self, event: Message, on_request: Callable[[Message], None] | None) -> None:
        rid = getattr(event, "rid", None)
        inbox = self._inboxes.get(rid) if rid is not None else None
        if inbox is not None:
            try:
                inbox.send_nowait(event)
                if type(event) is Data:
                    self._held[event.rid] = self._held.get(event.rid, 0) + len(event.data)
                    self.held += len(event.data)
            except trio.BrokenResourceError:
                self.close_inbox(rid)  # type: ignore[arg-type]
            if type(event) is Cancel:
                self.close_inbox(rid)  # type: ignore[arg-type]
        elif on_request is not None and type(event) is not Data and type(event) is not Cancel:
            on_request(event)
        # else: a late frame of a finished request (drained per the protocol): dropped.

    def _lost(self) -> ConnectionLost:
        if isinstance(self.closed_reason, ConnectionLost):
            return self.closed_reason
        reason = f": {self.closed_reason}" if self.closed_reason else ""
        return ConnectionLost(f"connection closed{reason}")

    async def cancel_abandoned(self, rid: int) -> None:
        """Tell the other end to stop a request this side abandoned midway — a download (it
        stops sending, and frees the rid, at our Cancel) or an upload (it drops the body):
        best effort, shielded from the caller's own cancellation (the usual reason it was
        abandoned), at most 2 s; a broken connection ends it anyway."""
        if self.closed:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.send(Cancel(rid=rid))
            except HdsdError:
                pass

    async def abort(self) -> None:
        """Close the session and its stream at once, without a close_notify: never blocks,
        cancelled or not (a stream already closed stays so)."""
        self._close()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    async def aclose(self) -> None:
        """Close the session, and its stream gracefully (a TLS close_notify) within 2 s. A
        stream closed or broken meanwhile — a cut write's :meth:`abort` closing it under a
        reader that then ends here, a reset — is closed enough: nothing is raised for it."""
        self._close()
        with trio.CancelScope(shield=True), trio.move_on_after(2), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()
