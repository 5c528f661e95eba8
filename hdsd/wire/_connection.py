"""The connection state machine: bytes in, typed events out; typed messages in, bytes out.

Theory of operation
===================

A :class:`Connection` is one end of one byte stream, in the role of CLIENT (it sends requests)
or SERVER (it answers them). It does no I/O: the caller feeds received bytes to
:meth:`~Connection.receive_data`, pulls events with :meth:`~Connection.next_event`, and writes
whatever :meth:`~Connection.send` returns. Both directions run through the same rules, so a
peer that breaks them gets a :class:`~hdsd.ProtocolError` and a caller that is about to break
them gets a :class:`LocalProtocolError` (and nothing is sent, nothing changes).

Connection phase. Each side's first frame is its Hello, sent once. Nothing but Hello or
Goodbye may be sent before both Hellos have crossed (a put needs the peer's window, and one
round trip per connection is cheap); a peer frame that needs our Hello before we sent it is a
violation. Goodbye may come at any time, even first; after it the sender sends nothing more
and closes. After a receive-side ProtocolError only a Goodbye may still be sent.

Requests. The client opens a request by sending an opening message carrying a ``rid`` that is
not in flight (PutStart opens an *upload*, GetRequest a *download*, the others are plain
requests). A rid has two halves, one per sender, each moved only by frames its own sender
sends. Because each direction of the stream is ordered, a half never goes backwards and
crossing frames can only make one side's view *lag*, never contradict:

* the client half (:data:`CLIENT_MOVES`): an upload is UPLOADING until End (SENT) or Cancel
  (ABORTED); a download is RECEIVING (the client may grant Credit) until Cancel; a plain
  request is SENT at once and may still be Cancelled (CANCELLED).
* the server half (:data:`SERVER_MOVES`): it ends (DONE) with the server's *final* frame —
  Reply, ErrorReply, Cancel, or End of a download. Reply to an upload needs the whole body
  first (:data:`SERVER_GUARDS`); a download goes OPENING → (GetStart) STREAMING → End.

A rid is free again once the server half is DONE and the client is not UPLOADING. Both sides
reach that point in the same order of frames, so a client may reuse a rid as soon as its
Connection forgot it: the server forgot it before.

Body streams and credit. Each rid has at most one body stream (the upload or the download).
Its sender starts with the *receiver's* ``Hello.window`` bytes of credit; each Data spends
``len(data)``; each Credit from the receiver adds ``amount``. Both ends keep the same counter;
the sender's copy can only be lower (Credits in flight towards it, Data in flight away), so a
sender that respects its own copy never trips the receiver. Data beyond credit is refused.

Crossings the protocol tolerates (and the receiving Connection swallows, so the caller never
sees a frame for a request it has finished with):

* the server's final while the upload is open (e.g. ErrorReply ``not_found`` after
  PutStart): the upload stays open on both sides until the client's End or Cancel; the server
  drops the Data still arriving, *within the credit it had granted* — so the drain is bounded
  — and forgets the rid at that End/Cancel. The client may still send Data within its credit
  (it may not have seen the final yet), but has nothing to gain: it should Cancel.
* after the client's Cancel, the server's non-final frames still in flight (GetStart, Data
  within credit, Credit) are dropped by the client; the server's final is delivered, because
  it is the signal that the rid is free (and a Reply tells the put did happen after all).
  The server, on receiving Cancel, must still end its half with a final (Cancel is usual).
* Credit or Cancel from the client for a rid the server does not know is dropped: it was sent
  before the client saw the server's final.

Everything else outside the tables is a violation. Buffering: received bytes wait in one
bytearray (see ``_frames``); once :meth:`~Connection.next_event` returns NeedData, less than
one header plus one maximum frame is held, and an oversized length is refused from its header.

What the driver (the trio glue) must do
---------------------------------------
* Read (at most a modest chunk, e.g. 64 KiB) only after ``next_event`` returned NeedData.
* On ProtocolError: send ``Goodbye.from_exception(exc)`` if the stream still works, then close.
* Send Data only up to ``send_credit_available(rid)``; wake the writer of a rid on each Credit
  event. Grant Credit as the application consumes a stream (not on receipt), so credit is the
  end-to-end backpressure. That races with the stream's end, so a Credit for a stream that is
  over (rid forgotten, body ended or cancelled, final sent) is not an error: ``send`` returns
  ``b""`` and records nothing.
* Client: on an ErrorReply/Cancel while its put body is open, send Cancel (or End) to free the
  rid; pick a new rid only among those ``in_flight`` says are free.
* Server: on a Cancel event, stop the work and send a final (Cancel) unless one was sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from .._errors import InvalidRequest, ProtocolError
from . import _constants as C
from ._errors import LocalProtocolError
from ._frames import (
    FrameReader,
    Piece,
    SplitData,
    encode_bulk_frame_pieces,
    encode_data_frame_pieces,
    encode_frame,
    encode_upload_end,
)
from ._messages import Credit, Data, End, Hello, Kind, Message
from ._registry import bulk_values, decode_body, encode_body, message_type

__all__ = [
    "CLIENT_MOVES",
    "LATE_CLIENT_KINDS",
    "OPENERS",
    "SENDERS",
    "SERVER_GUARDS",
    "SERVER_MOVES",
    "ClientHalf",
    "Connection",
    "ConnectionClosed",
    "Event",
    "NeedData",
    "Role",
    "ServerHalf",
]


class Role(enum.Enum):
    __hash__ = object.__hash__  # see Kind

    CLIENT = "client"
    SERVER = "server"


@final  # events are told apart by their exact type (WireSession.run_reader)
@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete frame yet: feed more bytes with ``receive_data``."""


@final
@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end (EOF after whole frames). Requests still in flight are lost."""


Event = Message | NeedData | ConnectionClosed
_NEED_DATA: Final = NeedData()
_CLOSED: Final = ConnectionClosed()


class ClientHalf(enum.Enum):
    __hash__ = object.__hash__  # see Kind

    UPLOADING = "uploading"  # put body open
    SENT = "sent"  # request complete (put: End sent)
    RECEIVING = "receiving"  # get sent; may grant Credit for the download
    CANCELLED = "cancelled"  # cancelled after the request was complete
    ABORTED = "aborted"  # cancelled in the middle of the put body


class ServerHalf(enum.Enum):
    __hash__ = object.__hash__  # see Kind

    ANSWERING = "answering"  # plain request: Reply, ErrorReply or Cancel to come
    ACCEPTING = "accepting"  # upload: may grant Credit; Reply once the body is complete
    OPENING = "opening"  # download: GetStart or a failure to come
    STREAMING = "streaming"  # download: Data until End
    DONE = "done"  # the server's final frame was sent


_K = Kind
_new = object.__new__
_set = object.__setattr__  # a frozen dataclass's own way to set its fields
# Connection.next_upload_end builds these two field by field.
assert Data.__match_args__ == ("rid", "data") and End.__match_args__ == ("rid",)


def _data_of(split: SplitData) -> Data:
    """The ``Data`` message of a large frame the reader cut up itself (its fields checked as
    ``decode_body`` checks them)."""
    try:
        return Data(rid=split.rid, data=split.data)
    except InvalidRequest as exc:
        raise ProtocolError(f"malformed Data: {exc}") from None
_CH = ClientHalf
_SH = ServerHalf

#: Which role may send each kind of message.
SENDERS: Final[dict[Kind, frozenset[Role]]] = {
    **{k: frozenset({Role.CLIENT, Role.SERVER})
       for k in (_K.HELLO, _K.GOODBYE, _K.DATA, _K.END, _K.CREDIT, _K.CANCEL)},
    **{k: frozenset({Role.CLIENT}) for k in (_K.REQUEST, _K.UPLOAD, _K.DOWNLOAD)},
    **{k: frozenset({Role.SERVER}) for k in (_K.BODY_START, _K.REPLY, _K.ERROR_REPLY)},
}

#: Opening kinds → the halves a new rid starts in, and which role receives its body stream.
OPENERS: Final[dict[Kind, tuple[ClientHalf, ServerHalf, Role | None]]] = {
    _K.REQUEST: (_CH.SENT, _SH.ANSWERING, None),
    _K.UPLOAD: (_CH.UPLOADING, _SH.ACCEPTING, Role.SERVER),
    _K.DOWNLOAD: (_CH.RECEIVING, _SH.OPENING, Role.CLIENT),
}

#: Frames the client sends on an open rid: (client half, kind) → next client half.
CLIENT_MOVES: Final[dict[tuple[ClientHalf, Kind], ClientHalf]] = {
    (_CH.UPLOADING, _K.DATA): _CH.UPLOADING,
    (_CH.UPLOADING, _K.END): _CH.SENT,
    (_CH.UPLOADING, _K.CANCEL): _CH.ABORTED,
    (_CH.SENT, _K.CANCEL): _CH.CANCELLED,
    (_CH.RECEIVING, _K.CREDIT): _CH.RECEIVING,
    (_CH.RECEIVING, _K.CANCEL): _CH.CANCELLED,
}

#: Frames the server sends on an open rid: (server half, kind) → next server half.
SERVER_MOVES: Final[dict[tuple[ServerHalf, Kind], ServerHalf]] = {
    (_SH.ANSWERING, _K.REPLY): _SH.DONE,
    (_SH.ANSWERING, _K.ERROR_REPLY): _SH.DONE,
    (_SH.ANSWERING, _K.CANCEL): _SH.DONE,
    (_SH.ACCEPTING, _K.CREDIT): _SH.ACCEPTING,
    (_SH.ACCEPTING, _K.REPLY): _SH.DONE,
    (_SH.ACCEPTING, _K.ERROR_REPLY): _SH.DONE,
    (_SH.ACCEPTING, _K.CANCEL): _SH.DONE,
    (_SH.OPENING, _K.BODY_START): _SH.STREAMING,
    (_SH.OPENING, _K.ERROR_REPLY): _SH.DONE,
    (_SH.OPENING, _K.CANCEL): _SH.DONE,
    (_SH.STREAMING, _K.DATA): _SH.STREAMING,
    (_SH.STREAMING, _K.END): _SH.DONE,
    (_SH.STREAMING, _K.ERROR_REPLY): _SH.DONE,
    (_SH.STREAMING, _K.CANCEL): _SH.DONE,
}

#: Server moves that also need the client half in one of these states (a put is acknowledged
#: only once its whole body arrived).
SERVER_GUARDS: Final[dict[tuple[ServerHalf, Kind], frozenset[ClientHalf]]] = {
    (_SH.ACCEPTING, _K.REPLY): frozenset({_CH.SENT, _CH.CANCELLED}),
}

#: Client frames the server drops when the rid is unknown (sent before the final crossed).
LATE_CLIENT_KINDS: Final = frozenset({_K.CREDIT, _K.CANCEL})
#: Client halves after a Cancel: the client then drops the server's non-final frames.
_GAVE_UP: Final = frozenset({_CH.CANCELLED, _CH.ABORTED})

assert set(SENDERS) == set(Kind)
assert all(k in OPENERS for k in (_K.REQUEST, _K.UPLOAD, _K.DOWNLOAD))


@dataclass(slots=True)
class _Rid:
    kind: Kind
    client: ClientHalf
    server: ServerHalf
    credit: int  # body bytes the stream's sender may still send (see the theory above)


class Connection:
    """One end of a wire connection, as CLIENT or SERVER (see the module docstring).

    ``max_frame`` bounds the body of every frame in both directions; ``initial_window`` is the
    credit each incoming body stream starts with, and must be the ``window`` of the Hello this
    end sends.
    """

    def __init__(
        self, role: Role, *, max_frame: int = C.MAX_FRAME, initial_window: int = C.DEFAULT_WINDOW
    ) -> None:
        if not C.MIN_MAX_FRAME <= max_frame <= C.MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be in [{C.MIN_MAX_FRAME}, {C.MAX_FRAME_LIMIT}]")
        if not 0 <= initial_window <= C.MAX_WINDOW:
            raise ValueError(f"initial_window must be in [0, {C.MAX_WINDOW}]")
        self.role: Final = role
        self.max_frame: Final = max_frame
        self.initial_window: Final = initial_window
        self._peer_role: Final = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self._reader = FrameReader(max_frame)
        self._rids: dict[int, _Rid] = {}
        self._sent_hello = False
        self._sent_goodbye = False
        self._their_hello: Hello | None = None
        self._our_hello: Hello | None = None
        self._their_goodbye = False
        self._eof = False
        self._error: ProtocolError | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def their_hello(self) -> Hello | None:
        """The peer's Hello once received (its window, cluster id and name)."""
        return self._their_hello

    @property
    def features(self) -> frozenset[str]:
        """The wire features both Hellos announced: what this connection may use beyond
        protocol version 1 (empty until both Hellos have crossed)."""
        if self._our_hello is None or self._their_hello is None:
            return frozenset()
        return frozenset(self._our_hello.features) & frozenset(self._their_hello.features)

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as events."""
        return self._reader.buffered

    def in_flight(self, rid: int) -> bool:
        """Whether *rid* is still in use on this connection (not yet free for a new request)."""
        return rid in self._rids

    @property
    def requests_in_flight(self) -> int:
        """Rids in use on this connection (a request's rid is freed once it is over)."""
        return len(self._rids)

    def send_credit_available(self, rid: int) -> int:
        """Body bytes we may still send on *rid* now (0 if we have no open stream on it)."""
        rec = self._rids.get(rid)
        if rec is None or self._sent_goodbye:
            return 0
        if self.role is Role.CLIENT:
            return rec.credit if rec.client is _CH.UPLOADING else 0
        return rec.credit if rec.server is _SH.STREAMING else 0

    def download_credit(self, rid: int) -> int:
        """Body bytes the server may send on download *rid* once it has sent its start: the
        credit now, also before ``GetStart`` (when :meth:`send_credit_available` is still 0,
        as Data may not come first), so a small body can be put in the start's own write."""
        rec = self._rids.get(rid)
        if rec is None or self._sent_goodbye or self.role is not Role.SERVER:
            return 0
        return rec.credit if rec.server in (_SH.OPENING, _SH.STREAMING) else 0

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the peer; ``b""`` means EOF. Call :meth:`next_event`
        until it returns NeedData before handing over more, so buffering stays bounded."""
        if self._eof:
            raise LocalProtocolError("receive_data called after EOF")
        if not data:
            self._eof = True
        elif self._error is None:
            self._reader.feed(data)

    def receive_pieces(self, pieces: list[bytes]) -> None:
        """:meth:`receive_data` of each of *pieces* (not empty) in order, in one call: a
        session hands over a socket read's TLS records, 16 of them per 256 KiB."""
        if self._eof:
            raise LocalProtocolError("receive_pieces called after EOF")
        if self._error is None:
            self._reader.feed_pieces(pieces)

    def next_event(self) -> Event:
        """The next message from the peer, NeedData, or ConnectionClosed at a clean EOF.

        Raises :class:`~hdsd.ProtocolError` if the peer broke the protocol; the connection is
        then dead (every later call raises the same error) and only a Goodbye may be sent.
        """
        if self._error is not None:
            raise self._error
        try:
            while True:
                frame = self._reader.next_frame()
                if frame is None:
                    if not self._eof:
                        return _NEED_DATA
                    if self._reader.buffered:
                        raise ProtocolError("connection closed in the middle of a frame")
                    return _CLOSED
                code, body = frame
                msg: Message
                if isinstance(body, SplitData):
                    msg, kind = _data_of(body), _K.DATA
                else:
                    msg, kind = decode_body(code, body)
                if self._apply(self._peer_role, msg, kind, ProtocolError):
                    return msg
        except ProtocolError as exc:
            self._error = exc
            raise

    def next_upload_end(self, rid: int) -> tuple[Data, End] | None:
        """The next two events at once, if they are the ``Data`` and the ``End`` that finish
        upload *rid* — the body whole in one frame, both already received — else None, and
        nothing was read: then :meth:`next_event` reads them one by one, as it would have
        anyway. A small put's three frames come in one write; the server calls this once
        :meth:`next_event` returned its start, and reads the body and End in one pass instead
        of two frames each cut, decoded, checked and recorded on their own (~35 of the
        coordinator's ~1,150 Python calls per lone put).

        The same events and the same state after as those two calls of :meth:`next_event`,
        whenever it applies: it applies only where they deliver both and refuse neither — a
        server, no error and no Goodbye from the peer, the upload open on both halves, the
        frames intact and the body within the upload's credit. Everything else, valid or
        not, is left to :meth:`next_event`, which refuses it in its own words."""
        rec = self._rids.get(rid)
        if (rec is None or rec.client is not _CH.UPLOADING or rec.server is not _SH.ACCEPTING
                or self.role is not Role.SERVER or self._error is not None
                or self._their_goodbye):
            return None
        data = self._reader.next_upload_end(rid, rec.credit)
        if data is None:
            return None
        # Data then End, as _rid_frame records them: the credit spent, the body complete
        # (the rid stays in flight until the server's final).
        rec.client = _CH.SENT
        rec.credit -= len(data)
        # Their fields are checked already (the rid is this upload's, the payload bytes):
        # built as Request.with_rid builds a copy, not through __post_init__ again, which
        # took ~40 % of this read (5.7 k of 13.7 k instructions for the two messages).
        msg, end = _new(Data), _new(End)
        _set(msg, "rid", rid)
        _set(msg, "data", data)
        _set(end, "rid", rid)
        return msg, end

    def send(self, msg: Message) -> bytes:
        """The bytes that carry *msg*; raises :class:`LocalProtocolError` (sending nothing and
        changing nothing) if sending it now would break the protocol."""
        pieces = self.send_pieces(msg)
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def send_pieces(self, msg: Message) -> tuple[Piece, ...]:
        """:meth:`send`'s bytes as the pieces to write one after the other (empty: nothing
        to send): a large payload — a Data frame's body, a Replicate's chunks — is one of
        them, not copied into a frame."""
        try:
            kind = message_type(msg).kind
        except KeyError:
            raise LocalProtocolError(f"{type(msg).__name__} is not a registered message") from None
        pieces: tuple[Piece, ...]
        if kind is _K.DATA:
            # Body bytes (gets, puts): the payload not copied.
            assert isinstance(msg, Data)
            pieces = encode_data_frame_pieces(C.T_DATA, msg.rid, msg.data, self.max_frame)
        elif (bulk := bulk_values(msg)) is not None:
            # Chunk payloads (a Replicate of a megabyte chunk): not copied either.
            pieces = encode_bulk_frame_pieces(*bulk, self.max_frame)
        else:
            try:
                code, body = encode_body(msg)
            except (TypeError, ValueError, OverflowError) as exc:
                # Free-form maps (Reply.body, GetStart.info) may hold what msgpack cannot carry.
                raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None
            pieces = (encode_frame(code, body, self.max_frame),)
        if self._error is not None and kind is not _K.GOODBYE:
            raise LocalProtocolError("the peer broke the protocol: only a Goodbye may be sent")
        if kind is _K.CREDIT and self._credit_is_moot(msg):
            return ()
        self._apply(self.role, msg, kind, LocalProtocolError)
        return pieces

    def send_upload(self, start: Message, data: bytes) -> tuple[Piece, ...]:
        """The pieces of a whole upload: :meth:`send_pieces` of *start* (an upload's opener),
        of ``Data(start.rid, data)`` unless *data* is empty, and of ``End(start.rid)`` — the
        same bytes, leaving the same state, as those sends one after the other, in one pass (a
        small put is one write: its three frames each looked up, encoded, checked and recorded
        on their own were ~35 Python calls of the client's ~400 per put).

        All or nothing: if one of the frames would be refused, raises what its send raises
        (:class:`LocalProtocolError`) and nothing is sent, nothing changes."""
        try:
            kind = message_type(start).kind
        except KeyError:
            kind = None
        if kind is not _K.UPLOAD:
            raise LocalProtocolError(f"{type(start).__name__} does not open an upload")
        hello = self._their_hello
        if (self.role is Role.CLIENT and self._error is None and not self._sent_goodbye
                and self._sent_hello and hello is not None and len(data) <= hello.window
                and type(data) is bytes):
            rid: int = start.rid  # type: ignore[attr-defined]  # an opener has one
            if rid not in self._rids:
                # The checks _apply makes of each frame, made once: a client that said and
                # heard Hello, no Goodbye sent, a rid not in flight, a body within the credit
                # a new upload starts with. What is left to refuse is an encoding.
                try:
                    code, body = encode_body(start)
                except (TypeError, ValueError, OverflowError):
                    pass  # refused below, worded as send_pieces words it
                else:
                    frame = encode_frame(code, body, self.max_frame)
                    head, end = encode_upload_end(rid, data, self.max_frame)
                    self._rids[rid] = _Rid(_K.UPLOAD, _CH.SENT, _SH.ACCEPTING,
                                           hello.window - len(data))
                    return (frame + head, data, end) if data else (frame + end,)
        # One of them is refused (or the body is not bytes): the sends one by one say which
        # and why, then what the opener recorded is undone (its rid was not in flight).
        pieces = self.send_pieces(start)
        rid = start.rid  # type: ignore[attr-defined]
        try:
            if data:
                pieces += self.send_pieces(Data(rid=rid, data=data))
            pieces += self.send_pieces(End(rid=rid))
        except BaseException:
            del self._rids[rid]
            raise
        return pieces

    # -- the rules ----------------------------------------------------------------------------

    def _apply(
        self, sender: Role, msg: Message, kind: Kind, fail: type[ProtocolError]
    ) -> bool:
        """Check *msg* sent by *sender* against the rules and record it; return whether the
        receiver should see it. Raises *fail* before changing anything."""
        if sender not in SENDERS[kind]:
            raise fail(f"a {sender.value} may not send {type(msg).__name__}")
        ours = sender is self.role
        if (self._sent_goodbye if ours else self._their_goodbye):
            raise fail(f"{type(msg).__name__} after Goodbye")
        if kind is _K.GOODBYE:
            if ours:
                self._sent_goodbye = True
            else:
                self._their_goodbye = True
            return True
        if kind is _K.HELLO:
            return self._hello(msg, ours, fail)
        if self._their_hello is None or not self._sent_hello:
            raise fail(f"{type(msg).__name__} before both Hellos were exchanged")
        return self._rid_frame(sender, msg, kind, fail)

    def _hello(self, msg: Message, ours: bool, fail: type[ProtocolError]) -> bool:
        assert isinstance(msg, Hello)
        if msg.protocol_version not in C.SUPPORTED_VERSIONS:
            raise fail(f"unsupported protocol version {msg.protocol_version}")
        if ours:
            if self._sent_hello:
                raise fail("Hello sent twice")
            if msg.window != self.initial_window:
                raise fail(f"Hello.window {msg.window} differs from initial_window "
                           f"{self.initial_window}, which incoming streams are held to")
            self._sent_hello = True
            self._our_hello = msg
        else:
            if self._their_hello is not None:
                raise fail("Hello received twice")
            self._their_hello = msg
        return True

    def _rid_frame(self, sender: Role, msg: Message, kind: Kind, fail: type[ProtocolError]) -> bool:
        rid: int = msg.rid  # type: ignore[attr-defined]  # every rid-kind has it (asserted)
        rec = self._rids.get(rid)
        opener = OPENERS.get(kind)
        if opener is not None:
            if rec is not None:
                raise fail(f"rid {rid} is already in flight")
            client_half, server_half, stream_receiver = opener
            credit = 0
            if stream_receiver is self.role:
                credit = self.initial_window
            elif stream_receiver is not None:
                assert self._their_hello is not None
                credit = self._their_hello.window
            self._rids[rid] = _Rid(kind, client_half, server_half, credit)
            return True
        if rec is None:
            # Sent before the server's final crossed it: harmless, nothing to update.
            if self.role is Role.SERVER and sender is Role.CLIENT and kind in LATE_CLIENT_KINDS:
                return False
            raise fail(f"{type(msg).__name__} for rid {rid}, which is not in flight")

        if sender is Role.CLIENT:
            new_client = CLIENT_MOVES.get((rec.client, kind))
            if new_client is None:
                raise fail(self._bad_move(msg, rid, rec, rec.client.value))
            new_server = rec.server
            # After the server's final only the bounded drain remains: swallow it.
            deliver = rec.server is not _SH.DONE
        else:
            moved = SERVER_MOVES.get((rec.server, kind))
            if moved is None:
                raise fail(self._bad_move(msg, rid, rec, rec.server.value))
            new_server = moved
            guard = SERVER_GUARDS.get((rec.server, kind))
            if guard is not None and rec.client not in guard:
                raise fail(f"{type(msg).__name__} for rid {rid} before the whole body arrived")
            new_client = rec.client
            # After the client's Cancel only the server's final still matters to it.
            deliver = rec.client not in _GAVE_UP or new_server is _SH.DONE
            if kind is _K.CREDIT and rec.client is not _CH.UPLOADING:
                deliver = False  # the upload ended already: nothing left to unblock

        credit = rec.credit
        if kind is _K.DATA:
            assert isinstance(msg, Data)
            if len(msg.data) > credit:
                raise fail(f"Data of {len(msg.data)} bytes on rid {rid} exceeds the "
                           f"{credit} bytes of credit left")
            credit -= len(msg.data)
        elif kind is _K.CREDIT:
            assert isinstance(msg, Credit)
            credit += msg.amount
            if credit > C.MAX_OUTSTANDING_CREDIT:
                raise fail(f"credit on rid {rid} would exceed {C.MAX_OUTSTANDING_CREDIT} bytes")

        rec.client, rec.server, rec.credit = new_client, new_server, credit
        if new_server is _SH.DONE and new_client is not _CH.UPLOADING:
            del self._rids[rid]
        return deliver

    def _credit_is_moot(self, msg: Message) -> bool:
        # Credit is granted as the application *consumes* a stream, which races with the
        # stream's end: granting for a stream that is over is pointless but not a bug.
        if not self._sent_hello or self._their_hello is None or self._sent_goodbye:
            return False  # let the phase rules speak
        rec = self._rids.get(msg.rid)  # type: ignore[attr-defined]
        if rec is None:
            return True
        if self.role is Role.CLIENT:
            return rec.kind is _K.DOWNLOAD and rec.client in _GAVE_UP
        return rec.kind is _K.UPLOAD and (
            rec.server is _SH.DONE or rec.client is not _CH.UPLOADING
        )

    @staticmethod
    def _bad_move(msg: Message, rid: int, rec: _Rid, state: str) -> str:
        return (f"{type(msg).__name__} not allowed on rid {rid} "
                f"({rec.kind.value} request, sender's side {state})")
