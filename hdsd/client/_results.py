"""What the client hands back: object descriptions, listing pages, download streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .._errors import (
    ConnectionLost,
    IntegrityError,
    ProtocolError,
    error_class_for_code,
)
from ..transport import WireSession
from ..wire import Data, End, ErrorReply, Message, VersionInfo

__all__ = ["GetStream", "Inbox", "ListPage", "ObjectInfo", "raise_for", "receive"]


class Inbox(Protocol):
    """Where a download's frames arrive: a memory channel's receiving end (``GetMany``) or
    the session's lighter :class:`~hdsd.transport.ReplySlot` (a get)."""

    async def receive(self) -> Message: ...

    def receive_nowait(self) -> Message: ...


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    version: str
    hlc: int
    node: str
    size: int
    content_hash: str
    deleted: bool
    metadata: dict[str, str] = field(default_factory=dict)
    replayed: bool = False

    @classmethod
    def from_body(cls, body: VersionInfo) -> ObjectInfo:
        try:
            return cls(bucket=body["bucket"], key=body["key"], version=body["version"],
                       hlc=body["hlc"], node=body["node"], size=body["size"],
                       content_hash=body["content_hash"], deleted=body["deleted"],
                       metadata=dict(body.get("metadata", {})),
                       replayed=bool(body.get("replayed", False)))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed object description from the node: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class ListPage:
    entries: list[ObjectInfo]
    next: str | None  # pass as ``after`` for the next page; None on the last page


class GetStream:
    """The body of a get: ``info`` first, then ``async for piece in stream``.

    *answer* waits for the request's next frame within the client's timeout (the client's
    ``_frame``: its one deadline task keeps the deadline, not a cancel scope per frame)."""

    def __init__(self, session: WireSession, rid: int, info: ObjectInfo, start: int, end: int,
                 inbox: Inbox, answer: Callable[[], Awaitable[Message]]) -> None:
        self.info = info
        self.start = start
        self.end = end
        self._session = session
        self._rid = rid
        self._inbox = inbox
        self._answer = answer
        self.received = 0
        self.complete = False
        self._unconsumed = 0  # the last piece given out, granted back at the next call

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while (piece := await self.next_piece()) is not None:
            yield piece

    async def next_piece(self) -> bytes | None:
        """The next piece of the body; None once it is complete. The previous piece is
        granted back to the node first: credit only once the caller processed a piece, so a
        slow reader slows the node."""
        if self._unconsumed:
            n, self._unconsumed = self._unconsumed, 0
            await self._session.consumed(self._rid, n)
        while not self.complete:
            await trio.lowlevel.checkpoint_if_cancelled()
            event = queued(self._inbox)
            if event is None:
                event = await self._answer()
            if isinstance(event, Data):
                self.received += len(event.data)
                if self.received > self.end - self.start:
                    raise IntegrityError("the node sent more bytes than the object holds")
                self._unconsumed = len(event.data)
                return event.data
            if isinstance(event, End):
                if self.received != self.end - self.start:
                    raise IntegrityError(f"download ended after {self.received} of "
                                         f"{self.end - self.start} bytes")
                self.complete = True
            else:
                raise_for(event)
        return None

    async def finish(self) -> None:
        """The request is over for this side: an incomplete download is cancelled (the node
        stops sending), and its rid released."""
        if not self.complete:
            await self._session.cancel_abandoned(self._rid)
        self._session.close_inbox(self._rid)


async def receive(inbox: Inbox) -> Message:
    """The next frame of a request (the caller owns the deadline: ``AsyncClient._frame``)."""
    try:
        return await inbox.receive()
    except trio.EndOfChannel:
        raise ConnectionLost("connection to the node lost during the request") from None


def queued(inbox: Inbox) -> Message | None:
    """The request's next frame if it is already there, else None: taken without a schedule
    point or a cancel scope (a memory channel's ``receive`` passes through the scheduler even
    when a frame is ready). A small get's Data and End arrive with its GetStart, in one read."""
    try:
        return inbox.receive_nowait()
    except trio.WouldBlock:
        return None
    except trio.EndOfChannel:
        raise ConnectionLost("connection to the node lost during the request") from None


def raise_for(event: Message) -> None:
    if isinstance(event, ErrorReply):
        raise error_class_for_code(event.code)(event.message)
    raise ProtocolError(f"unexpected {type(event).__name__} from the node")
