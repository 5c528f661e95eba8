"""Many objects in one download (``GetMany``): what a restore or an export reads with.

One request names up to :data:`~hdsd.wire.MAX_GET_MANY` versions; the node answers one
``GetStart`` with each one's version and size, then their bytes back to back, flow-controlled
like a get. A node that predates ``GetMany`` closes the connection with a protocol Goodbye
("unknown frame type"): the client then reads with one get per object, from then on.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .._errors import (
    ConnectionLost,
    HdsdError,
    IntegrityError,
    InvalidArgument,
    ProtocolError,
    Unavailable,
    error_class_for_code,
)
from ..transport import WireSession
from ..wire import MAX_GET_MANY, UNSENT, Data, End, GetMany, GetStart, GotMany, Message
from ._results import queued, raise_for

if TYPE_CHECKING:
    from ._async import AsyncClient

__all__ = ["Fetched", "get_many", "get_to_dir"]

#: An item: ``(bucket, key, version)``, *version* None for the current one.
Item = tuple[str, str, "str | None"]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One item of :meth:`AsyncClient.get_many`, in the order asked: its bytes, or the error
    that refused it (``data`` then empty)."""

    index: int  # its position in the items asked
    bucket: str
    key: str
    version: str  # the version served ("" when refused)
    size: int
    content_hash: str
    data: bytes
    error: HdsdError | None = None
    sha256: str = ""  # asked with sha256: its SHA-256 (hex), and data is empty


def _refused_by_old_node(session: WireSession) -> bool:
    reason = session.closed_reason
    return isinstance(reason, ConnectionLost) and ": protocol: unknown frame type" in str(reason)


async def get_many(client: AsyncClient, items: Sequence[Item], sha256: bool = False
                   ) -> AsyncGenerator[Fetched, None]:
    """Every item's bytes, in order (see :meth:`AsyncClient.get_many`)."""
    done = 0
    failures = 0
    while done < len(items):
        if not client.bulk_reads:
            async with aclosing(_one_by_one(client, items, done, sha256)) as singles:
                async for fetched in singles:
                    yield fetched
            return
        batch = items[done:done + MAX_GET_MANY]
        try:
            async with aclosing(_download(client, batch, done, sha256)) as downloaded:
                async for fetched in downloaded:
                    done += 1
                    yield fetched
        except Unavailable:
            failures += 1
            if failures > client.retries:
                raise
            await trio.sleep(min(0.05 * 4 ** (failures - 1), 2.0))


async def _one_by_one(client: AsyncClient, items: Sequence[Item], start: int,
                      sha256: bool) -> AsyncGenerator[Fetched, None]:
    """The same, one get per item (a node that predates ``GetMany``)."""
    for index in range(start, len(items)):
        bucket, key, version = items[index]
        try:
            async with client.open_get(bucket, key, version=version) as stream:
                pieces = [piece async for piece in stream]
        except HdsdError as exc:
            if isinstance(exc, Unavailable):
                raise
            yield Fetched(index, bucket, key, "", 0, "", b"", exc)
            continue
        info = stream.info
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if sha256:  # hashed here: the node's answer would have been the same digest
            yield Fetched(index, bucket, key, info.version, info.size, info.content_hash, b"",
                          sha256=hashlib.sha256(data).hexdigest())
            continue
        yield Fetched(index, bucket, key, info.version, info.size, info.content_hash, data)


async def _download(client: AsyncClient, batch: Sequence[Item], base: int,
                    sha256: bool) -> AsyncGenerator[Fetched, None]:
    """One ``GetMany`` for *batch* (items ``base``… of the caller's list): yields what it
    served, which may be a prefix of *batch* (the caller asks again for the rest)."""
    async with client._in_flight:
        session = await client._connected()
        request, inbox = session.open_request(
            GetMany(rid=UNSENT, items=[list(item) for item in batch], sha256=sha256))
        rid = request.rid
        complete = False
        try:
            try:
                await session.send(request)
                event = await client._frame(session, rid, inbox)
            except ConnectionLost:
                if _refused_by_old_node(session):
                    client.bulk_reads = False
                    return  # the caller goes on one get at a time
                raise
            if not isinstance(event, GetStart):
                raise_for(event)
                raise AssertionError("unreachable")
            head: GotMany = request.decode_reply(event.info)
            entries = head["items"]
            if not 0 < len(entries) <= len(batch):
                raise ProtocolError(f"the node answered {len(entries)} items of a GetMany "
                                    f"of {len(batch)}")
            cutter = _Cutter(batch, base, entries, sha256)
            ready = cutter.take(b"")  # refused or empty items come before any byte
            while True:
                if cutter.finished:
                    # Everything announced is in: take the End before handing out the last
                    # items, so that a caller that stops there leaves nothing to cancel.
                    event = await _next(client, session, rid, inbox)
                    if not isinstance(event, End):
                        raise_for(event)
                    cutter.end()
                    complete = True
                    for fetched in ready:
                        yield fetched
                    return
                for fetched in ready:
                    yield fetched
                event = await _next(client, session, rid, inbox)
                if isinstance(event, Data):
                    ready = cutter.take(event.data)
                    # Credit once the caller took what the piece completed: a slow reader
                    # slows the node (granted before the items are handed out when they are
                    # the last: no credit is owed past the End).
                    if not cutter.finished:
                        for fetched in ready:
                            yield fetched
                        ready = []
                    await session.consumed(rid, len(event.data))
                elif isinstance(event, End):
                    cutter.end()  # raises: the body ended before what it announced
                else:
                    raise_for(event)
        finally:
            if not complete:
                await session.cancel_abandoned(rid)
            session.close_inbox(rid)


async def _next(client: AsyncClient, session: WireSession, rid: int,
                inbox: trio.MemoryReceiveChannel[Message]) -> Message:
    """The download's next frame, within the client's timeout (``AsyncClient._frame``)."""
    frame = queued(inbox)
    if frame is None:
        frame = await client._frame(session, rid, inbox)
    return frame


class _Cutter:
    """Cuts the download's body into the items it announced (a piece that is exactly one
    item is taken as it came, no copy)."""

    def __init__(self, batch: Sequence[Item], base: int, entries: list[dict[str, object]],
                 sha256: bool = False) -> None:
        self.batch, self.base = batch, base
        self.sha256 = sha256  # digests only: no byte of any item follows
        self.entries = entries
        self.next = 0  # the entry whose bytes come next
        self.parts: list[bytes | memoryview] = []
        self.have = 0

    def _size(self) -> int:
        size = self.entries[self.next].get("size")
        if type(size) is not int or size < 0:
            raise ProtocolError(f"GetMany item {self.next}: size missing or malformed")
        return size

    def _need(self) -> int:
        return 0 if self.sha256 else self._size()

    def _done(self, data: bytes) -> Fetched:
        i = self.next
        entry, (bucket, key, _) = self.entries[i], self.batch[i]
        version, digest = entry.get("version"), entry.get("content_hash")
        if type(version) is not str or type(digest) is not str:
            raise ProtocolError(f"GetMany item {i}: version or content_hash malformed")
        if self.sha256:
            sha, size = entry.get("sha256"), self._size()
            if type(sha) is not str or len(sha) != 64:
                raise ProtocolError(f"GetMany item {i}: sha256 missing or malformed")
            self.next += 1
            return Fetched(self.base + i, bucket, key, version, size, digest, b"", sha256=sha)
        self.next += 1
        return Fetched(self.base + i, bucket, key, version, len(data), digest, data)

    def _refused(self) -> Fetched | None:
        i = self.next
        entry = self.entries[i]
        if "error" not in entry:
            return None
        self.next += 1
        bucket, key, _ = self.batch[i]
        code, message = entry.get("error"), entry.get("message")
        if type(code) is not str or type(message) is not str:
            raise ProtocolError(f"GetMany item {i}: error malformed")
        return Fetched(self.base + i, bucket, key, "", 0, "", b"",
                       error_class_for_code(code)(message))

    def take(self, data: bytes) -> list[Fetched]:
        """The items *data* (the next piece of the body) completes, in order."""
        out: list[Fetched] = []
        view = memoryview(data)
        while self.next < len(self.entries):
            refused = self._refused()
            if refused is not None:
                out.append(refused)
                continue
            need = self._need() - self.have
            if len(view) < need:
                break
            if not self.parts and need == len(view) == len(data):
                out.append(self._done(data))  # the whole piece is this item: no copy
            else:
                self.parts.append(view[:need])
                out.append(self._done(b"".join(self.parts)))
            self.parts, self.have = [], 0
            view = view[need:]
        if view:
            if self.next >= len(self.entries):
                raise IntegrityError("the node sent more bytes than the items it announced")
            self.parts.append(view)  # joined once the item is whole
            self.have += len(view)
        return out

    @property
    def finished(self) -> bool:
        return self.next == len(self.entries)

    def end(self) -> None:
        if self.next != len(self.entries) or self.have:
            raise IntegrityError(f"bulk download ended after {self.next} of "
                                 f"{len(self.entries)} items")


# Objects up to this size are fetched whole in bulk; larger ones are streamed to their file.
_HOLD_MAX = 4 << 20


def _file_of(directory: Path, key: str) -> Path:
    """Where *key* goes under *directory*: its ``/``-separated segments as directories and
    file name. A key that cannot be a path there (an empty, ``.`` or ``..`` segment) is
    refused rather than written elsewhere."""
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"key {key!r} has an empty, '.' or '..' segment: it cannot be "
                              f"a file under {directory} (get it by name, or use hdsd export)")
    return directory.joinpath(*parts)


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HdsdError(f"{path}: cannot make the directory ({exc.strerror or exc})") from None


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.hdsd-partial")
    _make_dirs(path.parent)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HdsdError(f"{path}: cannot write it ({exc.strerror or exc})") from None


async def get_to_dir(client: AsyncClient, bucket: str, prefix: str, directory: Path
                     ) -> tuple[int, int]:
    """The current version of every key of *bucket* under *prefix*, each written to
    ``directory/<key>`` (complete files only: written aside, then renamed), read in bulk
    downloads. Returns ``(files, bytes)``."""
    files = total = 0
    batch: list[tuple[str, str, int]] = []

    async def flush() -> None:
        nonlocal files, total
        small = [(bucket, key, version) for key, version, size in batch if size <= _HOLD_MAX]
        async with aclosing(get_many(client, small)) as fetched:
            for key, version, size in batch:
                path = _file_of(directory, key)
                if size <= _HOLD_MAX:
                    got = await anext(fetched)
                    if got.error is not None:
                        raise got.error
                    await trio.to_thread.run_sync(_write_file, path, got.data)
                else:
                    await trio.to_thread.run_sync(_make_dirs, path.parent)
                    try:
                        await client.get_to_file(bucket, key, path, version=version)
                    except OSError as exc:
                        raise HdsdError(f"{path}: cannot write it ({exc.strerror or exc})") \
                            from None
                files += 1
                total += size
        batch.clear()

    async with aclosing(client.list_all(bucket, prefix)) as listed:
        async for info in listed:
            if info.deleted:
                continue
            _file_of(directory, info.key)  # refused before anything of its batch is written
            batch.append((info.key, info.version, info.size))
            if len(batch) >= MAX_GET_MANY:
                await flush()
    await flush()
    return files, total
