"""Hint replay, a part of :class:`~hdsd.replication.Replicator` (kept apart for size).

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

import trio

from .._errors import HdsdError, Unavailable
from ..cluster import Layout, LayoutRecord
from ..peers import Offload, PeerLink, fetch_chunks, local_chunks, push_version
from ..store import ChunkRecord, Version
from ..wire import UNSENT, FetchVersions, PeerStatusRequest
from ._doubts import PeerDoubts
from ._hints import HintStore
from ._mode import ModeState
from ._types import LocalStore, Replicas

__all__ = ["HintReplay"]

log = logging.getLogger("hdsd.replication")


class HintReplay:
    """Mixin: the replay half of the Replicator (which provides these attributes)."""

    name: str
    site: str
    layout: Layout
    layout_id: str
    store: LocalStore
    peers: PeerLink
    hints: HintStore
    mode: ModeState
    timeout: float
    _offload: Offload
    _hints_added: trio.Event
    _peer_was_lost: bool
    _unheld_since: dict[int, float]
    doubts: PeerDoubts
    record: LayoutRecord
    _replaying: set[str]

    def replicas_for(self, tenant: str, bucket: str, key: str) -> Replicas:
        raise NotImplementedError

    async def _replay_hints(self, node: str) -> None:
        """Stream the hints of *node* to it, oldest first, whenever it is reachable."""
        delay = 0.05
        while True:
            if not self.record.has_node(node):
                self._replaying.discard(node)  # it left the layout (its hints were dropped)
                return
            pending = await self._offload(self.hints.pending, node, 64)
            if not pending:
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
                    self._peer_was_lost = self._peer_was_lost or self.mode.degraded
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
        await push_version(self.peers, node, self.layout_id, version, chunks,
                           timeout=self.timeout, hint=True)
        return True

    async def _load(self, tenant: str, bucket: str, key: str, hlc: int, origin: str, *,
                    exclude: str) -> tuple[Version, list[ChunkRecord]] | None:
        """A version and its chunks, from this node's store or another replica's.

        None only if every replica asked answered that it does not hold the version; an
        unreachable replica raises, so the hint is kept and retried.
        """
        version = self.store.get_version(tenant, bucket, key, hlc, origin)
        if version is not None and exclude != self.name:
            return version, await local_chunks(self.store, self._offload, version)
        replicas = self.replicas_for(tenant, bucket, key)
        others = [n for nodes in replicas.values() for n in nodes
                  if n not in (self.name, exclude)]
        unreachable: HdsdError | None = None
        for node in others:
            try:
                body = await self.peers.call(
                    node, FetchVersions(UNSENT, self.layout_id, tenant, bucket, key),
                    timeout=self.timeout)
                known = [Version.from_wire(v) for v in body["versions"]]
                found = next((v for v in known if v.order == (hlc, origin)), None)
                if found is None:
                    continue
                chunks = [] if found.inline is not None else await fetch_chunks(
                    self.peers, node, self.layout_id, tenant, found.chunks, timeout=self.timeout)
                return found, chunks
            except HdsdError as exc:
                unreachable = exc
        if unreachable is not None:
            raise unreachable
        return None

    async def _maybe_restore(self) -> None:
        if not self.mode.degraded:
            self._peer_was_lost = False
            return
        remote = [n.name for n in self.layout.site_nodes(self.layout.other_site(self.site))]
        reachable = True
        for node in remote:
            try:
                await self.peers.call(node, PeerStatusRequest(UNSENT, self.layout_id),
                                      timeout=min(self.timeout, 2.0))
            except HdsdError:
                reachable = False
        if not reachable:
            self._peer_was_lost = True
            return
        if self._peer_was_lost and self.hints.backlog().versions == 0:
            self.mode.set("normal", reason="other site back and every hint replayed",
                          by=self.name, automatic=True)
            self.doubts.doubt(None, "the site returned to normal")
            self._peer_was_lost = False
