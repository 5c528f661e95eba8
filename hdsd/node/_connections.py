"""The serving of a node's connections: client and peer sessions, from the TLS handshake to
their end.

:class:`Connections` (one per :class:`~._server.Node`, which holds the state it reads and
counts) accepts on the node's listeners and runs, per connection: the handshake (TLS, the
certificate's identity, the Hellos) within its slot (:mod:`._slots`), then the session — one
reader task (the :class:`WireSession`) and one task per in-flight request (:mod:`._handlers`),
with the bounds on what a connection may hold back (requests in flight, body bytes, unsent
replies, the node's room: :mod:`._room`, :mod:`._budget`), small puts read together run as a
group (``_run_put_group``), a peer's Replicates acknowledged in order (``_ack_replicates``),
idle client sessions closed. Whatever one connection or request does ends it, logged once,
and never the node (``contain``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING

import trio

from .._deadline import deadline
from .._errors import (
    AuthenticationFailed,
    CertificateRevoked,
    HdsdError,
    ProtocolError,
    Unavailable,
)
from .._groups import contain
from ..store import Bell, CommitTicket, Version
from ..transport import Identity, WireSession, handshake_and_identify
from ..wire import (
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    FetchChunks,
    GetMany,
    GetRequest,
    Goodbye,
    Hello,
    Message,
    PutStart,
    Replicate,
    Reply,
    Role,
)
from ._budget import put_reservation
from ._handlers import (
    claim_small_put,
    handle_request,
    put_group,
    small_get_now,
    small_put_now,
)
from ._peer_handlers import replicate_now
from ._slots import SlotsFull

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["Connections"]

log = logging.getLogger("hdsd.node")

# How long a new request may wait for room (per connection or node-wide) before it is refused
# as unavailable: long enough to smooth a burst, short enough that the frames queued behind it
# (a download's Credit, an upload's Data) are never held for long.
_ROOM_WAIT_S = 1.0


class Connections:
    """The serving of *node*'s connections (:meth:`serve`); the state stays the node's."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    async def serve(self, listeners: list[trio.SSLListener[trio.SocketStream]],
                    task_status: trio.TaskStatus[Node]) -> None:
        """Serve *listeners* until the node stops accepting (``Node.shutdown``), then give the
        requests in flight up to ``shutdown_grace_s`` before closing the connections.
        ``task_status.started(node)`` once listening."""
        node = self.node
        async with trio.open_nursery() as connections:
            task_status.started(node)
            with node._stop_accepting:
                await trio.serve_listeners(self._handle_connection, listeners,
                                           handler_nursery=connections)
            for listener in listeners:
                await listener.aclose()
            node._idle = trio.Event()
            if not node._active_requests:
                node._idle.set()
            with trio.move_on_after(node.config.shutdown_grace_s):
                await node._idle.wait()
            connections.cancel_scope.cancel()

    async def _handle_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = _peer_address(stream)
        try:
            await self._run_connection(stream, peer)
        except BaseException as exc:
            # The connection's boundary: whatever one client did (dropped mid-upload, broke the
            # protocol with a put open) or whatever bug its requests hit ends this connection,
            # logged once with its cause, and never the node. Only cancellation (and Ctrl-C)
            # goes on up, to the scope that asked for it.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("connection_failed", peer, contained)
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            await trio.aclose_forcefully(stream)

    async def _run_connection(self, stream: trio.SSLStream[trio.SocketStream], peer: str) -> None:
        node = self.node
        source = peer.rsplit(":", 1)[0]
        until = trio.current_time() + node.config.handshake_timeout_s
        try:
            with node.slots.handshake(source):
                ident = await self._handshake(stream, peer)
        except SlotsFull as exc:
            self.connection_refused(peer, None, exc)
            return
        if ident is None:
            return
        session = WireSession(stream, Connection(Role.SERVER))
        with ExitStack() as slot:
            try:
                self._check_peer(ident)
                # The slot before our Hello: a client without one learns why from its first
                # frame (a Goodbye), as a typed error it may retry later.
                slot.enter_context(node.slots.session(ident))
                await session.send(Hello(protocol_version=PROTOCOL_VERSION,
                                         cluster_id=node.config.cluster_id,
                                         peer=node.config.name,
                                         window=session.conn.initial_window))
                with deadline(max(0.0, until - trio.current_time()), "no handshake from the "
                              f"peer within {node.config.handshake_timeout_s:g} s"):
                    hello = await session.receive_hello()
                if hello.cluster_id != node.config.cluster_id:
                    raise AuthenticationFailed(f"Hello names cluster {hello.cluster_id!r}, "
                                               f"this is {node.config.cluster_id!r}")
            except HdsdError as exc:
                self.connection_refused(peer, ident, exc)
                await _goodbye(session, exc)
                return
            node._connections += 1
            slot.callback(self._connection_closed)
            slot.callback(self._coordinator_gone, session, ident)
            await self._serve_session(session, ident, peer)

    def _connection_closed(self) -> None:
        self.node._connections -= 1

    def _coordinator_gone(self, session: WireSession, ident: Identity) -> None:
        """A peer that replicated writes here over *session* is gone. If it crashed between
        our fsync and its own hint (or its disk is lost), the other replicas of those keys may
        lack what we hold, and no hint anywhere says so: doubt every peer, so a round compares
        us with each of them (a round between equal replicas costs a root exchange)."""
        node = self.node
        if session in node.replicated_over and not node.stopping:
            node.replicated_over.discard(session)
            node.doubts.doubt(None, f"the session of {ident.name}, which replicated writes "
                                    f"here, ended")

    async def _handshake(self, stream: trio.SSLStream[trio.SocketStream],
                         peer: str) -> Identity | None:
        """TLS and the certificate's identity within handshake_timeout_s (the caller holds a
        handshake slot meanwhile); None if refused (logged, audited). The Hellos follow, by
        the same deadline, in the session's slot."""
        node = self.node
        try:
            limit = node.config.handshake_timeout_s
            with deadline(limit, f"the TLS handshake took longer than {limit:g} s"):
                return await handshake_and_identify(
                    stream, revoked=lambda ident: node.live.refuse(ident, peer))
        except HdsdError as exc:
            if not isinstance(exc, CertificateRevoked):  # refuse() told who it was
                self.connection_refused(peer, None, exc)
            return None

    def connection_refused(self, peer: str, ident: Identity | None, exc: HdsdError,
                            op: str = "connect") -> None:
        """Audit (aggregated per source and interval, see hdsd.audit._refusals) and log (the
        first of each kind per interval) a connection refused or ended by a protocol error."""
        node = self.node
        reason = getattr(exc, "reason", exc.code)
        who = ident.name if ident is not None else "?"
        first = node.refusals.note(who, ident.role or "" if ident else "",
                                   ident.tenant or "" if ident else "", op, exc.code,
                                   peer.rsplit(":", 1)[0])
        if first:
            log.info("event=%s peer=%s identity=%s reason=%s detail=%s (more from this source "
                     "in the next %g s are counted, not logged)",
                     "connection_refused" if op == "connect" else "protocol_error", peer, who,
                     reason, exc, node.refusals.interval_s)

    async def _serve_session(self, session: WireSession, ident: Identity, peer: str) -> None:
        node = self.node
        log.debug("event=connected peer=%s identity=%s tenant=%s role=%s", peer, ident.name,
                  ident.tenant, ident.role)
        quiet = _no_inbox()  # shared by this connection's requests that hear nothing more
        in_flight = [0]  # this connection's requests
        cfg = node.config
        max_body = cfg.max_body_mib_per_connection << 20
        max_unsent = cfg.max_unsent_mib << 20

        async def before_read() -> None:
            # Body bytes queued for this connection's requests and not yet stored: read no
            # more (TCP holds the client back) until they drain below the bound.
            if session.held > max_body:
                node.limit_hits["connection_body"] += 1
            while session.held > max_body and not session.closed:
                await session.wait_progress()

        # A peer (a node of the layout) is trusted with more: its requests are replication
        # of its own clients' writes, already bounded there, and no client load may hold them
        # back (the node-wide bound does not apply to them either).
        peer_link = ident.kind == "node"
        per_connection = cfg.max_requests_in_flight if peer_link else \
            cfg.max_requests_per_connection

        async def before_open(msg: Message) -> bool:
            # A new request: not while the connection has its share in flight, nor while the
            # whole node has its share (or others wait for it: they come first, see ._room),
            # nor while its client does not read what it asked for (its replies would pile up
            # here). Nothing more is read meanwhile. The first two waits are short: the frames
            # behind this request may be what the requests in flight wait for (a download's
            # Credit), so after _ROOM_WAIT_S it is refused as unavailable (retryable) and
            # reading goes on. The third lasts as long as the client does not read: that is up
            # to the client alone.
            rid = getattr(msg, "rid", None)
            counted = False  # one hit per request held back, whatever the wake-ups
            give_up: float | None = None
            room = node.request_room
            turn = False  # holding the node's room, given in turn (see ._room)
            try:
                while not session.closed:
                    node_full = not peer_link and not turn and not room.free()
                    if session.unsent > max_unsent:
                        hit, until = "connection_unsent", math.inf
                    elif in_flight[0] >= per_connection or node_full:
                        hit = "connection_requests" if in_flight[0] >= per_connection else \
                            "node_requests"
                        give_up = give_up or trio.current_time() + _ROOM_WAIT_S
                        until = give_up
                    else:
                        if isinstance(msg, PutStart) and not peer_link:  # see ._budget
                            await node.budget.take(id(msg), put_reservation(
                                msg.size, session.conn.initial_window),
                                patience=_ROOM_WAIT_S if in_flight[0] else None)
                        elif in_flight[0] == 0 and not peer_link and not node._stopping and (
                                resolved := small_get_now(node, session, ident, msg)) \
                                is not None:
                            # A lone small get, read from this node's store: answered here,
                            # by the reader, in one write — no task, so one scheduler pass
                            # fewer. Only when nothing else of the connection is in flight: a
                            # pipelining client's requests are still answered concurrently,
                            # by tasks.
                            if turn:
                                room.take()
                                turn = False
                            in_flight[0] += 1
                            await self._run_request(session, ident, msg, quiet,
                                                    request_ended, resolved)
                            return False
                        if turn:
                            room.take()
                            turn = False
                        return True
                    if turn:  # waiting for something else: the node's room goes to the next
                        room.pass_on()
                        turn = False
                    if not counted:
                        node.limit_hits[hit] += 1
                        counted = True
                    if trio.current_time() >= until and rid is not None:
                        node.limit_hits["refused_busy"] += 1
                        err = Unavailable(f"{in_flight[0]} requests in flight on this "
                                          f"connection (at most {per_connection}) or "
                                          f"{node._active_requests} on the node (at most "
                                          f"{cfg.max_requests_in_flight}); retry")
                        with contextlib.suppress(HdsdError):
                            await session.send(ErrorReply(rid=rid, code=err.code,
                                                          message=err.message))
                        return False
                    with trio.move_on_at(until):
                        if hit == "node_requests":
                            await room.wait_turn()
                            turn = True
                        else:
                            await session.wait_progress()
                return False
            finally:
                if turn:  # the connection closed (or failed) with the room in hand
                    room.pass_on()

        def request_ended() -> None:
            in_flight[0] -= 1
            session.progress()

        async def close_when_idle(reader: trio.CancelScope) -> None:
            # A client session with nothing in flight and nothing heard for idle_timeout_s
            # gives its slot back (the client library reconnects on its next request).
            idle = cfg.idle_timeout_s
            while True:
                quiet_for = time.monotonic() - session.last_activity
                if quiet_for >= idle and in_flight[0] == 0:
                    node.slots.idle_closed += 1
                    log.info("event=idle_closed peer=%s identity=%s idle_s=%.0f", peer,
                             ident.name, quiet_for)
                    await _goodbye(session, Unavailable(
                        f"idle for {quiet_for:.0f} s; reconnect when needed"), code="idle")
                    reader.cancel()
                    return
                await trio.sleep(max(idle - quiet_for, 1.0))

        # A peer's Replicates of small versions, queued to the log writer by the reader
        # (._peer_handlers.replicate_now) and acknowledged in that order by one task, which
        # the log writer wakes through the connection's bell (see store.Bell).
        acks: collections.deque[tuple[Replicate, CommitTicket, float]] = collections.deque()
        bell: Bell | None = None

        # A live session of its certificate: cancelled if the certificate is revoked meanwhile.
        async with node.live.track(ident, session), trio.open_nursery() as requests:
            reader = trio.CancelScope()
            if ident.kind != "node":  # peers keep their links: replication must not wait
                requests.start_soon(close_when_idle, reader)
            else:
                # Closed by its task as it ends (which it does with the connection, and
                # always runs once started): nothing between the two can raise.
                bell = node.store.bell()
                requests.start_soon(self._ack_replicates, session, acks, bell, request_ended)

            # The small puts read since the last group started running: they join it (see
            # ._handlers.put_group) instead of getting a task each. One group at most is open
            # (None: none), so a slot, not a list: no list call per put to add or drop it.
            open_group: list[list[PutStart] | None] = [None]
            runner = _GroupRunner()

            async def run_group(group: list[PutStart]) -> None:
                open_group[0] = None  # from here on, a small put read starts a new group
                await self._run_put_group(session, ident, group, request_ended, spawn)

            async def run_groups() -> None:
                # The connection's groups, one after the other, by this one task while it
                # is free (a group read while it runs one gets a task of its own, as all
                # did): a synchronous client's every put, one at a time, without a task
                # spawned and reaped per put. (run_group's two lines, inline: a coroutine
                # level less on each of the group's resumptions.)
                while True:
                    group = await runner.next_group()
                    open_group[0] = None
                    await self._run_put_group(session, ident, group, request_ended, spawn)

            if ident.kind != "node":  # (a peer's requests are never small puts)
                requests.start_soon(run_groups)

            def spawn(msg: Message, counted: bool = True) -> None:
                # Only uploads (Data, End) and downloads (Cancel) hear more of their rid; the
                # others (every peer request among them) need no channel of their own, nor
                # does an upload whose whole body was read with its start (a small put).
                rid: int = msg.rid  # type: ignore[attr-defined]
                inbox = session.open_inbox(rid) if isinstance(msg, _STREAMING) and \
                    not session.has_whole_upload(rid) else quiet
                if not counted:  # (a small put a group handed back was counted already)
                    in_flight[0] += 1
                requests.start_soon(self._run_request, session, ident, msg, inbox,
                                    request_ended)

            def on_request(msg: Message) -> None:
                if getattr(msg, "rid", None) is None:
                    return
                if bell is not None and type(msg) is Replicate and not node._stopping:
                    # Counted before it is queued, as its task would be (a lone request's
                    # batch is then held off its reply's path: see _request_began).
                    node._request_began()
                    ticket = replicate_now(node, session, msg, bell)
                    if ticket is not None:
                        in_flight[0] += 1
                        acks.append((msg, ticket, time.perf_counter()))
                        if ticket.done():  # over without the writer (nothing new to write)
                            bell.ring()
                        return
                    node._request_done()  # its task counts it again
                if small_put_now(node, session, ident, msg):
                    assert isinstance(msg, PutStart)
                    in_flight[0] += 1
                    group = open_group[0]
                    if group is not None:
                        group.append(msg)
                    elif in_flight[0] == 1 and not session.conn.buffered:
                        # Alone on its connection, nothing read behind it (a synchronous
                        # client's put, each of x16's sixteen): run by the reader itself
                        # (WireSession.run_next), as a lone small get is, not handed to the
                        # runner — a reschedule, a task switch and a scheduler pass fewer per
                        # put. The client's next frames wait in the socket meanwhile; a
                        # synchronous client sends none, and what a pipelining one sends
                        # then is read as one group after it.
                        session.run_next(partial(self._run_put_group, session, ident, [msg],
                                                 request_ended, spawn))
                    else:
                        group = open_group[0] = [msg]
                        if not runner.take(group):
                            requests.start_soon(run_group, group)
                else:
                    spawn(msg, counted=False)

            try:
                with reader:
                    await session.run_reader(on_request, before_read=before_read,
                                             before_open=before_open)
            except ProtocolError as exc:
                self.connection_refused(peer, ident, exc, op="session")
                await _goodbye(session, exc)
            except HdsdError as exc:
                log.info("event=connection_lost peer=%s reason=%s", peer, exc)
            if ident.kind == "node":
                # A peer's link to us ended: it may have crashed between our fsync of its
                # write and its hint for the other replicas.
                node._peer_link_changed(ident.name, False)
            # The client is gone: its in-flight requests have nobody to answer.
            requests.cancel_scope.cancel()

    async def _ack_replicates(
            self, session: WireSession,
            acks: collections.deque[tuple[Replicate, CommitTicket, float]],
            bell: Bell, ended: Callable[[], None]) -> None:
        """A peer connection's acknowledger: wait for each Replicate queued by
        :func:`~._peer_handlers.replicate_now`, oldest first, and answer it — ``Reply`` once
        its records are durable, the store's error otherwise — as its own task would have.
        Runs as long as the connection; what it had not answered when cancelled (the
        connection is gone) is given up: its commit goes on, nobody is left to tell.

        It waits on the connection's *bell*, which each of those commits rings when it is
        over, and nothing else: the reader that queues a commit does not wake it (with a
        wake-up there and an eventfd per commit, a lone Replicate cost the replica's event
        loop one more scheduler pass). Closes *bell* as it ends."""
        try:
            while True:
                if not acks or not acks[0][1].done():
                    await bell.wait()
                    continue
                msg, ticket, started = acks[0]
                outcome = "cancelled"
                try:
                    reply: Reply | ErrorReply
                    try:
                        ticket.result()
                        outcome = "ok"
                        reply = Reply(rid=msg.rid, body={})
                    except HdsdError as exc:
                        outcome = exc.code
                        reply = ErrorReply(rid=msg.rid, code=exc.code, message=exc.message)
                    try:
                        await session.send(reply)
                    except HdsdError as exc:  # the connection is gone: nobody to tell
                        outcome = exc.code
                finally:
                    acks.popleft()
                    self._replicate_answered(session, msg, outcome, started, ended)
        finally:
            while acks:
                msg, ticket, started = acks.popleft()
                ticket.abandon()
                self._replicate_answered(session, msg, "cancelled", started, ended)
            bell.close()

    def _replicate_answered(self, session: WireSession, msg: Replicate, outcome: str,
                            started: float, ended: Callable[[], None]) -> None:
        """The end of a Replicate :meth:`_ack_replicates` answered: what ``handle_request``
        and ``_run_request`` do at a request's end (it took no body budget: no chunks)."""
        node = self.node
        node.metrics.request_done(msg, outcome, time.perf_counter() - started)
        session.close_inbox(msg.rid)
        node._request_done()
        ended()
        node.request_room.freed()

    async def _run_put_group(self, session: WireSession, ident: Identity,
                             group: list[PutStart], ended: Callable[[], None],
                             spawn: Callable[[Message], None]) -> None:
        """Small puts read together on one connection: those that can share one write are
        answered by this one task (``put_group``), the others each get their own task
        (*spawn*), as any request. Each is still one request in flight until it is answered."""
        node = self.node
        mine: list[PutStart] = []
        replicas: dict[str, list[str]] | None = None
        ready = node.audit_continuity.ready.is_set() and not node._stopping
        for msg in group:
            try:
                claimed = claim_small_put(node, ident, msg, replicas) if ready else None
            except Exception:
                claimed = None  # (its own task meets the failure again, and answers it)
            if claimed is None:
                spawn(msg)
            else:
                replicas = claimed
                mine.append(msg)
        if not mine:
            return
        assert replicas is not None
        for _ in mine:  # each put is a request in flight on the node, as its own task would be
            node._request_began()
        try:
            await put_group(node, session, ident, mine, replicas)
        except BaseException as exc:
            # The requests' boundary, as in _run_request_counted: put_group answered what it
            # could; the connection and its other requests carry on.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("request_failed", _peer_address_of(session), contained,
                               op="PutStart", puts=len(mine))
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            for msg in mine:
                node._request_done()
                node.budget.release(id(msg))
                ended()
            node.request_room.freed()

    def _check_peer(self, ident: Identity) -> None:
        node = self.node
        if ident.cluster_id != node.config.cluster_id:
            raise AuthenticationFailed(f"certificate is for cluster {ident.cluster_id!r}, "
                                       f"this is {node.config.cluster_id!r}")
        if ident.kind == "node" and not node.layouts.record.has_node(ident.name):
            raise AuthenticationFailed(f"node {ident.name!r} is not in this cluster's layout")

    async def _run_request(self, session: WireSession, ident: Identity, msg: Message,
                           inbox: trio.MemoryReceiveChannel[Message],
                           ended: Callable[[], None], resolved: Version | None = None) -> None:
        node = self.node
        try:
            await self._run_request_counted(session, ident, msg, inbox, resolved)
        finally:
            node.budget.release(id(msg))  # what the request took (see ._budget)
            ended()
            node.request_room.freed()

    async def _run_request_counted(self, session: WireSession, ident: Identity, msg: Message,
                                   inbox: trio.MemoryReceiveChannel[Message],
                                   resolved: Version | None = None) -> None:
        node = self.node
        if node._stopping:
            session.close_inbox(msg.rid)  # type: ignore[attr-defined]
            err = Unavailable("node is shutting down; retry on another node or later")
            await session.send(ErrorReply(rid=msg.rid, code=err.code,  # type: ignore[attr-defined]
                                          message=err.message))
            return
        node._request_began()
        try:
            await handle_request(node, session, ident, msg, inbox, resolved)
        except BaseException as exc:
            # One request's boundary: its failure ends it (handle_request already answered
            # what it could); its connection and the other requests on it carry on.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("request_failed", _peer_address_of(session), contained,
                               rid=getattr(msg, "rid", None), op=type(msg).__name__)
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            node._request_done()


_STREAMING = (PutStart, GetRequest, GetMany, FetchChunks)  # (a download hears its Cancel)


class _GroupRunner:
    """Where a connection's group runner (a task of its requests' nursery) waits for the
    next small-put group: :meth:`take` hands it one if it is waiting (a reschedule, a few
    calls; spawning a task and reaping it is ~25), else the caller spawns a task."""

    __slots__ = ("_group", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._group: list[PutStart] | None = None

    def take(self, group: list[PutStart]) -> bool:
        """Whether the runner was waiting and now has *group* (it runs it on its next turn,
        as a new task would: the puts read in this pass join it meanwhile)."""
        task = self._task
        if task is None:
            return False
        self._task = None
        self._group = group
        trio.lowlevel.reschedule(task)
        return True

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None  # cancelled while waiting: the connection is ending
        return trio.lowlevel.Abort.SUCCEEDED

    async def next_group(self) -> list[PutStart]:
        """Wait for a group handed over by :meth:`take` (a checkpoint)."""
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)
        group, self._group = self._group, None
        assert group is not None
        return group


def _no_inbox() -> trio.MemoryReceiveChannel[Message]:
    """An inbox that never receives anything (and needs no closing)."""
    send, receive = trio.open_memory_channel[Message](0)
    send.close()
    return receive


async def _goodbye(session: WireSession, exc: HdsdError, code: str | None = None) -> None:
    # from_exception truncates the text to what a frame may carry: a long message would
    # otherwise make the Goodbye itself invalid, and the client hear nothing.
    bye = Goodbye.from_exception(exc)
    if code is not None:
        bye = Goodbye(code=code, message=bye.message)
    with trio.move_on_after(2):
        try:
            await session.send(bye)
        except HdsdError:
            pass


def _log_contained(event: str, peer: str, exc: BaseException, **fields: object) -> None:
    """Log once what a request or connection boundary stopped: a typed error is the client's
    or the situation's (one line), anything else is a bug (with its traceback)."""
    leaves = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    if all(isinstance(e, HdsdError) for e in leaves):
        log.info("event=%s peer=%s%s reason=%s", event, peer, extra,
                 "; ".join(str(e) for e in leaves))
    else:
        log.error("event=%s peer=%s%s reason=%s", event, peer, extra, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))


def _peer_address_of(session: WireSession) -> str:
    stream = session.stream
    return _peer_address(stream) if isinstance(stream, trio.SSLStream) else "?"


def _peer_address(stream: trio.SSLStream[trio.SocketStream]) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
