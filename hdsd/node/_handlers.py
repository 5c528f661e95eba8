"""Request handlers of one node: each turns one client request into store operations.

A handler runs as its own task with the request's *inbox* (the events of its rid). It ends by
sending exactly one ``Reply`` or ``ErrorReply`` (gets send ``GetStart``, body, ``End``). Errors
that are the client's or the situation's (:class:`HdsdError`) become ``ErrorReply`` and keep the
connection; anything else is a bug: logged with its traceback, reported as ``internal``.
Two kinds of request have no task of their own: a lone small get is answered by the
connection's reader (:func:`small_get_now`), and small puts read together are answered by one
task for the group, in one replicated write (:func:`put_group`).

The object operations themselves (put, get, stat, list, delete, versions) live in
:mod:`._objects`, shared with the S3 gateway: a handler here authorises, adapts the session (a
put's Data frames as a body source whose stored bytes become credit; a get's frames as a sink)
and replies.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import trio

from .._deadline import deadline
from .._errors import (
    ConnectionLost,
    HdsdError,
    IntegrityError,
    InvalidRequest,
    RequestTimeout,
    Unavailable,
)
from ..audit import ObservedSession, audit_put, audit_request, peer_address
from ..pipeline import open_in_thread
from ..store import Version
from ..transport import Identity, WireSession
from ..wire import (
    Cancel,
    Data,
    DeleteRequest,
    End,
    ErrorReply,
    GetMany,
    GetRequest,
    GetStart,
    LayoutPush,
    ListBucketsRequest,
    ListRequest,
    MaintenanceRequest,
    Message,
    PutStart,
    Reply,
    SiteModeRequest,
    StatRequest,
    StatusRequest,
    VersionsRequest,
)
from ._admin_handlers import ADMIN_ROUTES, CATALOG_PEER_ROUTES
from ._auth import check_bucket, check_key
from ._budget import get_reservation
from ._bulk import get_many
from ._health import cluster_status, tenant_status
from ._metrics import BODY_SIZE
from ._objects import (
    byte_range,
    delete_object,
    list_buckets,
    list_objects,
    object_versions,
    purge_version,
    put_object,
    resolve,
    resolve_now,
    seal_small,
    stream_object,
)
from ._peer_handlers import PEER_ROUTES, layout_push, maintenance, site_mode
from ._roles import check_role
from ._route import Route

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["SmallWrites", "claim_small_put", "handle_request", "put_group", "small_get_now",
           "small_put_now"]

log = logging.getLogger("hdsd.node")

_CHUNKS_IN_FLIGHT = 4


async def handle_request(
    node: Node, session: WireSession, ident: Identity, msg: Message,
    inbox: trio.MemoryReceiveChannel[Message], resolved: Version | None = None,
) -> None:
    """Answer *msg*. *resolved*: a small get's version, already read (see
    :func:`small_get_now`): it is sent in one write, with nothing to await but the socket."""
    rid: int = msg.rid  # type: ignore[attr-defined]
    # The audit hook: every client request (admin ones included) gets one record, written here
    # and nowhere else; node-to-node requests are replication traffic and are not audited.
    observed = None if ident.kind == "node" else ObservedSession(session)
    started = time.perf_counter()
    outcome = "cancelled"
    try:
        route = (NODE_ROUTES if ident.kind == "node" else CLIENT_ROUTES).get(type(msg))
        if route is None:
            raise InvalidRequest(f"{type(msg).__name__} is not a request a {ident.kind} may send")
        if observed is not None:
            # A node that lost its audit log first learns where its chain resumes (see
            # ._continuity); its first record must not be written before.
            if not node.audit_continuity.ready.is_set():  # set: skip wait()'s checkpoint
                await node.audit_continuity.ready.wait()
            if node.audit.failed is not None:
                raise Unavailable(f"the audit log cannot be written ({node.audit.failed}); "
                                  "no request is served untraced")
            session = observed.as_session()
        if ident.kind != "node":
            node.tenancy.check_live(ident.tenant or "")  # a shredded tenant is refused outright
            check_role(node, ident, msg)  # a backup node coordinates no client write
        route.admit(node, ident, msg)  # role, operator, layout: once, for every handler
        if resolved is None:
            await route.handler(node, session, ident, msg, inbox)
        else:
            await _get_small(node, session, msg, resolved)  # type: ignore[arg-type]
        outcome = "ok"
    except HdsdError as exc:
        outcome = exc.code
        await _reply_error(session, rid, exc.code, exc.message)
    except Exception:
        outcome = "internal"
        log.exception("event=request_failed rid=%d op=%s", rid, type(msg).__name__)
        await _reply_error(session, rid, "internal", "internal error on the node; see its log")
    finally:
        node.metrics.request_done(msg, outcome, time.perf_counter() - started)
        session.close_inbox(rid)
        inbox.close()  # not aclose(): its checkpoint would cost every request a scheduler pass
        if observed is not None:
            audit_request(node.audit, ident, msg, observed, outcome, peer_address(session))


async def _reply_error(session: WireSession, rid: int, code: str, message: str) -> None:
    try:
        await session.send(ErrorReply(rid=rid, code=code, message=message))
    except HdsdError:
        pass  # the connection is gone: nobody to tell


# -- put ---------------------------------------------------------------------------------------
async def _put(node: Node, session: WireSession, ident: Identity, msg: PutStart,
               inbox: trio.MemoryReceiveChannel[Message]) -> None:
    source = _WireBody(node, session, msg, inbox)
    version, replayed = await put_object(
        node, ident.tenant or "", msg.bucket, msg.key, source, size=msg.size,
        metadata=msg.metadata, request_id=msg.request_id, retry=msg.retry)
    info = version.public_info()
    await session.send(Reply(rid=msg.rid, body={**info, "replayed": True} if replayed else info))


# -- small puts, in groups ----------------------------------------------------------------------
def small_put_now(node: Node, session: WireSession, ident: Identity, msg: Message) -> bool:
    """Whether a client's put may join the connection's group of small puts (see
    :func:`put_group`) instead of getting a task: its whole body, at most ``inline_max``
    bytes and as long as it declared, was read with its start, and it is a first attempt
    (a retry may have to ask the other site). What may change until the group runs (its
    request id's slot, the key's replicas) is checked then, by :func:`claim_small_put`."""
    if type(msg) is not PutStart or ident.kind == "node" or msg.retry or node.stopping:
        return False
    size = session.whole_upload_size(msg.rid)
    return size is not None and size <= node.config.inline_max and msg.size in (None, size)


def claim_small_put(node: Node, ident: Identity, msg: PutStart,
                    replicas: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
    """The key's replicas, with *msg*'s request id slot taken, when *msg* can be written with
    the group's other puts: in one write, so to the same *replicas* as theirs (None: it is the
    first), with nobody else holding its request id, no earlier attempt of it stored here and
    nobody else in this site to ask. None: it goes the usual way, as a task of its own."""
    tenant = ident.tenant or ""
    mine = node.replicator.replicas_for(tenant, msg.bucket, msg.key)
    if replicas is not None and mine != replicas:
        return None
    if not node.reads.first_request_now(tenant, msg.request_id, mine):
        return None
    if not node.claim_request(tenant, msg.request_id):
        return None
    return mine


class _SmallPut:
    """One put of a group: how it ended (its reply, its outcome, its reply's info for the
    audit record: a small put's body arrives whole, nothing else is sent for it)."""

    __slots__ = ("admitted", "info", "msg", "outcome", "reply", "reserved", "version")

    def __init__(self, msg: PutStart) -> None:
        self.msg = msg
        self.info: dict[str, Any] | None = None
        self.outcome = "cancelled"
        self.reply: Message | None = None
        self.version: Version | None = None
        # Admitted against the quota: the bytes reserved (Tenancy.admit_put_now), or, when
        # that could not decide without waiting, the admission's block (Tenancy.admit_put).
        self.reserved: int | None = None
        self.admitted: AbstractAsyncContextManager[None] | None = None

    def failed(self, code: str, message: str) -> None:
        self.outcome, self.version = code, None
        self.reply = ErrorReply(rid=self.msg.rid, code=code, message=message)

    def stored(self) -> None:
        assert self.version is not None
        self.outcome = "ok"
        self.info = info = self.version.public_info()
        self.reply = Reply(rid=self.msg.rid, body=info)


async def put_group(node: Node, session: WireSession, ident: Identity, puts: list[PutStart],
                    replicas: dict[str, list[str]]) -> None:
    """Answer small puts that arrived together on one connection (each whole with its start,
    each claimed by :func:`claim_small_put`), in this one task: each is checked, authorised
    and sealed as :func:`handle_request` and ``put_object`` would, then all are written in one
    replicated write (one local commit, one ``Replicate``: all or nothing on each replica, as
    puts sharing a ``Replicate`` already were), and answered in one write. Each still gets its
    own refusal, metrics and audit record; the write's failure is each one's. Releases the
    request ids' slots and the connection's held bytes of every put in *puts*."""
    started = time.perf_counter()
    tenant = ident.tenant or ""
    items = [_SmallPut(msg) for msg in puts]
    try:
        try:
            _check_small_puts(node, ident, puts[0])
        except HdsdError as exc:
            for item in items:
                item.failed(exc.code, exc.message)
        except Exception:
            log.exception("event=request_failed rid=%d op=PutStart", puts[0].rid)
            for item in items:
                item.failed("internal", "internal error on the node; see its log")
        for item in items:
            if item.reply is not None:
                continue  # refused above
            try:
                if not _prepare_small_put_now(node, session, tenant, item):
                    await _prepare_small_put(node, session, tenant, item)
            except HdsdError as exc:
                item.failed(exc.code, exc.message)
            except Exception:
                log.exception("event=request_failed rid=%d op=PutStart", item.msg.rid)
                item.failed("internal", "internal error on the node; see its log")
        # The puts ready to be written are those with a version (one list, not two: a
        # refused put has none, and only the write's outcome sets it again).
        versions = [item.version for item in items if item.version is not None]
        if versions:
            try:
                await node.small_writes.write(node, replicas, versions)
            except HdsdError as exc:
                for item in items:
                    if item.version is not None:
                        item.failed(exc.code, exc.message)
            except Exception:
                log.exception("event=request_failed op=PutStart puts=%d", len(versions))
                for item in items:
                    if item.version is not None:
                        item.failed("internal", "internal error on the node; see its log")
            else:
                for item in items:
                    if item.version is not None:
                        item.stored()
        try:
            await session.send_many([item.reply for item in items if item.reply is not None])
        except HdsdError as exc:
            for item in items:
                item.outcome = exc.code if item.outcome == "ok" else item.outcome
    finally:
        seconds = time.perf_counter() - started
        peer = session.peer_address()  # (once for the group: the same connection)
        for item in items:
            msg = item.msg
            if item.reserved is not None:  # admitted against the quota (see admit_put_now)
                node.tenancy.release_put(tenant, item.reserved, item.outcome == "ok")
            elif item.admitted is not None:  # the same, by admit_put's block
                if item.outcome == "ok":
                    await item.admitted.__aexit__(None, None, None)
                else:
                    undone = Unavailable("not stored")
                    await item.admitted.__aexit__(Unavailable, undone, None)
            node.release_request(tenant, msg.request_id)
            session.close_inbox(msg.rid)
            BODY_SIZE.set(item.version.size if item.outcome == "ok" and item.version else None)
            node.metrics.request_done(msg, item.outcome, seconds)
            audit_put(node.audit, ident, msg, item.info, 0, 0, item.outcome, peer)


class _SharedWrite:
    """The versions of the small-put groups that reached their write in the same scheduler
    pass, and the outcome of their one write."""

    __slots__ = ("done", "error", "nbytes", "versions")

    def __init__(self, versions: list[Version], nbytes: int) -> None:
        self.versions = versions
        self.nbytes = nbytes
        self.done = trio.Event()
        self.error: HdsdError | None = None


#: The inline payloads one shared write carries at most (a ``Replicate`` frame holds 1 MiB
#: of records: ``replication._replicator``'s batches stay under it).
_SHARED_BYTES_MAX = 256 << 10


class SmallWrites:
    """Small-put groups of *different connections* that reach their write together (16
    clients, a put each) make one replicated write: the first opens it and yields once, so
    the groups whose puts arrived in the same pass add their versions; then one local commit
    and one ``Replicate`` for all, each group waiting for the outcome. A group alone on the
    node (nobody could join) writes at once. As for puts sharing a ``Replicate`` (see
    ``Replicator._replicate_to``), every version of the write gets its outcome. The write is
    shielded from the cancellation of the group that makes it (its client went away), so one
    connection's end never decides the others' outcome; a write that ends without one all
    the same (an unexpected error) is :class:`Unavailable` — outcome unknown, retried by
    request id — for the groups that waited on it."""

    def __init__(self) -> None:
        self._open: dict[tuple[tuple[str, tuple[str, ...]], ...], _SharedWrite] = {}

    async def write(self, node: Node, replicas: dict[str, list[str]],
                    versions: list[Version]) -> None:
        """*versions* stored on *replicas* under the write policy, hinted where lagging."""
        if node.active_requests <= len(versions):  # nobody else to wait for
            await node.replicator.keep_hints(
                await node.replicator.write(replicas, [], versions), versions)
            return
        nbytes = 0
        for v in versions:  # (a loop, not a generator: a few calls less on every write)
            if v.inline is not None:
                nbytes += len(v.inline)
        # (a list made whole, not a generator resumed per site: ~2 calls less per put)
        key = tuple([(site, tuple(names)) for site, names in replicas.items()])
        shared = self._open.get(key)
        if shared is not None and shared.nbytes + nbytes <= _SHARED_BYTES_MAX:
            shared.versions.extend(versions)
            shared.nbytes += nbytes
            await shared.done.wait()
            if shared.error is not None:
                # A fresh exception per waiter (one raised in many tasks would share, and
                # scramble, its traceback).
                raise type(shared.error)(shared.error.message)
            return
        shared = self._open[key] = _SharedWrite(list(versions), nbytes)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()  # let the others join
        finally:
            if self._open.get(key) is shared:
                del self._open[key]
        try:
            # Shielded: this task belongs to one connection, the write to every group in it.
            # A client that goes away cancels its own requests, never the others' outcome;
            # the replicator bounds the write by its timeout, the hints are a local commit.
            with trio.CancelScope(shield=True):
                await node.replicator.keep_hints(
                    await node.replicator.write(replicas, [], shared.versions),
                    shared.versions)
        except HdsdError as exc:
            shared.error = exc
            raise
        except BaseException:
            shared.error = Unavailable("the write of this put was not completed; its outcome "
                                       "is unknown (retry with the same request id)")
            raise
        finally:
            shared.done.set()


def _check_small_puts(node: Node, ident: Identity, msg: PutStart) -> None:
    """:func:`handle_request`'s checks for the puts of a group, made once: they depend on
    the connection's identity and the request's kind, the same for every put of it."""
    if node.audit.failed is not None:
        raise Unavailable(f"the audit log cannot be written ({node.audit.failed}); "
                          "no request is served untraced")
    node.tenancy.check_live(ident.tenant or "")
    check_role(node, ident, msg)
    CLIENT_ROUTES[PutStart].admit(node, ident, msg)


def _prepare_small_put_now(node: Node, session: WireSession, tenant: str,
                           item: _SmallPut) -> bool:
    """``put_object``'s checks up to the write, then the seal, for one put of a group, when
    nothing needs to be awaited (the usual case; see ``Tenancy.admit_put_now``): its version
    in ``item.version``, or a typed refusal raised. False: :func:`_prepare_small_put` does
    it (nothing was taken yet)."""
    msg = item.msg
    check_bucket(msg.bucket)
    check_key(msg.key)
    item.reserved = node.tenancy.admit_put_now(tenant, msg.bucket, msg.key, msg.size)
    if item.reserved is None:
        return False
    _seal_small_put(node, session, tenant, item)
    return True


async def _prepare_small_put(node: Node, session: WireSession, tenant: str,
                             item: _SmallPut) -> None:
    """:func:`_prepare_small_put_now` when the admission has to wait (a seeded tenant to
    confirm, a usage figure to refresh, a retention to check against the current version)."""
    msg = item.msg
    admitted = node.tenancy.admit_put(node, tenant, msg.bucket, msg.key, msg.size)
    await admitted.__aenter__()
    item.admitted = admitted
    _seal_small_put(node, session, tenant, item)


def _seal_small_put(node: Node, session: WireSession, tenant: str, item: _SmallPut) -> None:
    msg = item.msg
    frames = session.take_whole_upload(msg.rid) or []
    first = frames[0] if frames else None
    if len(frames) == 2 and type(first) is Data:  # one Data frame and the End: its bytes
        body = first.data
    else:
        body = b"".join(f.data for f in frames if type(f) is Data)
    if msg.size is None:
        node.tenancy.check_quota(tenant, len(body))
    item.version = seal_small(node, tenant, msg.bucket, msg.key, body, dict(msg.metadata),
                              msg.request_id)


class _UploadDeadline:
    """An upload's deadline, which only real throughput moves: ``request_timeout_s`` after it
    began, plus the time its received bytes take at ``min_upload_rate_kib_s``. A client that
    trickles a byte now and then (each within the per-event timeout) gains microseconds per
    byte, so it cannot hold the upload — and the request id, and its queued body — open for
    long; a slow but real link still uploads any size."""

    def __init__(self, node: Node) -> None:
        self.deadline = trio.current_time() + node.config.request_timeout_s
        self.per_byte = 1 / (node.config.min_upload_rate_kib_s * 1024)

    def received(self, event: Message) -> Message:
        if isinstance(event, Data):
            self.deadline += len(event.data) * self.per_byte
        return event


async def _next_body_event(node: Node, inbox: trio.MemoryReceiveChannel[Message],
                           deadline: _UploadDeadline | None = None) -> Message:
    timeout = node.config.request_timeout_s
    with trio.move_on_after(timeout) as scope:
        if deadline is not None:
            scope.deadline = min(scope.deadline, deadline.deadline)
        try:
            event = await inbox.receive()
            return event if deadline is None else deadline.received(event)
        except trio.EndOfChannel:
            raise ConnectionLost("connection closed during the upload") from None
    if deadline is not None and trio.current_time() >= deadline.deadline:
        raise RequestTimeout(f"upload slower than {node.config.min_upload_rate_kib_s:g} KiB/s "
                             "past its deadline; nothing was stored")
    raise RequestTimeout(f"no upload data for {timeout:g} s; nothing was stored")


class _WireBody:
    """A native put's body: the Data frames of its rid, credit granted back as they are
    stored (see :class:`hdsd.node._objects.BodySource`)."""

    def __init__(self, node: Node, session: WireSession, msg: PutStart,
                 inbox: trio.MemoryReceiveChannel[Message]) -> None:
        self.node, self.session, self.rid, self.inbox = node, session, msg.rid, inbox
        self.deadline: _UploadDeadline | None = None
        # Events already queued: a small put usually arrives whole (PutStart, Data, End in
        # one write), and the session then kept its body aside instead of opening an inbox.
        whole = session.take_whole_upload(msg.rid)
        self.early: deque[Message] = deque(whole or ())
        while whole is None and (not self.early or
                                 not isinstance(self.early[-1], (End, Cancel))):
            try:
                self.early.append(inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break

    def ready(self) -> bytes | None:
        early = self.early
        if early and isinstance(early[-1], End) and \
                all(isinstance(e, Data) for e in list(early)[:-1]):
            body = b"".join(e.data for e in early if isinstance(e, Data))
            early.clear()
            self.early.append(End(rid=self.rid))
            return body
        return None

    async def read(self) -> bytes:
        if self.deadline is None:
            self.deadline = _UploadDeadline(self.node)
        event = self.deadline.received(self.early.popleft()) if self.early else \
            await _next_body_event(self.node, self.inbox, self.deadline)
        if isinstance(event, End):
            self.early.append(event)  # the end stays the end if asked again
            return b""
        if isinstance(event, Cancel):
            raise InvalidRequest("upload cancelled by the client; nothing was stored")
        if not isinstance(event, Data):
            raise InvalidRequest(f"unexpected {type(event).__name__} during an upload")
        return event.data

    async def consumed(self, n: int) -> None:
        await self.session.consumed(self.rid, n)

    def trailer(self) -> dict[str, str]:
        return {}


# -- get ---------------------------------------------------------------------------------------
async def _get(node: Node, session: WireSession, ident: Identity, msg: GetRequest,
               inbox: trio.MemoryReceiveChannel[Message]) -> None:
    tenant = ident.tenant or ""
    version = await resolve(node, tenant, msg.bucket, msg.key, msg.version)
    await _serve_get(node, session, msg, inbox, version)


#: A get of at most this many bytes, of a version whose payload is in its record, may be
#: answered by the connection's reader itself (:func:`small_get_now`): it never waits for
#: credit, a peer or a worker thread.
_NOW_MAX = 64 << 10


def small_get_now(node: Node, session: WireSession, ident: Identity,
                  msg: Message) -> Version | None:
    """The version a client's get asks for, when the connection's reader may answer it
    itself, without a task of its own (one scheduler pass fewer per get): a small range of
    a version whose sealed payload is in its record, read from this node's store alone (the
    key's only replica in this site), that fits the client's window — so answering it awaits
    nothing but the socket, and never the reader (a download's Credit comes through the
    reader: a get needing it must not run there). None: the usual path (a task) answers."""
    if type(msg) is not GetRequest or ident.kind == "node":
        return None
    version = resolve_now(node, ident.tenant or "", msg.bucket, msg.key, msg.version)
    if version is None or version.inline is None or len(version.inline) >= _NOW_MAX:
        return None
    try:
        lo, hi = byte_range(version.size, msg.start, msg.end)
    except HdsdError:
        return None
    if hi - lo > min(_NOW_MAX, session.conn.download_credit(msg.rid)) or session.unsent:
        return None  # over its window, or the client is slow to read: a task, as any get
    return version


async def _begin_get(node: Node, session: WireSession, msg: GetRequest, version: Version
                     ) -> tuple[int, int, dict[str, Any], list[Message] | None]:
    """A get's range, its body budget taken (released as the request ends), its ``GetStart``
    info, and its frames when it fits one write (:func:`_one_write`; else None: it streams)."""
    lo, hi = byte_range(version.size, msg.start, msg.end)
    BODY_SIZE.set(hi - lo)
    await node.budget.take(id(msg), get_reservation(
        hi - lo, version.chunk_size or node.config.chunk_size))
    info = {**version.public_info(), "start": lo, "end": hi}
    return lo, hi, info, await _one_write(node, session, msg, info, version, lo, hi)


async def _get_small(node: Node, session: WireSession, msg: GetRequest,
                     version: Version) -> None:
    """A get :func:`small_get_now` chose, in the reader: one write, as :func:`_one_write`."""
    _, _, _, whole = await _begin_get(node, session, msg, version)
    if whole is None:  # small_get_now said it fits: streaming here would wait for good
        raise AssertionError("a small get chosen for the reader does not fit one write")
    # No deadline of its own (a cancel scope is ~60 Python calls, a tenth of the node's work
    # for a 4 KiB get), like every small reply (a stat's, a listing's): the reader waits with
    # the write only when the client has stopped reading, and then it would wait before
    # taking the client's next request anyway (the unsent gate of before_open). Nothing else
    # waits for it: nothing of the connection is in flight, and the body budget it holds is
    # its few KiB.
    await session.send_many(whole)


async def _serve_get(node: Node, session: WireSession, msg: GetRequest,
                     inbox: trio.MemoryReceiveChannel[Message], version: Version) -> None:
    tenant = version.tenant
    lo, hi, info, whole = await _begin_get(node, session, msg, version)
    timeout = node.config.request_timeout_s
    stalled = f"client read nothing for {timeout:g} s; download aborted"
    if whole is not None:
        with deadline(timeout, stalled):
            await session.send_many(whole)
        return
    await session.send(GetStart(rid=msg.rid, info=info))
    # One cancel scope for the whole download, its deadline moved on as each chunk has been
    # sent: entering a deadline per chunk was ~40 Python calls per MiB. It covers the
    # read-ahead's waits too (a chunk from the store or from a peer), so an abort says which
    # of the two made no progress for *timeout*: the client or the read.
    scope = trio.CancelScope(deadline=trio.current_time() + timeout)
    sending = False
    sent = 0

    async def sink(piece: memoryview) -> bool:
        nonlocal sending, sent
        sending = True
        if _cancelled(inbox):
            await session.send(Cancel(rid=msg.rid))  # our final: the rid is free
            return False
        await session.send_body(msg.rid, piece)
        sending = False
        sent += piece.nbytes
        scope.deadline = trio.current_time() + timeout
        return True

    with scope:
        done = await stream_object(node, tenant, version, lo, hi, sink)
    if scope.cancelled_caught:
        raise RequestTimeout(stalled if sending else
                             f"the object's bytes from {lo + sent} on were not read within "
                             f"{timeout:g} s (store or replicas too slow); download aborted")
    if done:
        await session.send(End(rid=msg.rid))


_ONE_WRITE_MAX = 1 << 20  # a get body this small may go out in one Data frame


async def _one_write(node: Node, session: WireSession, msg: GetRequest,
                     info: dict[str, Any], version: Version, lo: int, hi: int
                     ) -> list[Message] | None:
    """A range within one chunk (every small object): read it first, so GetStart, the body and
    End go out in one write — one TLS record and one wake-up for the client instead of three.
    None when the range spans chunks or is over one frame or the client's window; the caller
    then streams it."""
    step = version.size if version.inline is not None else (version.chunk_size or version.size)
    if hi > lo and step and (lo // step) != ((hi - 1) // step):
        return None
    if hi - lo > min(_ONE_WRITE_MAX, session.conn.download_credit(msg.rid)):
        return None
    if version.inline is not None:
        # The payload is in the version's record (every object up to inline_max): opened
        # here, without stream_object's plan, reader and sink (~8 of a small get's ~520
        # Python calls on the node).
        plain = await open_in_thread(node.codec(version.tenant), version.chunks[0],
                                     version.inline)
        if len(plain) != version.size:
            raise IntegrityError(f"chunk 0 of {version.bucket}/{version.key} has "
                                 f"{len(plain)} bytes, expected {version.size}")
        data = plain if hi - lo == len(plain) else plain[lo:hi]
    else:
        pieces: list[bytes] = []

        async def collect(piece: memoryview) -> bool:
            # The chunk's own bytes when the range is all of it (a whole object): no copy.
            whole = piece.obj
            pieces.append(whole if type(whole) is bytes and piece.nbytes == len(whole)
                          else bytes(piece))
            return True

        await stream_object(node, version.tenant, version, lo, hi, collect)
        data = b"".join(pieces)
    body: list[Message] = [Data(rid=msg.rid, data=data)] if hi > lo else []
    return [GetStart(rid=msg.rid, info=info), *body, End(rid=msg.rid)]


def _cancelled(inbox: trio.MemoryReceiveChannel[Message]) -> bool:
    try:
        return isinstance(inbox.receive_nowait(), Cancel)
    except (trio.WouldBlock, trio.EndOfChannel):
        return False


# -- metadata requests -------------------------------------------------------------------------
async def _stat(node: Node, session: WireSession, ident: Identity, msg: StatRequest,
                inbox: trio.MemoryReceiveChannel[Message]) -> None:
    version = await resolve(node, ident.tenant or "", msg.bucket, msg.key, msg.version)
    await session.send(Reply(rid=msg.rid, body=version.public_info()))


async def _list(node: Node, session: WireSession, ident: Identity, msg: ListRequest,
                inbox: trio.MemoryReceiveChannel[Message]) -> None:
    entries, cursor = await list_objects(node, ident.tenant or "", msg.bucket, msg.prefix,
                                         msg.after, msg.limit, msg.versions)
    await session.send(Reply(rid=msg.rid, body={"entries": entries, "next": cursor}))


async def _delete(node: Node, session: WireSession, ident: Identity, msg: DeleteRequest,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
    if msg.version is not None:
        purged, record, replayed = await purge_version(node, ident.tenant or "", msg.bucket,
                                                       msg.key, msg.version, msg.request_id,
                                                       retry=msg.retry)
        # "version" is the version purged (what the audit record names); the purge record's
        # own id is given apart.
        await session.send(Reply(rid=msg.rid, body={
            **purged.public_info(), "purge_record": record.version_id, "replayed": replayed}))
        return
    marker, replayed = await delete_object(node, ident.tenant or "", msg.bucket, msg.key,
                                           msg.request_id, retry=msg.retry)
    await session.send(Reply(rid=msg.rid, body={**marker.public_info(), "replayed": replayed}))


async def _versions(node: Node, session: WireSession, ident: Identity, msg: VersionsRequest,
                    inbox: trio.MemoryReceiveChannel[Message]) -> None:
    found = await object_versions(node, ident.tenant or "", msg.bucket, msg.key)
    await session.send(Reply(rid=msg.rid, body={"versions": [v.public_info() for v in found]}))


async def _status(node: Node, session: WireSession, ident: Identity, msg: StatusRequest,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
    if not node.tenancy.is_operator(ident.tenant, ident.role):
        # Addresses, disks and every tenant's figures are the operator's: a tenant sees its own.
        await session.send(Reply(rid=msg.rid, body=await tenant_status(node, ident.tenant or "")))
        return
    # This node and every other one, asked concurrently (a dead node shows as down).
    body = {**node.status(), "nodes": await cluster_status(node)}
    await session.send(Reply(rid=msg.rid, body=body))


async def _list_buckets(node: Node, session: WireSession, ident: Identity,
                        msg: ListBucketsRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    tenant = ident.tenant or ""
    buckets, cursor = await list_buckets(node, tenant, msg.after)
    await session.send(Reply(rid=msg.rid, body={"tenant": tenant, "buckets": buckets,
                                                "next": cursor}))


# The two tables of the node, each built here once from its parts (no module adds to
# another's table): what a client may send, and what another node may send.
CLIENT_ROUTES: dict[type[Message], Route] = {
    PutStart: Route(_put, op="put"),
    GetRequest: Route(_get, op="get"),
    GetMany: Route(get_many, op="get"),
    StatRequest: Route(_stat, op="stat"),
    ListRequest: Route(_list, op="list"),
    DeleteRequest: Route(_delete, op="delete"),
    VersionsRequest: Route(_versions, op="versions"),
    StatusRequest: Route(_status, op="status"),
    SiteModeRequest: Route(site_mode, operator="changes a site's mode"),
    MaintenanceRequest: Route(maintenance, operator="starts a repair or a scrub"),
    LayoutPush: Route(layout_push, operator="changes the cluster layout"),
    ListBucketsRequest: Route(_list_buckets, op="list"),
    **ADMIN_ROUTES,
}
NODE_ROUTES: dict[type[Message], Route] = {**PEER_ROUTES, **CATALOG_PEER_ROUTES}
