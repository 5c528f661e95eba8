"""Reading a trio ``SSLStream`` in large gulps.

trio's ``SSLStream.receive_some`` returns what *one* ``SSLObject.read`` gives — at most one TLS
record, 16 KiB — and passes through the scheduler once per call; its socket reads are 64 KiB.
A 1 MiB body therefore costs 64 scheduler passes on the receiving side. :func:`tls_receiver`
returns a ``receive_some`` that, for a handshaken ``SSLStream``, reads up to 256 KiB from the
socket per pass and decrypts every complete record in it at once, synchronously, into one
result: one pass per socket read instead of one per record.

It drives the stream's own ``SSLObject`` and incoming ``MemoryBIO`` (trio's private
``_ssl_object`` and ``_incoming``), so the TLS state stays shared with the ``SSLStream``, which
keeps doing everything else: ``send_all`` and ``aclose`` (close_notify). That is sound because:

* only the reader reads: after a TLS 1.3 handshake ``SSLObject.write`` never needs incoming
  bytes (no renegotiation in 1.3), so trio's send path never calls the transport's
  ``receive_some`` concurrently with ours;
* post-handshake messages (session tickets, KeyUpdate) are consumed by ``SSLObject.read``;
  anything OpenSSL queues in reply (a KeyUpdate answer) stays in the stream's outgoing BIO, which
  trio's next ``send_all`` drains *before* the new record, so order on the wire is kept;
* a clean close_notify reads as ``b""`` (end of stream); a transport EOF without it, or any TLS
  error, raises ``trio.BrokenResourceError`` — as ``SSLStream.receive_some`` does.

If a trio release renames those attributes, :func:`tls_receiver` falls back to the stream's own
``receive_some``: slower, never wrong. The fallback would be silent in production, so
``tests/transport/test_session_tls.py`` fails when the large-read path is not taken (one read
returning many records): a trio upgrade that breaks it is noticed in CI, not in a benchmark.
The only other use of trio internals in hdsd is ``_listen._flush_alert`` (documented there).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import trio

__all__ = ["SOCKET_READ", "tls_pieces_receiver", "tls_receiver"]

SOCKET_READ = 256 << 10
"""Bytes asked of the socket per read (per scheduler pass)."""

Receiver = Callable[[int], Awaitable[bytes | bytearray]]
PiecesReceiver = Callable[[int], Awaitable[list[bytes]]]


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


class _TlsRecords:
    __slots__ = ("_eof", "_error", "_incoming", "_ssl", "_transport")

    def __init__(self, transport: trio.abc.Stream, ssl_object: ssl.SSLObject,
                 incoming: ssl.MemoryBIO) -> None:
        self._transport = transport
        self._ssl = ssl_object
        self._incoming = incoming
        self._eof = False
        self._error: ssl.SSLError | None = None

    async def receive_some(self, max_bytes: int) -> bytes:
        parts = await self.receive_pieces(max_bytes)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive_pieces(self, max_bytes: int) -> list[bytes]:
        out = self._decrypt(max_bytes)
        if out is not None:
            # Already buffered (bytes that came with the handshake): still a checkpoint.
            await trio.lowlevel.checkpoint()
            return out
        while True:
            data = await self._transport.receive_some(SOCKET_READ)
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            out = self._decrypt(max_bytes)
            if out is not None:
                return out
            # Only part of a record, or only post-handshake messages: read on.

    def _decrypt(self, max_bytes: int) -> list[bytes] | None:
        """Every plaintext byte available without I/O (up to *max_bytes*), as the records'
        pieces; ``[]`` at a clean end, None when a read is needed."""
        if self._error is not None:
            raise trio.BrokenResourceError(str(self._error)) from self._error
        if self._eof:
            return []
        parts: list[bytes] = []
        got = 0
        while got < max_bytes:
            try:
                piece = self._ssl.read(max_bytes - got)
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
