"""The node-wide budget of body bytes in flight (``[limits] max_body_mib_in_flight``).

A node's resident memory under load is set by the body bytes it holds at once: a put's body
from its arrival until it is durable, its chunks being sealed and replicated, a get's chunks on
their way out, a replica's copy until it is fsynced. Each body byte in flight costs about
2.5 to 3 bytes of RSS (docs/operations.md, *Memory*), and glibc keeps the space of the
peak for reuse, so the peak of body bytes in flight sets the node's RSS for good. The
per-connection bounds (``max_body_mib_per_connection``, the stream windows) leave the node-wide
peak to the number of clients; this budget caps it.

Who waits, and why that cannot deadlock:

* A client's put takes ``min(size, window)`` bytes (its most the wire lets it send before the
  node grants credit back) *before* the node reads on past its ``PutStart``: while it waits,
  TCP holds the client back. That wait is unbounded only when nothing else of that connection
  is in flight; otherwise the frames behind the ``PutStart`` may be what the connection's own
  requests wait for (an upload's Data, a download's Credit), so after ``patience`` seconds the
  put goes on over the budget (counted in ``over``), never refused.
* A client's get takes ``min(range, 4 chunks)`` in its handler, after the lookup: what the
  request itself holds (the chunk being sent and its read-ahead, see
  ``_objects.stream_object``); nothing of the connection waits behind it. A bulk download
  (``GetMany``, ``._bulk``) likewise takes what it holds at once: two batches of chunks and a
  frame of small objects (~9 MiB), whatever the number of objects it sends. Bytes already handed
  to the connection's output are bounded per connection (``max_unsent_mib``: no new request
  is read while they pass it), not here — counting that bound once per get made two 12 MiB
  gets fill the clients' share of the default budget, so a client fetching many large
  objects over one connection saw its other requests refused.
* The S3 gateway's puts and parts take the same in the gateway's backend, before the body is
  read (TCP holds the client back). Not its gets: a copy (CopyObject, UploadPartCopy) is a get
  feeding a put through a channel in one request: copies whose gets held budget while their
  puts waited for it would wait for good. A get streams chunk by chunk, bounded by its
  connection's output.
* A peer's replication write takes its chunks' bytes in its handler. Peers have their own share:
  they wait only while the whole budget (clients' share and theirs) is spent, and never for the
  clients, which hold ``capacity - peer_share`` at most — a client put at one site waits for
  the replica's fsync at the other, and that replica's own clients must not be able to hold it
  up (two sites each full of puts waiting for the other's replica would be stuck for good).
* A client request waits at most ``CLIENT_PATIENCE_S`` (5 s), then goes on over the budget
  (``over``): requests in flight hold the room, and a client that stalls its own (a byte now
  and then, a download never read) must not stop every other client for good.
* A body larger than what is free goes on alone: a client's when no other client holds any,
  a peer's when no other peer write does. So the budget can be passed by one body of each kind
  at most (and by the puts that ran out of patience).

Clients are served first come, first served (a stream of small puts does not starve a 1 MiB
one). All of this is bookkeeping on the event loop: no locks.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Hashable

import trio

__all__ = ["BodyBudget", "get_reservation", "put_reservation"]


# The longest a client request waits for room before it goes on over the budget. Room is
# held by requests in flight, and a hostile or stalled client can keep its own in flight for
# as long as it sends a byte now and then (or never reads its download): without a limit, such
# a client would stop every other client of the node for good. With it, the budget bounds the
# node's memory under load and can only delay a request, never stop it.
CLIENT_PATIENCE_S = 5.0


class _Waiter:
    __slots__ = ("event", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = trio.Event()


class BodyBudget:
    """Bytes granted to owners (a request: ``id(msg)`` of its opening message, alive as long as
    the request), released by owner as the request ends."""

    def __init__(self, capacity: int, peer_share: int | None = None) -> None:
        self.capacity = capacity
        # A quarter for replication by default: a replica's write is one batch of chunks
        # its sender already holds in its own budget.
        self.peer_share = capacity // 4 if peer_share is None else peer_share
        self.client_cap = capacity - self.peer_share
        self.client_bytes = 0
        self.peer_bytes = 0
        self.peak = 0  # the most ever held at once (status: the bound in action)
        self.waited = 0  # requests that waited for room
        self.over = 0  # puts let through over the budget after their patience (see above)
        self._owners: dict[Hashable, tuple[int, bool]] = {}
        self._clients: deque[_Waiter] = deque()
        self._peers: deque[_Waiter] = deque()

    @property
    def in_use(self) -> int:
        return self.client_bytes + self.peer_bytes

    def _client_fits(self, n: int) -> bool:
        return self.client_bytes == 0 or (
            self.client_bytes + n <= self.client_cap and self.in_use + n <= self.capacity)

    def _peer_fits(self, n: int) -> bool:
        return self.peer_bytes == 0 or self.in_use + n <= self.capacity

    async def take(self, owner: Hashable, n: int, *, peer: bool = False,
                   patience: float | None = None) -> None:
        """Grant *n* bytes to *owner* (added to what it holds), waiting for room: first come,
        first served among clients, and among peers. After *patience* seconds of waiting
        (a client's default: CLIENT_PATIENCE_S; a peer's: no limit), the bytes are granted
        anyway (``over``)."""
        if n <= 0:
            return
        if patience is None:
            patience = math.inf if peer else CLIENT_PATIENCE_S
        queue = self._peers if peer else self._clients
        fits = self._peer_fits if peer else self._client_fits
        if not queue and fits(n):
            self._grant(owner, n, peer)
            return
        self.waited += 1
        waiter = _Waiter(n)
        queue.append(waiter)
        try:
            with trio.move_on_after(patience):
                await waiter.event.wait()
        except BaseException:
            # Cancelled while waiting: granted meanwhile (counted by _wake) or still in line.
            if waiter.event.is_set():
                self._uncount(n, peer)
            else:
                queue.remove(waiter)
            self._wake()  # the next in line may fit where this one did not
            raise
        if not waiter.event.is_set():  # out of patience: on over the budget
            queue.remove(waiter)
            self.over += 1
            self._count(n, peer)
            self._wake()
        self._owners[owner] = self._add(self._owners.get(owner), n, peer)

    @contextlib.asynccontextmanager
    async def holding(self, n: int) -> AsyncIterator[None]:
        """*n* client bytes for the duration of the block (the S3 gateway's puts: one request
        at a time per HTTP connection, so nothing of theirs waits behind them). Never nest
        two in one request: a holder waiting for more can wait for good."""
        owner = object()
        await self.take(owner, n)
        try:
            yield
        finally:
            self.release(owner)

    def release(self, owner: Hashable) -> None:
        """*owner* ended: what it holds is free again (nothing if it held nothing)."""
        held = self._owners.pop(owner, None)
        if held is not None:
            self._uncount(*held)
            self._wake()

    def held_by(self, owner: Hashable) -> int:
        return self._owners.get(owner, (0, False))[0]

    def describe(self) -> dict[str, int]:
        return {"capacity": self.capacity, "peer_share": self.peer_share,
                "in_use": self.in_use, "clients": self.client_bytes, "peers": self.peer_bytes,
                "peak": self.peak, "waited": self.waited, "over": self.over,
                "waiting": len(self._clients) + len(self._peers)}

    # -- internals -----------------------------------------------------------------------------
    def _grant(self, owner: Hashable, n: int, peer: bool) -> None:
        self._count(n, peer)
        self._owners[owner] = self._add(self._owners.get(owner), n, peer)

    def _count(self, n: int, peer: bool) -> None:
        if peer:
            self.peer_bytes += n
        else:
            self.client_bytes += n
        self.peak = max(self.peak, self.in_use)

    def _uncount(self, n: int, peer: bool) -> None:
        if peer:
            self.peer_bytes -= n
        else:
            self.client_bytes -= n

    @staticmethod
    def _add(held: tuple[int, bool] | None, n: int, peer: bool) -> tuple[int, bool]:
        # One owner is one request: a client's or a peer's, never both.
        return (n + (held[0] if held else 0), peer)

    def _wake(self) -> None:
        # Grant in order while the head fits: the bytes are counted here, at once, so a
        # later arrival cannot take them before the woken task runs.
        for queue, fits, peer in ((self._peers, self._peer_fits, True),
                                  (self._clients, self._client_fits, False)):
            while queue and fits(queue[0].n):
                waiter = queue.popleft()
                self._count(waiter.n, peer)
                waiter.event.set()


def put_reservation(size: int | None, window: int) -> int:
    """What a client's put takes: the most of its body the node can hold before granting credit
    back (the stream's window), or its whole body if smaller (None: a size not announced)."""
    return window if size is None else min(max(size, 0), window)


_GET_CHUNKS = 4  # stream_object: one chunk at the sink, one being read, two ready


def get_reservation(length: int, chunk_size: int) -> int:
    """What a client's get of *length* bytes takes: its whole range if small, else the chunks
    it holds at once (the one being sent and its read-ahead)."""
    return min(length, _GET_CHUNKS * chunk_size)
