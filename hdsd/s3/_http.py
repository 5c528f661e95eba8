"""HTTP/1.1 over trio streams with h11: one task per connection, one request at a time.

Why h11 directly (see docs/design-notes.md): the gateway needs to decide, per request, when the
body is accepted (``100 Continue`` goes out only when the handler first reads the body, i.e.
after authentication and the write checks), to read the body exactly as fast as the store takes
it (backpressure down to TCP), and to bound everything a client controls: the request head's
size (``max_incomplete_event_size``), the time to send it (slowloris), the time between body
bytes, the pace of an upload, and the number of connections. h11 ≥ 0.16 rejects the malformed
chunked framings behind request smuggling; on top of it a request carrying both
``Content-Length`` and ``Transfer-Encoding`` is refused outright (RFC 9112 §6.1 allows the
server to, and there is no honest client that sends both).

A handler gets an :class:`HttpRequest`, reads its body with :meth:`HttpRequest.read` (``b""``
at the end) and answers once with :meth:`HttpRequest.respond` (whole body) or
:meth:`HttpRequest.start` + :meth:`HttpRequest.write` + :meth:`HttpRequest.finish`
(streamed). A response sent before the body was read whole ends the connection (the unread
body cannot be told apart from the next request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import h11
import trio

from .._errors import ConnectionLost, RequestTimeout
from ..transport import tls_receiver

__all__ = ["HttpLimits", "HttpRequest", "serve_http_connection"]

log = logging.getLogger("hdsd.s3")

_READ = 256 << 10


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_head_bytes: int = 16 << 10  # request line + headers (S3 allows 8 KiB of headers)
    head_timeout_s: float = 30.0  # to send a whole request head (slowloris)
    idle_timeout_s: float = 60.0  # between requests on a keep-alive connection
    body_timeout_s: float = 60.0  # with no body byte at all
    min_upload_rate_kib_s: float = 64.0  # the upload's deadline grows only with real bytes
    send_timeout_s: float = 60.0  # a client that reads nothing of its response


class _Close(Exception):
    """End the connection quietly (the client left, or broke the protocol and was told)."""


class HttpRequest:
    """One request of a connection; see the module docstring."""

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream, event: h11.Request,
                 limits: HttpLimits, peer: str,
                 receive: Callable[[int], Awaitable[bytes | bytearray]] | None = None) -> None:
        self._conn = conn
        self._stream = stream
        self._receive_some = receive or stream.receive_some
        self._limits = limits
        self.peer = peer
        self.method = event.method.decode("ascii", "replace").upper()
        self.target = event.target.decode("ascii", "replace")  # raw: SigV4 signs it as sent
        self.headers: list[tuple[str, str]] = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        self._header_map: dict[str, str] = {}
        for k, v in self.headers:
            self._header_map[k] = f"{self._header_map[k]},{v}" if k in self._header_map else v
        self.body_done = False
        self.responded = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self._deadline: float | None = None

    def header(self, name: str, default: str = "") -> str:
        return self._header_map.get(name.lower(), default)

    def has_header(self, name: str) -> bool:
        return name.lower() in self._header_map

    # -- body --------------------------------------------------------------------------------
    async def read(self) -> bytes:
        """The next piece of the request body, ``b""`` at its end. The first call sends
        ``100 Continue`` to a client waiting for it. Raises :class:`RequestTimeout` for a body
        that stalls or trickles, :class:`ConnectionLost` for a client that left."""
        if self.body_done:
            return b""
        if self._deadline is None:
            self._deadline = trio.current_time() + self._limits.body_timeout_s
        per_byte = 1 / (self._limits.min_upload_rate_kib_s * 1024)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionLost(f"bad HTTP framing in the body: {exc}") from None
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                self.bytes_in += len(data)
                self._deadline += len(data) * per_byte
                return data
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return b""
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost("client closed the connection during the upload")
            assert event is h11.NEED_DATA, event
            if self._conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[],
                                                           reason=b"Continue"))
            await self._receive(min(trio.current_time() + self._limits.body_timeout_s,
                                    self._deadline), "upload")

    async def _receive(self, deadline: float, what: str) -> None:
        with trio.move_on_at(deadline):
            try:
                data = await self._receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"connection lost during the {what}: {exc}") from None
            try:
                # No bytes() copy first: h11 appends the buffer to its own (+=).
                self._conn.receive_data(data)  # type: ignore[arg-type]
            except h11.RemoteProtocolError as exc:
                raise ConnectionLost(f"bad HTTP framing during the {what}: {exc}") from None
            return
        raise RequestTimeout(f"{what} too slow (no data, or slower than "
                             f"{self._limits.min_upload_rate_kib_s:g} KiB/s); nothing was stored")

    # -- response ----------------------------------------------------------------------------
    async def respond(self, status: int, headers: list[tuple[str, str]],
                      body: bytes = b"") -> None:
        if self.method != "HEAD" and not any(k.lower() == "content-length" for k, _ in headers):
            headers = [*headers, ("Content-Length", str(len(body)))]
        # Head, body and end in one write: one TLS record and one send for an XML answer or
        # an error, not one for the head and another for the body.
        data = bytearray(self._conn.send(self._head(status, headers)) or b"")
        if body and self.method != "HEAD":
            self.bytes_out += len(body)
            data += self._conn.send(h11.Data(data=body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        await self._send_bytes(data)

    def _settle_body(self) -> None:
        """Take what has already arrived of a body the handler did not read: a GET's empty
        body ends at once (keep-alive goes on); a real body not all here ends the connection."""
        while not self.body_done:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                return  # the body was broken: the connection ends after this answer
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
            elif isinstance(event, h11.Data):
                self.bytes_in += len(event.data)
            else:
                return

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self._send(self._head(status, headers))

    def _head(self, status: int, headers: list[tuple[str, str]]) -> h11.Response:
        self.responded = True
        self.status = status
        self._settle_body()
        base = [("Date", _http_now()), ("Server", "hdsd"),
                ("x-amz-request-id", self.request_id)]
        if not self.body_done:
            # The unread body (if any) cannot be skipped safely: this connection ends here.
            base.append(("Connection", "close"))
        # A reason phrase always: botocore's Expect: 100-continue handling reads a final
        # answer's status line as three words, and takes "HTTP/1.1 403" for garbage.
        return h11.Response(status_code=status, reason=_reason(status), headers=[
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in base + headers])

    async def write(self, data: bytes | memoryview) -> None:
        if self.method == "HEAD":
            return
        self.bytes_out += len(data)
        await self._send(h11.Data(data=data))  # type: ignore[arg-type]

    async def finish(self) -> None:
        await self._send(h11.EndOfMessage())

    request_id = ""

    async def _send(self, event: h11.Event) -> None:
        await self._send_bytes(self._conn.send(event))

    async def _send_bytes(self, data: bytes | bytearray | None) -> None:
        if data:
            with trio.move_on_after(self._limits.send_timeout_s):
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ConnectionLost(f"connection lost while answering: {exc}") from None
                return
            raise RequestTimeout(f"client read nothing for {self._limits.send_timeout_s:g} s")


_now: tuple[int, str] = (0, "")


def _http_now() -> str:
    """The Date header's value, formatted once a second (not once a request)."""
    global _now
    second = int(time.time())
    if _now[0] != second:
        _now = (second, formatdate(second, usegmt=True))
    return _now[1]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


Handler = Callable[[HttpRequest], Awaitable[None]]


async def serve_http_connection(stream: trio.abc.Stream, peer: str, handler: Handler,
                                limits: HttpLimits, on_bad_request: Callable[
                                    [HttpRequest | None, int, str], Awaitable[None]]) -> None:
    """Serve requests on *stream* until the client closes, misbehaves or idles out.

    *on_bad_request(request_or_None, status, reason)* answers what h11 refused (a head too
    large: 431; anything else malformed: 400) — with the S3 XML error body — before the
    connection closes."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
    receive = _receiver(stream)
    first = True
    while True:
        try:
            event = await _next_head(conn, receive, limits, first)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                bad = _BadRequestSender(conn, stream, limits, peer)
                status = exc.error_status_hint if exc.error_status_hint != 400 else 400
                await _quietly(on_bad_request(bad, status, str(exc)))
            return
        except _Close:
            return
        first = False
        request = HttpRequest(conn, stream, event, limits, peer, receive)
        head = len(event.method) + len(event.target) + 12 + sum(
            len(k) + len(v) + 4 for k, v in event.headers)
        if head > limits.max_head_bytes:
            # h11 bounds a head that arrives in pieces; one that arrived whole in one read is
            # bounded here.
            await _quietly(on_bad_request(request, 431, f"request head of {head} bytes, at "
                                                        f"most {limits.max_head_bytes}"))
            return
        if request.has_header("transfer-encoding") and request.has_header("content-length"):
            # A smuggling attempt or a confused proxy: whichever framing we chose, the other
            # side may have chosen the other one.
            await _quietly(on_bad_request(request, 400,
                                          "both Content-Length and Transfer-Encoding"))
            return
        try:
            await handler(request)
        except ConnectionLost:
            return
        except RequestTimeout:
            return
        if not request.body_done or conn.our_state is not h11.DONE or \
                conn.their_state is not h11.DONE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


class _BadRequestSender(HttpRequest):
    """A stand-in request to answer a head h11 could not parse."""

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream, limits: HttpLimits,
                 peer: str) -> None:
        super().__init__(conn, stream, h11.Request(method="GET", target="/", headers=[
            ("Host", "invalid")]), limits, peer)
        self.method = "ERROR"


async def _quietly(answer: Awaitable[None]) -> None:
    try:
        await answer
    except (ConnectionLost, RequestTimeout, h11.LocalProtocolError):
        pass


def _receiver(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes | bytearray]]:
    """Large TLS reads (every record of a socket read decrypted in one scheduler pass, as the
    native sessions read) once TLS 1.3 is up; TLS 1.2 (which may renegotiate) reads through
    the stream itself."""
    if isinstance(stream, trio.SSLStream) and stream.version() == "TLSv1.3":
        return tls_receiver(stream)
    return stream.receive_some


async def _next_head(conn: h11.Connection,
                     receive: Callable[[int], Awaitable[bytes | bytearray]],
                     limits: HttpLimits, first: bool) -> h11.Request:
    """The next request's head; the idle timeout until its first byte, then the head timeout
    for the whole of it."""
    started = False
    idle_until = trio.current_time() + (limits.head_timeout_s if first else limits.idle_timeout_s)
    head_until = idle_until
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            raise _Close()
        assert event is h11.NEED_DATA, event
        with trio.move_on_at(head_until if started else idle_until):
            try:
                data = await receive(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Close() from None
            if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                raise _Close()  # a clean close between requests
            conn.receive_data(data)  # type: ignore[arg-type]  # h11 appends it to its own
            if not started:
                started = True
                head_until = trio.current_time() + limits.head_timeout_s
            continue
        if started:
            log.info("event=s3_head_timeout reason=slow request head")
        raise _Close()
