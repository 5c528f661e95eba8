"""Reading and writing a trio ``SSLStream`` without its per-call overheads.

Reading. trio's ``SSLStream.receive_some`` returns what *one* ``SSLObject.read`` gives — at most
one TLS record, 16 KiB — and passes through the scheduler once per call; its socket reads are
64 KiB. A 1 MiB body therefore costs 64 scheduler passes on the receiving side.
:func:`tls_receiver` returns a ``receive_some`` that, for a handshaken ``SSLStream``, reads up to
256 KiB from the socket per pass and decrypts every complete record in it at once, synchronously,
into one result: one pass per socket read instead of one per record. And a read that finds
bytes waiting in the socket takes them without a pass at all (``os.read`` on its descriptor, as
the sender writes), up to :data:`SYNC_READ_BUDGET` bytes since the last read that went through
trio: the reader of a bulk transfer finds more bytes waiting at most reads (it spent the time
since the last one decrypting and cutting frames), and each pass was ~30 Python calls, an
``epoll_wait`` and a point where the event loop gave the GIL up to the sealing threads; the
budget keeps it from holding the loop for longer than a megabyte's work.

Writing. trio's ``SSLStream.send_all`` passes through the scheduler twice even when the socket
takes every byte at once: its inner send lock's ``acquire`` and the socket's ``send`` each end in
a schedule point. For a small request or reply that is most of what sending costs, and every
pass is also a point where the event loop gives the GIL up to the node's other threads (the log
writer, the audit writer) and waits to get it back. :func:`tls_sender` returns a ``send_all``
that encrypts into the stream's outgoing BIO and hands the bytes to the socket synchronously;
only what the socket does not take at once goes through trio (``transport_stream.send_all``,
under the stream's own inner send lock), so a full socket still parks the sender. A send that
needs trio's machinery — before the stream's first write (trio holds a TLS 1.3 server's session
tickets back until then), while the lock is held (a close_notify being sent), on a stream trio
marked broken or closed — goes through ``SSLStream.send_all`` itself. The sender is not a
schedule point: callers check for cancellation before sending (``WireSession.send_many`` does).

Both drive the stream's own ``SSLObject`` and memory BIOs (trio's private ``_ssl_object``,
``_incoming``, ``_outgoing``, ``_inner_send_lock``, ``_delayed_outgoing``, ``_state``,
``_handshook``), so the TLS state stays shared with the ``SSLStream``, which keeps doing
everything else: the handshake and ``aclose`` (close_notify). That is sound because:

* only the reader reads: after a TLS 1.3 handshake ``SSLObject.write`` never needs incoming
  bytes (no renegotiation in 1.3), so trio's send path never calls the transport's
  ``receive_some`` concurrently with ours;
* post-handshake messages (session tickets, KeyUpdate) are consumed by ``SSLObject.read``;
  anything OpenSSL queues in reply (a KeyUpdate answer) stays in the stream's outgoing BIO,
  which the next send drains *before* the new record, so order on the wire is kept;
* one task writes at a time (``WireSession``'s writer), nothing awaits between ``write`` and
  the socket send, and the part left for trio is sent under the inner send lock, so a
  close_notify never lands inside a record;
* a clean close_notify reads as ``b""`` (end of stream); a transport EOF without it, or any TLS
  error, raises ``trio.BrokenResourceError`` — as ``SSLStream.receive_some`` does; a TLS or
  socket error while sending raises ``trio.BrokenResourceError`` too.

If a trio release renames those attributes, :func:`tls_receiver` and :func:`tls_sender` fall
back to the stream's own methods: slower, never wrong. The fallback would be silent in
production, so ``tests/transport/test_session_tls.py`` fails when the large-read path is not
taken (one read returning many records) or a send the socket takes whole passes through the
scheduler: a trio upgrade that breaks them is noticed in CI, not in a benchmark.
The only other use of trio internals in hdsd is ``_listen._flush_alert`` (documented there).
Records are decrypted by the ``_ssl`` object under the ``SSLObject`` (the standard library's
private ``_sslobj``, :func:`record_reader`), whose ``read`` the public one only wraps; the same
test fails if that shortcut is lost.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["SOCKET_READ", "SYNC_READ_BUDGET", "record_reader", "tls_pieces_receiver",
           "tls_receiver", "tls_sender"]

SOCKET_READ = 256 << 10
"""Bytes asked of the socket per read (per scheduler pass)."""

Receiver = Callable[[int], Awaitable[bytes | bytearray]]
PiecesReceiver = Callable[[int], Awaitable[list[bytes]]]
Sendable = bytes | bytearray | memoryview | tuple[bytes | bytearray | memoryview, ...]
"""What a sender takes: bytes, or a frame's pieces (written one after the other, in order)."""
Sender = Callable[[Sendable], Awaitable[None]]


def tls_receiver(stream: trio.abc.Stream) -> Receiver:
    """A ``receive_some(max_bytes)`` for *stream*: the large-read one for a handshaken
    ``trio.SSLStream`` over a transport, else ``stream.receive_some`` itself. The stream's own
    ``receive_some`` must not be called any more once this was taken."""
    if isinstance(stream, trio.SSLStream):
        ssl_object = getattr(stream, "_ssl_object", None)
        incoming = getattr(stream, "_incoming", None)
        if isinstance(ssl_object, ssl.SSLObject) and isinstance(incoming, ssl.MemoryBIO):
            return _TlsRecords(stream.transport_stream, ssl_object, incoming).receive_some
    return stream.receive_some


def tls_pieces_receiver(stream: trio.abc.Stream) -> PiecesReceiver:
    """:func:`tls_receiver` for a consumer that takes the plaintext piece by piece (one per
    TLS record; an empty list at a clean end): the pieces are not joined into one string
    first — a copy of every byte received, megabytes a second on a bulk transfer."""
    if isinstance(stream, trio.SSLStream):
        ssl_object = getattr(stream, "_ssl_object", None)
        incoming = getattr(stream, "_incoming", None)
        if isinstance(ssl_object, ssl.SSLObject) and isinstance(incoming, ssl.MemoryBIO):
            return _TlsRecords(stream.transport_stream, ssl_object, incoming).receive_pieces
    receive_some = stream.receive_some

    async def pieces(max_bytes: int) -> list[bytes]:
        data = await receive_some(max_bytes)
        return [bytes(data)] if data else []
    return pieces


def record_reader(ssl_object: ssl.SSLObject) -> Callable[[int], bytes]:
    """``ssl_object.read`` without the ``ssl`` module's Python wrapper: the ``_ssl`` object's
    own method (``SSLObject._sslobj``, private to the standard library), called once per TLS
    record — 64 per MiB received —, where the wrapper added a Python call that only passes
    the arguments on. Falls back to the public method if a release renames it."""
    inner = getattr(ssl_object, "_sslobj", None)
    read = getattr(inner, "read", None)
    if callable(read):
        return read  # type: ignore[no-any-return]
    return ssl_object.read


SYNC_READ_BUDGET = 1 << 20
"""Bytes a receiver may take from the socket without a scheduler pass (see
:meth:`_TlsRecords.receive_pieces`) before its next read goes through trio again."""


class _TlsRecords:
    __slots__ = ("_budget", "_eof", "_error", "_incoming", "_pending", "_read", "_socket",
                 "_transport")

    def __init__(self, transport: trio.abc.Stream, ssl_object: ssl.SSLObject,
                 incoming: ssl.MemoryBIO) -> None:
        self._transport = transport
        self._read = record_reader(ssl_object)
        inner = getattr(ssl_object, "_sslobj", None)  # as record_reader: the wrapper's call
        pending = getattr(inner, "pending", None)
        self._pending: Callable[[], int] = pending if callable(pending) else ssl_object.pending
        self._incoming = incoming
        self._eof = False
        self._error: ssl.SSLError | None = None
        self._socket = transport.socket if isinstance(transport, trio.SocketStream) else None
        self._budget = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        parts = await self.receive_pieces(max_bytes)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive_pieces(self, max_bytes: int) -> list[bytes]:
        out = self._decrypt(max_bytes)
        if out is not None:
            # Already buffered (bytes that came with the handshake): still a checkpoint.
            await trio.lowlevel.checkpoint()
            return out
        if self._budget > 0:
            # What the socket holds already is read without a scheduler pass (trio's
            # receive_some passes once even then), up to SYNC_READ_BUDGET bytes between two
            # passes: the reader of a bulk transfer — which finds more bytes waiting at most
            # reads — does not hold the loop for longer than that.
            out = self._read_now(max_bytes)
            if out is not None:
                return out
        while True:
            data = await self._transport.receive_some(SOCKET_READ)
            self._budget = SYNC_READ_BUDGET
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            out = self._decrypt(max_bytes)
            if out is not None:
                return out
            # Only part of a record, or only post-handshake messages: read on.

    def _read_now(self, max_bytes: int) -> list[bytes] | None:
        """The records of what the socket holds now (see :meth:`receive_pieces`); None when
        it holds nothing yet, or a whole record not yet, or the read fails — trio's own read
        then waits, or raises the failure as it words it."""
        sock = self._socket
        fd = -1 if sock is None else sock.fileno()  # -1 once closed, never a reused number
        if fd < 0:
            return None
        try:
            data = os.read(fd, SOCKET_READ)
        except OSError:  # BlockingIOError: nothing yet; any other: trio's read raises it
            return None
        if data:
            self._budget -= len(data)
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return self._decrypt(max_bytes)

    def _decrypt(self, max_bytes: int) -> list[bytes] | None:
        """Every plaintext byte available without I/O (up to *max_bytes*), as the records'
        pieces; ``[]`` at a clean end, None when a read is needed."""
        if self._error is not None:
            raise trio.BrokenResourceError(str(self._error)) from self._error
        if self._eof:
            return []
        parts: list[bytes] = []
        read = self._read
        incoming = self._incoming
        pending = self._pending
        got = 0
        while got < max_bytes:
            if not incoming.pending and not pending() and not incoming.eof:
                # Nothing to decrypt without I/O (every byte received is in the SSL object,
                # which holds no plaintext): a read would only raise SSLWantReadError, ~1.8 µs
                # with the exception caught — once before each socket read and once after its
                # last record, two or three per small request or reply received.
                break
            try:
                piece = read(max_bytes - got)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                if not parts:
                    raise trio.BrokenResourceError(str(exc)) from exc
                self._error = exc  # deliver what came before it first
                break
            if not piece:
                self._eof = True  # close_notify
                break
            parts.append(piece)
            got += len(piece)
        if parts or self._eof:
            return parts
        return None


#: The unsent bytes a connection's socket may hold (``TCP_NOTSENT_LOWAT``; it is writable again
#: once under half of it). trio sets 16 KiB on every TCP stream, for latency: a sender then
#: wakes each time the receiver has taken a few records, and a streamed get's coordinator made
#: ~7 socket writes and waits, ~7.4 scheduler passes and ~750 Python calls per MiB on its
#: event loop. A megabyte lets a 1 MiB Data frame go to the kernel in one write.
SEND_LOWAT = 1 << 20


def allow_bulk_sends(stream: trio.abc.Stream) -> None:
    """Let the TCP socket under *stream* (a ``SocketStream``, or one under an ``SSLStream``)
    hold :data:`SEND_LOWAT` unsent bytes instead of trio's 16 KiB. A connection still holds
    little: the kernel's share is bounded by it (and by the socket's send buffer), the
    session's by its outbox. Nothing happens for any other stream, or where the option is
    unknown."""
    transport = getattr(stream, "transport_stream", stream)
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if not isinstance(transport, trio.SocketStream) or option is None:
        return
    try:
        transport.setsockopt(socket.IPPROTO_TCP, option, SEND_LOWAT)
    except OSError:
        pass  # not TCP (a Unix socket pair in tests) or not supported: trio's setting stays


def tls_sender(stream: trio.abc.Stream) -> Sender:
    """A ``send_all(data)`` for *stream*: the synchronous one for a ``trio.SSLStream`` (see the
    module docstring), else ``stream.send_all`` itself. One task at a time may call it, and
    nothing else may call the stream's own ``send_all`` meanwhile (its ``aclose`` may).
    *data* may be a tuple of pieces: they are sent one after the other — into TLS by the
    synchronous sender, then to the socket in one write — never joined into one string first
    (a copy of a megabyte payload)."""
    if isinstance(stream, trio.SSLStream):
        ssl_object = getattr(stream, "_ssl_object", None)
        outgoing = getattr(stream, "_outgoing", None)
        lock = getattr(stream, "_inner_send_lock", None)
        if (isinstance(ssl_object, ssl.SSLObject) and isinstance(outgoing, ssl.MemoryBIO)
                and isinstance(lock, trio.StrictFIFOLock)
                and all(hasattr(stream, a) for a in _STATE_ATTRIBUTES)):
            return _TlsWrites(stream, ssl_object, outgoing, lock).send_all
    return _piecewise(stream.send_all)


def _piecewise(send_all: Callable[[bytes | bytearray | memoryview], Awaitable[None]]
               ) -> Sender:
    async def send(data: Sendable) -> None:
        if isinstance(data, tuple):
            for piece in data:
                await send_all(piece)
        else:
            await send_all(data)
    return send


_STATE_ATTRIBUTES = ("_state", "_delayed_outgoing", "_handshook")


class _TlsWrites:
    __slots__ = ("_lock", "_outgoing", "_ssl", "_stream")

    def __init__(self, stream: trio.SSLStream[trio.abc.Stream], ssl_object: ssl.SSLObject,
                 outgoing: ssl.MemoryBIO, lock: trio.StrictFIFOLock) -> None:
        self._stream = stream
        self._ssl = ssl_object
        self._outgoing = outgoing
        self._lock = lock

    def _direct(self) -> bool:
        """Whether this send may bypass trio's: see the module docstring."""
        stream: Any = self._stream
        state = stream._state
        handshook = stream._handshook
        return (not self._lock.locked() and stream._delayed_outgoing is None
                and getattr(state, "name", None) == "OK" and getattr(handshook, "done", False))

    async def send_all(self, data: Sendable) -> None:
        pieces = data if isinstance(data, tuple) else (data,)
        if not any(pieces) or not self._direct():
            for piece in pieces:
                await self._stream.send_all(piece)
            return
        try:
            try:
                for piece in pieces:
                    self._ssl.write(piece)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error while sending: {exc}") from exc
            out = self._outgoing.read()
            sent = _send_now(self._stream.transport_stream, out)
            if sent < len(out):
                async with self._lock:
                    await self._stream.transport_stream.send_all(memoryview(out)[sent:])
        except BaseException:
            # Some unknown part of a record may be on the wire: as trio does, the stream is
            # broken, so its close sends no close_notify after half a record.
            self._broken()
            raise

    def _broken(self) -> None:
        stream: Any = self._stream
        broken = getattr(type(stream._state), "BROKEN", None)
        if broken is not None:
            stream._state = broken


def _send_now(transport: trio.abc.Stream, data: bytes) -> int:
    """Bytes of *data* the transport's socket takes without waiting (0 for a transport that
    is not a socket: trio sends it all)."""
    if not isinstance(transport, trio.SocketStream):
        return 0
    fd = transport.socket.fileno()  # asked each time: -1 once closed, never a reused number
    if fd < 0:
        raise trio.ClosedResourceError("the socket was closed")
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket send failed: {exc}") from exc
