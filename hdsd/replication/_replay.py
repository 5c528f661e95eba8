"""Hint replay: the :class:`HintReplayer` a :class:`~hdsd.replication.Replicator` owns.

One task per node streams that node's hints to it, oldest first, whenever it is reachable; a
hint naming this node itself (its own fsync failed while the others met the policy) is replayed
by pulling the version from another replica. A version the coordinator does not hold (it is not
a replica of the key) is fetched from a replica first. Replay is idempotent. When the site is
degraded and the other site came back with nothing left to replay, the site returns to normal.

A hint whose version no replica holds is dropped (a refused write that stored nothing), but only
once that has been seen for twice the write timeout: a replica that answered "not here" may still
commit the version from a request it received late (it was stalled, or the answer raced the
commit), and dropping the hint at the first look would leave that copy uncounted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from .._deadline import deadline
from .._errors import HdsdError, IntegrityError, NotFound, Unavailable
from ..cluster import Layout, LayoutRecord, NodeInfo
from ..peers import Offload, PeerLink, fetch_chunks, local_chunks, push_version
from ..store import ChunkRecord, Version
from ..wire import UNSENT, FetchVersions, PeerStatusRequest
from ._doubts import PeerDoubts
from ._hints import HintStore
from ._mode import ModeState
from ._types import LocalStore, Replicas

__all__ = ["HintReplayer"]

log = logging.getLogger("hdsd.replication")


#: How long a replay task that found no hints trusts :meth:`HintReplayer.hints_added` alone
#: before it asks the hint store again (one query per node of the layout per period).
_REQUERY_S = 30.0


class HintReplayer:
    """One replay task per node of the layout, given what it reads and writes: the local
    store, the peer links, the hint store, the site mode (it restores ``normal``), the peers
    in doubt, and the placement of keys (``replicas_for``, the Replicator's)."""

    def __init__(self, *, name: str, site: str, record: LayoutRecord, store: LocalStore,
                 peers: PeerLink, hints: HintStore, mode: ModeState, doubts: PeerDoubts,
                 timeout: float, offload: Offload,
                 replicas_for: Callable[[str, str, str], Replicas]) -> None:
        self.name = name
        self.site = site
        self.record = record
        self.store = store
        self.peers = peers
        self.hints = hints
        self.mode = mode
        self.doubts = doubts
        self.timeout = timeout
        self._offload = offload
        self.replicas_for = replicas_for
        self._hints_added = trio.Event()
        self._hints_added_count = 0  # calls of hints_added: a replay task's "anything new?"
        # Automatic restore needs the other site to have been away and come back; an operator
        # degrading ahead of planned maintenance is not undone while the peer is still up.
        self.peer_was_lost = False
        self._unheld_since: dict[int, float] = {}  # hint id -> first seen held by nobody
        self._replaying: set[str] = set()

    @property
    def layout(self) -> Layout:
        return self.record.layout

    @property
    def layout_id(self) -> str:
        return self.record.layout.layout_id

    def set_record(self, record: LayoutRecord) -> None:
        """The layout version in force changed (nodes that joined get a task: :meth:`start`)."""
        self.record = record

    def start(self, nursery: trio.Nursery, nodes: Iterable[NodeInfo]) -> None:
        """A replay task in *nursery* for each of *nodes* that has none yet."""
        for node in nodes:
            if node.name not in self._replaying:
                self._replaying.add(node.name)
                nursery.start_soon(self._replay_hints, node.name)

    def hints_added(self) -> None:
        """New hints were kept: wake the tasks waiting for some."""
        self._hints_added_count += 1
        self._hints_added.set()
        self._hints_added = trio.Event()

    async def _replay_hints(self, node: str) -> None:
        """Stream the hints of *node* to it, oldest first, whenever it is reachable."""
        delay = 0.05
        while True:
            if not self.record.has_node(node):
                self._replaying.discard(node)  # it left the layout (its hints were dropped)
                return
            added = self._hints_added_count
            pending = await self._offload(self.hints.pending, node, 64)
            if not pending:
                # Hints are kept through hints_added: until it is called again, asking the
                # hint store is a worker-thread hop and a query for nothing (an idle node made
                # two a second). The site mode is still looked at every second, and the store
                # asked again after _REQUERY_S whatever happened: a hint kept without its call
                # reaching this replayer (an add whose caller was cancelled once the thread
                # had written it) must not wait for the next restart.
                asked = trio.current_time()
                while (added == self._hints_added_count and self.record.has_node(node)
                       and trio.current_time() - asked < _REQUERY_S):
                    await self._maybe_restore()
                    with trio.move_on_after(1.0):
                        await self._hints_added.wait()
                continue
            done: list[int] = []
            waiting = False
            try:
                for hint in pending:
                    if hint.bucket is None or hint.key is None:
                        done.append(hint.id)  # its tenant was shredded: nothing to replay
                    elif await self._replay_one(node, hint.tenant, hint.bucket, hint.key,
                                                hint.hlc, hint.node):
                        self._unheld_since.pop(hint.id, None)
                        done.append(hint.id)
                    elif self._give_up(hint.id):
                        done.append(hint.id)
                    else:
                        waiting = True
                delay = 0.05
                if waiting and not done:
                    await trio.sleep(min(1.0, self.timeout))
            except HdsdError as exc:
                if isinstance(exc, Unavailable):
                    self.peer_was_lost = self.peer_was_lost or self.mode.degraded
                log.debug("event=hint_replay_blocked peer=%s error=%s", node, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if done:
                    await self._offload(self.hints.remove, done)

    def _give_up(self, hint_id: int) -> bool:
        """No replica holds the hinted version: drop the hint once that has lasted twice the
        write timeout (no request of the refused write can still be committing by then)."""
        now = trio.current_time()
        first = self._unheld_since.setdefault(hint_id, now)
        if now - first < 2 * self.timeout:
            return False
        del self._unheld_since[hint_id]
        return True

    async def _replay_one(self, node: str, tenant: str, bucket: str, key: str, hlc: int,
                          origin: str) -> bool:
        """Bring *node* the version named by a hint, with its chunks. False if no replica
        holds the version (yet)."""
        found = await self._load(tenant, bucket, key, hlc, origin, exclude=node)
        if found is None:
            return False
        version, chunks = found
        if node == self.name:
            await self.store.commit([*chunks, version])
            return True
        await push_version(self.peers, node, self.layout_id, version, chunks, hint=True)
        return True

    async def _load(self, tenant: str, bucket: str, key: str, hlc: int, origin: str, *,
                    exclude: str) -> tuple[Version, list[ChunkRecord]] | None:
        """A version and its chunks, from this node's store or another replica's.

        None only if every replica asked answered that it does not hold the version whole
        (a replica that names it but lacks a chunk of it, or holds one damaged, does not hold
        it: another may); an unreachable replica raises, so the hint is kept and retried.
        Without that, one hint whose content no replica has would block every hint behind it
        for its target, at each replay, for ever; as it is, it is given up as unheld.
        """
        version = self.store.get_version(tenant, bucket, key, hlc, origin)
        if version is None and self.store.is_purged(tenant, bucket, key, hlc, origin):
            return None  # deleted for good since: its purge record has hints of its own
        if version is not None and exclude != self.name:
            try:
                return version, await local_chunks(self.store, self._offload, version)
            except (NotFound, IntegrityError) as exc:
                log.warning("event=hint_replay_local_chunk_unreadable key=%s error=%s", key, exc)
        replicas = self.replicas_for(tenant, bucket, key)
        others = [n for nodes in replicas.values() for n in nodes
                  if n not in (self.name, exclude)]
        unreachable: HdsdError | None = None
        for node in others:
            try:
                body = await self.peers.call(
                    node, FetchVersions(UNSENT, self.layout_id, tenant, bucket, key))
                known = [Version.from_wire(v) for v in body["versions"]]
                found = next((v for v in known if v.order == (hlc, origin)), None)
                if found is None:
                    continue
                chunks = [] if found.inline is not None else await fetch_chunks(
                    self.peers, node, self.layout_id, tenant, found.chunks)
                return found, chunks
            except (NotFound, IntegrityError):
                continue  # it names the version but cannot serve a chunk of it
            except HdsdError as exc:
                unreachable = exc
        if unreachable is not None:
            raise unreachable
        return None

    async def _maybe_restore(self) -> None:
        if not self.mode.degraded:
            self.peer_was_lost = False
            return
        remote = [n.name for n in self.layout.site_nodes(self.layout.other_site(self.site))]
        reachable = True
        for node in remote:
            try:
                with deadline(2.0, f"peer {node} did not answer within 2 s"):
                    await self.peers.call(node, PeerStatusRequest(UNSENT, self.layout_id))
            except HdsdError:
                reachable = False
        if not reachable:
            self.peer_was_lost = True
            return
        if self.peer_was_lost and self.hints.backlog().versions == 0:
            self.mode.set("normal", reason="other site back and every hint replayed",
                          by=self.name, automatic=True)
            self.doubts.doubt(None, "the site returned to normal")
            self.peer_was_lost = False
