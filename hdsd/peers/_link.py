"""Links to the other nodes: one long-lived, multiplexed, mutually authenticated TLS connection
per peer, reopened with exponential backoff after a failure.

``PeerLink`` is the only thing the replication logic needs from the network, so deterministic
tests replace :class:`PeerPool` with an in-memory network that drops, delays and partitions.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import trio

from .._deadline import deadline
from .._errors import (
    ConnectionLost,
    HdsdError,
    ProtocolError,
    RequestTimeout,
    Unavailable,
    error_class_for_code,
)
from ..cluster import Layout, NodeInfo
from ..transport import Identity, WireSession, connect_tls, identity_from_der
from ..wire import (
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    Data,
    End,
    ErrorReply,
    GetStart,
    Hello,
    Reply,
    Request,
    Role,
)

__all__ = ["DownloadLink", "PeerLink", "PeerPool", "SendHookLink"]

log = logging.getLogger("hdsd.replication")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
_MAX_IN_FLIGHT = 64
# A peer that is down is reported here, once per outage, then as a WARNING only once it has
# been down this long (at first start the other node is often still starting), then at most
# every _WARN_EVERY_S; the callers that retry (repair, catalog sync) stay quiet meanwhile.
UNREACHABLE_WARN_AFTER_S = 30.0
_WARN_EVERY_S = 60.0

R = TypeVar("R")


class PeerLink(Protocol):
    async def call(self, node: str, request: Request[R]) -> R:
        """Send *request* (built with ``rid=UNSENT``: the link stamps its own) to *node* and
        return its Reply body, checked against the request's reply type.

        The link bounds each request by its own per-request limit (the node's
        ``write_timeout_s``: a peer that has not answered by then is in doubt and the request
        fails with :class:`RequestTimeout`). A caller that needs a tighter bound, or one bound
        over several requests, owns it: it wraps the calls in a cancel scope
        (:func:`hdsd._deadline.deadline`), trio's idiom.

        Raises :class:`Unavailable` (unreachable, timeout), :class:`ProtocolError` (a malformed
        reply) or the error the peer replied with.
        """
        ...

    def reachable(self, node: str) -> bool:
        """Whether the last attempt to reach *node* succeeded (no I/O)."""
        ...


class SendHookLink(PeerLink, Protocol):
    """A :class:`PeerLink` that can tell a caller when its request is on its way (what the
    write coordinator needs; :class:`PeerPool` is one)."""

    async def call(self, node: str, request: Request[R], *,
                   sent: Callable[[], None] | None = None, shielded: bool = False,
                   slot_wait: float | None = None) -> R:
        """:meth:`PeerLink.call`; *sent*, if given, is called (it must not raise) once the
        request is on its way, before the reply is awaited — not at all if it could not be
        sent. The write path queues its local commit there, so that waking the log writer
        thread does not delay the send. *shielded*: the caller runs in a shielded cancel
        scope whose deadline is no later than the link's own bound, so nothing but that
        deadline can cancel the send or end the wait: the link adds neither a shield nor a
        bound of its own (that deadline ends the call with ``trio.Cancelled``, caught by the
        caller's scope, where the link's bound would have raised :class:`RequestTimeout`).
        *slot_wait*: while the link has as many requests in flight as it allows, wait at most
        this long (default: the link's bound) for one to end, then raise
        :class:`RequestTimeout` — nothing sent."""
        ...


@runtime_checkable
class DownloadLink(PeerLink, Protocol):
    """A :class:`PeerLink` that also runs download requests (``FetchChunks``): the answer's
    body comes as Data frames, handed over one by one, instead of a Reply map."""

    def downloads(self, node: str) -> bool:
        """False once *node* refused a download request (it predates them): use the
        one-request-per-item form with it."""
        ...

    async def download(self, node: str, request: Request[R], on_start: Callable[[R], None],
                       on_data: Callable[[bytes], None]) -> None:
        """Send the download *request* to *node*, pass the ``GetStart`` info (checked
        against the request's reply type) to *on_start*, then each Data payload of the body
        to *on_data* in order, and return once the body ended. Bounded like
        :meth:`PeerLink.call`, per frame awaited; raises as it does, and what the callbacks
        raise."""
        ...


class _Peer:
    def __init__(self) -> None:
        self.session: WireSession | None = None
        self.lock = trio.Lock()
        self.backoff = _BACKOFF_FIRST
        self.retry_at = 0.0
        self.last_error = ""
        self.down_since: float | None = None  # first failed attempt of the current outage
        self.warn_at = 0.0  # when the next "still unreachable" warning may be logged
        self.was_lost = False  # an established session broke since the last one opened
        self.serial = ""  # of the certificate the peer presented on the open link
        # Requests in flight on this link: beyond it callers queue (backpressure) instead of
        # piling frames into the shared session, where they would all time out together.
        self.slots = trio.Semaphore(_MAX_IN_FLIGHT)
        # Slots kept by requests whose caller stopped waiting (a `local` write's grace) while
        # the peer still works on them: see PeerPool._keep_slot.
        self.kept: dict[_Kept, None] = {}
        # It closed the link over a download request (a node older than them): not sent again.
        self.no_downloads = False


class _Kept:
    """A slot of *peer* kept by a request whose caller stopped waiting for its answer: the
    peer still works on it, so it still counts against the in-flight bound until its answer
    comes, the link closes, or one request bound (*expiry*) has passed without either."""

    __slots__ = ("done", "expiry", "peer", "rid", "session")

    def __init__(self, peer: _Peer, session: WireSession, rid: int, expiry: float) -> None:
        self.peer = peer
        self.session = session
        self.rid = rid
        self.expiry = expiry
        self.done = False

    def release(self) -> None:
        """The request ended (called by the session, or by the expiry sweep): once only."""
        if not self.done:
            self.done = True
            del self.peer.kept[self]
            self.peer.slots.release()


class PeerPool:
    """The node's :class:`PeerLink` over real TLS. Run :meth:`run` in a nursery first."""

    def __init__(self, *, name: str, cluster_id: str, layout: Layout,
                 ssl_context: ssl.SSLContext, request_timeout: float,
                 connect_timeout: float = 5.0, on_link: Callable[[str, bool], None] | None = None,
                 revoked: Callable[[Identity], bool] | None = None) -> None:
        self.name = name
        # Told (peer, up) when a link opens after a failure or breaks: what was in flight on
        # it may have landed on one side only.
        self._on_link = on_link
        self.cluster_id = cluster_id
        self.layout = layout
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout  # the per-request bound of :meth:`call`
        self._revoked = revoked  # a peer presenting a revoked certificate is refused
        self._peers = {n.name: _Peer() for n in layout.nodes if n.name != name}
        self._addresses = {n.name: (n.host, n.port) for n in layout.nodes}
        self._nursery: trio.Nursery | None = None

    def set_nodes(self, nodes: tuple[NodeInfo, ...]) -> None:
        """The layout changed (live): links to nodes that joined open on first use; a node
        whose address changed is dialled at the new one (its open link is closed); links to
        nodes that left are closed."""
        wanted = {n.name: (n.host, n.port) for n in nodes}
        for node, address in wanted.items():
            if node == self.name:
                continue
            peer = self._peers.get(node)
            if peer is None:
                self._peers[node] = _Peer()
            elif self._addresses.get(node) != address:
                self._close(node, peer, "address_changed")
        for node in list(self._peers):
            if node not in wanted:
                self._close(node, self._peers.pop(node), "left_the_layout")
        self._addresses = wanted

    def _close(self, node: str, peer: _Peer, reason: str) -> None:
        if peer.session is not None and self._nursery is not None:
            log.info("event=peer_link_closed node=%s peer=%s reason=%s", self.name, node, reason)
            self._nursery.start_soon(peer.session.aclose)
        peer.retry_at = 0.0
        peer.backoff = _BACKOFF_FIRST

    def known(self, node: str) -> bool:
        return node in self._peers

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the peers' reader tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for peer in self._peers.values():
                if peer.session is not None:
                    await peer.session.aclose()

    def reachable(self, node: str) -> bool:
        peer = self._peers.get(node)
        return peer is not None and peer.session is not None and not peer.session.closed

    def describe(self, node: str) -> dict[str, Any]:
        peer = self._peers.get(node)
        if peer is None:
            return {"reachable": False, "last_error": "not in this node's layout"}
        return {"reachable": self.reachable(node), "last_error": peer.last_error}

    def _peer(self, node: str) -> _Peer:
        peer = self._peers.get(node)
        if peer is None:
            raise ConnectionLost(f"peer {node} is not in this node's layout")
        return peer

    async def _session(self, node: str) -> WireSession:
        peer = self._peer(node)
        live = peer.session
        if live is not None and not live.closed:
            return live  # the common case: no lock, no scheduler pass
        async with peer.lock:
            if peer.session is not None and not peer.session.closed:
                return peer.session
            now = trio.current_time()
            if now < peer.retry_at:
                raise ConnectionLost(f"peer {node} unreachable ({peer.last_error}); "
                                     f"next attempt in {peer.retry_at - now:.2f} s")
            try:
                peer.session = await self._open(node)
            except HdsdError as exc:
                peer.last_error = str(exc)
                peer.retry_at = trio.current_time() + peer.backoff
                peer.backoff = min(peer.backoff * 2, _BACKOFF_MAX)
                self._report_down(node, peer)
                if isinstance(exc, Unavailable):
                    raise
                raise ConnectionLost(f"peer {node}: {exc}") from None
            peer.backoff = _BACKOFF_FIRST
            peer.last_error = ""
            down = "" if peer.down_since is None else \
                f" unreachable_s={trio.current_time() - peer.down_since:.1f}"
            peer.down_since = None
            log.info("event=peer_connected node=%s peer=%s%s", self.name, node, down)
            if self._on_link is not None and peer.was_lost:
                self._on_link(node, True)
            peer.was_lost = False
            return peer.session

    def _report_down(self, node: str, peer: _Peer) -> None:
        now = trio.current_time()
        if peer.down_since is None:
            peer.down_since = now
            peer.warn_at = now + UNREACHABLE_WARN_AFTER_S
            log.info("event=peer_unreachable node=%s peer=%s error=%s retry=quiet "
                     "warn_after_s=%g", self.name, node, peer.last_error,
                     UNREACHABLE_WARN_AFTER_S)
        elif now >= peer.warn_at:
            peer.warn_at = now + _WARN_EVERY_S
            log.warning("event=peer_unreachable node=%s peer=%s for_s=%.0f error=%s",
                        self.name, node, now - peer.down_since, peer.last_error)

    async def _open(self, node: str) -> WireSession:
        host, port = self._addresses[node]
        limit = self._connect_timeout
        with deadline(limit, f"connecting to {host}:{port} took longer than {limit:g} s"):
            stream = await connect_tls(host, port, self._ssl, server_hostname=host,
                                       revoked=self._revoked)
        session = WireSession(stream, Connection(Role.CLIENT))
        try:
            self._peer(node).serial = identity_from_der(
                stream.getpeercert(binary_form=True)).serial_hex
            await session.send(Hello(protocol_version=PROTOCOL_VERSION,
                                     cluster_id=self.cluster_id, peer=self.name,
                                     window=session.conn.initial_window))
            with deadline(limit, f"no handshake from peer {node} within {limit:g} s"):
                hello = await session.receive_hello()
            if hello.cluster_id != self.cluster_id:
                raise ProtocolError(f"peer {node} serves cluster {hello.cluster_id!r}")
        except BaseException:
            await session.aclose()
            raise
        assert self._nursery is not None, "PeerPool.run must be running"
        self._nursery.start_soon(self._read, node, session)
        return session

    def drop_revoked(self, serials: set[str]) -> None:
        """Close the links to peers whose certificate is among *serials* (just revoked); the
        next attempt is refused by the ``revoked`` check."""
        for name, peer in self._peers.items():
            if peer.session is not None and peer.serial in serials and self._nursery is not None:
                log.warning("event=peer_link_closed node=%s peer=%s reason=certificate_revoked",
                            self.name, name)
                self._nursery.start_soon(peer.session.aclose)

    async def _read(self, node: str, session: WireSession) -> None:
        try:
            await session.run_reader()
        except HdsdError as exc:
            if node in self._peers:
                self._peers[node].last_error = str(exc)
        finally:
            log.info("event=peer_disconnected node=%s peer=%s", self.name, node)
            if node in self._peers:  # (not when it left the layout)
                self._peers[node].was_lost = True
            if self._on_link is not None:
                self._on_link(node, False)
            await session.aclose()

    async def call(self, node: str, request: Request[R], *,
                   sent: Callable[[], None] | None = None, shielded: bool = False,
                   slot_wait: float | None = None) -> R:
        peer = self._peer(node)
        # A free slot is taken without a schedule point (a Semaphore's acquire always is one,
        # which every replicated write would pay); the caller's cancellation still counts.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            peer.slots.acquire_nowait()
        except trio.WouldBlock:
            await self._wait_slot(node, peer, slot_wait)
        # From here the slot is _exchange's to release (or to keep, see _keep_slot).
        if shielded:
            # The caller's shielded scope bounds the request, its deadline no later than
            # ours (see SendHookLink.call): a scope of our own could never fire first, and
            # would cost every replicated write ~60 Python calls to enter and leave.
            return await self._exchange(node, peer, request, sent, None)
        return await self._call(node, peer, request, sent)

    async def _wait_slot(self, node: str, peer: _Peer, limit: float | None = None) -> None:
        """Wait for a free slot of *peer*, at most *limit* (default: the request bound;
        :class:`RequestTimeout` after it). Kept slots whose request bound has passed are
        given up on here, when a slot is wanted: no task watches them."""
        if limit is None:
            limit = self.request_timeout
        until = trio.current_time() + limit
        while True:
            now = trio.current_time()
            for kept in [k for k in peer.kept if k.expiry <= now]:
                # Its late answer, if any, is then dropped as any abandoned request's is.
                kept.session.close_inbox(kept.rid)
                kept.release()
            try:
                peer.slots.acquire_nowait()
                return
            except trio.WouldBlock:
                pass
            if now >= until:
                raise RequestTimeout(f"peer {node} busy: no free slot within {limit:g} s")
            wake = min([until, *(k.expiry for k in peer.kept)])
            with trio.move_on_at(wake):
                await peer.slots.acquire()
                return

    async def _call(self, node: str, peer: _Peer, request: Request[R],
                    sent: Callable[[], None] | None) -> R:
        """:meth:`_exchange` bounded by the link's own limit."""
        limit = self.request_timeout
        with trio.move_on_after(limit) as bound:
            return await self._exchange(node, peer, request, sent, bound)
        raise RequestTimeout(f"peer {node} did not answer within {limit:g} s")

    async def _exchange(self, node: str, peer: _Peer, request: Request[R],
                        sent: Callable[[], None] | None, bound: trio.CancelScope | None) -> R:
        """Send *request* on the peer's session and return its answer (unbounded: the
        caller's scope bounds it, and *bound*, the link's own bound, if not shielded).
        Releases the peer's slot the caller took, or keeps it (:meth:`_keep_slot`)."""
        kept = False
        try:
            session = await self._session(node)
            request, inbox = session.open_call(request)
            try:
                # A frame cut in the middle would break the link for every request sharing
                # it: once started, a send finishes, within the request's bound and the
                # caller's (read before shielding: inside the shield the caller's scope no
                # longer counts). A shielded caller (the pair write) already gives exactly
                # that: its earlier deadline is the only cancellation that can reach the send
                # (a cancel scope less on every replicated write).
                if bound is None:
                    await session.send(request)
                else:
                    until = trio.current_effective_deadline()
                    with trio.CancelScope(shield=True, deadline=until):
                        await session.send(request)
                if sent is not None:
                    sent()
                try:
                    event = await inbox.receive()
                except trio.EndOfChannel:
                    raise ConnectionLost(f"connection to peer {node} lost") from None
                except trio.Cancelled:
                    if bound is None or not bound.cancel_called:
                        kept = self._keep_slot(peer, session, request.rid)
                    raise
            finally:
                if not kept:
                    session.close_inbox(request.rid)
        finally:
            if not kept:
                peer.slots.release()
        if isinstance(event, Reply):
            return request.decode_reply(event.body)
        if isinstance(event, ErrorReply):
            raise error_class_for_code(event.code)(f"peer {node}: {event.message}")
        raise ProtocolError(f"peer {node} answered {type(event).__name__}")

    def _keep_slot(self, peer: _Peer, session: WireSession, rid: int) -> bool:
        """The caller stopped waiting for the answer of *rid*, sent (a `local` write's grace
        ended, or the caller's own bound): the peer still works on it, so its slot stays
        taken until the answer comes or the link closes (the session says so: no task
        waits), at most one request bound from now — else a slow peer would get as many
        requests as callers give up on, and the in-flight bound would no longer hold. Not
        when the link's own bound ended it (the request is over: in doubt)."""
        kept = _Kept(peer, session, rid, trio.current_time() + self.request_timeout)
        if not session.abandon_call(rid, kept.release):
            return False  # it ended meanwhile
        peer.kept[kept] = None
        return True

    def downloads(self, node: str) -> bool:
        peer = self._peers.get(node)
        return peer is not None and not peer.no_downloads

    async def download(self, node: str, request: Request[R], on_start: Callable[[R], None],
                       on_data: Callable[[bytes], None]) -> None:
        peer = self._peer(node)
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            peer.slots.acquire_nowait()
        except trio.WouldBlock:
            await self._wait_slot(node, peer)
        try:
            await self._download(node, peer, request, on_start, on_data)
        finally:
            peer.slots.release()

    async def _download(self, node: str, peer: _Peer, request: Request[R],
                        on_start: Callable[[R], None], on_data: Callable[[bytes], None]
                        ) -> None:
        limit = self.request_timeout
        with trio.move_on_after(limit) as scope:
            session = await self._session(node)
        if scope.cancelled_caught:
            raise RequestTimeout(f"peer {node} did not answer within {limit:g} s")
        request, inbox = session.open_request(request)
        rid = request.rid
        ended = False
        try:
            until = trio.current_effective_deadline()
            with trio.CancelScope(shield=True, deadline=min(until, trio.current_time() + limit)):
                await session.send(request)
            started = False
            while True:
                # Each frame within the request bound (a large body takes as long as it
                # takes, while it moves).
                with trio.move_on_after(limit) as scope:
                    try:
                        event = await inbox.receive()
                    except trio.EndOfChannel:
                        ended = True
                        raise self._lost_during_download(node, peer, session) from None
                if scope.cancelled_caught:
                    raise RequestTimeout(f"peer {node} sent nothing for {limit:g} s "
                                         "of a download")
                if isinstance(event, Data) and started:
                    on_data(event.data)
                    await session.consumed(rid, len(event.data))
                elif isinstance(event, GetStart) and not started:
                    started = True
                    on_start(request.decode_reply(event.info))
                elif isinstance(event, End) and started:
                    ended = True
                    return
                elif isinstance(event, ErrorReply):
                    ended = True
                    raise error_class_for_code(event.code)(f"peer {node}: {event.message}")
                else:
                    ended = isinstance(event, (End, Cancel))
                    raise ProtocolError(f"peer {node} answered {type(event).__name__} "
                                        "in a download")
        finally:
            if not ended:
                await session.cancel_abandoned(rid)
            session.close_inbox(rid)

    def _lost_during_download(self, node: str, peer: _Peer, session: WireSession
                              ) -> HdsdError:
        """The link closed under a download. A peer that predates downloads closes it with a
        protocol Goodbye (an unknown frame type): remember it, and use the older requests."""
        reason = session.closed_reason
        if isinstance(reason, ConnectionLost) and ": protocol: unknown frame type" in str(reason):
            peer.no_downloads = True
            log.warning("event=peer_downloads_refused node=%s peer=%s reason=%s", self.name,
                        node, reason)
        return ConnectionLost(f"connection to peer {node} lost during a download")
