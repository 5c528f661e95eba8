"""The write coordinator: fan each write out to every replica in parallel, acknowledge when the
write policy holds, and keep hints for whoever lags.

Theory of operation. A put is a sequence of *writes* to the same replica set (the key's
placement): one per chunk, pipelined by the caller, then one for the version record. Each write
is sent to every replica at once — the coordinator's own store when it is a replica, the others
through :class:`PeerLink` — and :meth:`Replicator.write` returns as soon as the policy holds:
``each-site`` needs an fsync in both sites, so the client's acknowledgement (and the credit that
lets it send more) waits for the slower site; nothing is stored first and forwarded after.

Sends still running when the policy holds go on in the background (bounded by the write
timeout). The common case — one replica per site, this node one of them — runs in the caller's
task instead: the local commit is queued (:meth:`LocalStore.start_commit`), the peer call made,
then the commit awaited, all shielded from the caller's cancellation and bounded by the write
timeout. ``each-site`` and ``majority`` (of two: both) wait for both answers; ``local`` waits
for the peer's only a grace drawn from its recent answer times (a healthy peer answers within
it, and needs no hint), over a live link only (towards a peer that is down the general path
leaves the reconnection to a background task).

Any replica that had not confirmed *every* write of the put when the version is acknowledged
gets a durable hint (see :mod:`._hints`) before the client hears "ok"; replay
brings it up to date later. If the policy cannot be met in time the write fails with
:class:`QuorumNotReached` naming who answered: nothing is acknowledged, and a retry with the
same request id is safe.

A refused write may still have stored its version on some replicas (it surfaces: replicas merge
by union). Such a version is never left on one site silently: whenever any replica confirmed it,
or a replica's outcome is unknown (no answer, a broken link), every replica that did not confirm
gets a hint, wherever the coordinator sits (also when it is not a replica of the key), so the
live RPO counts it and replay completes it. A replica whose outcome stays unknown also puts the
peers in doubt (:mod:`._doubts`) until an anti-entropy round has compared them.

A retry of a request whose earlier attempt stored a version goes through :meth:`settle`: the
same version is driven to the replicas the policy needs, and the retry is acknowledged only
once the policy holds for it — a refusal never turns into an acknowledgement by being replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import trio

from .._errors import DiskFullError, HdsdError, QuorumNotReached, Unavailable
from ..cluster import PLANS, Layout, LayoutRecord, placement_key
from ..peers import BATCH_BYTES, Offload, SendHookLink, replicate_message, to_thread
from ..store import ChunkRecord, EncodedCommit, Version
from ..wire import UNSENT, FetchChunk, FetchVersions
from ._doubts import PeerDoubts
from ._hints import Backlog, HintStore
from ._mode import ModeState
from ._policy import WritePolicy, policy_met, policy_still_possible
from ._replay import HintReplayer
from ._types import LocalCommit, LocalStore, Replicas

__all__ = ["LocalStore", "Replicator"]

log = logging.getLogger("hdsd.replication")

_LAG_GRACE_S = 0.005
# Under `local`, a pair write waits for its peer's answer as long as TCP waits for an ack: the
# peer's smoothed answer time (send to answer) plus four times its smoothed deviation (RFC
# 6298), within these bounds: a healthy peer's answer then lands inside the grace (no hint,
# whose fsync and replay cost more than the wait), a peer slower than its habit is not waited
# for, and one that stays slow is waited for at most the upper bound. That bound keeps what an
# operator picks `local` for: an acknowledgement that does not follow the other site's round
# trip. A site in the same metro area (a few ms away, even loaded) is waited for; one farther
# (a WAN) is not, and its writes are hinted as they were before the grace adapted.
_GRACE_MIN_S = 0.005
_GRACE_MAX_S = 0.02
# Concurrent writes to one peer share a Replicate request up to this many bytes (well under a
# frame); a write above half of it goes alone.
_BATCH_BYTES_MAX = 1 << 20
_VERSION_BYTES = 512  # what a version record without inline data weighs, about


def _weight(chunks: Sequence[ChunkRecord], versions: Sequence[Version]) -> int:
    """About how many bytes the records take in a ``Replicate`` (loops, not generators: this
    runs on every replicated write)."""
    nbytes = _VERSION_BYTES * len(versions)
    for c in chunks:
        nbytes += len(c.payload)
    for v in versions:
        if v.inline is not None:
            nbytes += len(v.inline)
    return nbytes


class _Batch:
    """Records of concurrent writes travelling to one peer in one Replicate request."""

    __slots__ = ("chunks", "done", "error", "nbytes", "on_sent", "versions")

    def __init__(self, chunks: list[ChunkRecord], versions: list[Version | dict[str, Any]],
                 nbytes: int) -> None:
        self.chunks = chunks
        self.versions = versions
        self.nbytes = nbytes
        self.done = trio.Event()
        self.error: HdsdError | None = None
        self.on_sent: list[Callable[[], None]] = []  # each write's hook (SendHookLink.call's sent)

    def sent(self) -> None:
        for hook in self.on_sent:
            hook()


class Replicator:
    def __init__(self, *, name: str, site: str, layout: Layout, store: LocalStore,
                 peers: SendHookLink, hints: HintStore, mode: ModeState, policy: WritePolicy,
                 on_peer_site_loss: str, timeout: float, offload: Offload = to_thread,
                 plan_of: Callable[[str], str] = lambda tenant: "standard",
                 doubts: PeerDoubts | None = None,
                 alone: Callable[[], bool] = lambda: False) -> None:
        self.name = name
        self.site = site
        self.layout = layout
        self.layout_id = layout.layout_id
        # The layout version in force: while it migrates, keys live on the union of their old
        # and new replicas (see hdsd.cluster.LayoutRecord); set_record switches it live.
        self.record = LayoutRecord(cluster_id="", version=0, layout=layout)
        self.store = store
        self.peers = peers
        self.hints = hints
        self.mode = mode
        self.policy = policy
        self.on_peer_site_loss = on_peer_site_loss
        self.timeout = timeout
        # Peers whose agreement with this node an unanswered write put in doubt.
        self.doubts = doubts if doubts is not None else PeerDoubts(
            n.name for n in layout.nodes if n.name != name)
        # Blocking calls (hint fsyncs, chunk reads) run through this: a worker thread in the
        # node, inline in the deterministic simulation (threads and a mock clock do not mix).
        self._offload = offload
        self._background: trio.Nursery | None = None
        self._batches: dict[str, _Batch] = {}  # peer -> the batch still taking writes
        self._graced_batches: dict[str, _Batch] = {}  # the same for `local` (_write_pair)
        # `local`: per peer, its smoothed answer time and deviation, and the grace they give.
        self._answer_s: dict[str, tuple[float, float]] = {}
        self._grace_s: dict[str, float] = {}
        # Whether no other request is in flight on the node (the node says; the default keeps
        # every write open to company): a write then has nobody to share its Replicate with.
        self.alone = alone
        # A tenant's plan (standard: storage nodes; backup: backup nodes) decides where its
        # keys live; the node injects the catalog's answer (replication knows no catalog).
        self.plan_of = plan_of
        self._every_key: dict[str, Replicas] = {}
        self._sole_here: frozenset[str] = frozenset()
        self._fixed_placements()
        self.replay = HintReplayer(name=name, site=site, record=self.record, store=store,
                                   peers=peers, hints=hints, mode=mode, doubts=self.doubts,
                                   timeout=timeout, offload=offload,
                                   replicas_for=self.replicas_for)

    def _fixed_placements(self) -> None:
        # Per plan: when each site has no more nodes of the plan's role than it keeps copies
        # (the usual 1+1), every key lives on all of them: no hashing needed. Never while the
        # layout migrates (two placements).
        self._every_key = {}
        self._sole_here = frozenset()
        if self.record.migrating:
            return
        for plan in PLANS:
            fixed = self.layout.fixed_replicas(plan)
            if fixed is not None:
                self._every_key[plan] = {site: [n.name for n in nodes]
                                         for site, nodes in fixed.items()}
        # The plans whose every key has this node as its only replica here (the usual 1+1):
        # a read asks nobody else (sole_replica_here), decided without building a placement.
        self._sole_here = frozenset(
            plan for plan, every in self._every_key.items()
            if every.get(self.site) == [self.name])

    def set_record(self, record: LayoutRecord) -> None:
        """Switch to a new layout version, live: placement, the layout id sent, and hint
        replay for nodes that joined. Writes already running keep the replicas they chose
        (every phase accepts the ids of the one before it)."""
        self.record = record
        self.layout = record.layout
        self.layout_id = record.layout.layout_id
        self._fixed_placements()
        self.replay.set_record(record)
        self.doubts.add_peers(n.name for n in record.all_nodes() if n.name != self.name)
        for target in self.hints.targets():
            if not record.has_node(target):
                dropped = self.hints.drop_target(target)
                log.info("event=hints_dropped target=%s versions=%d reason=left_the_layout",
                         target, dropped)
        if self._background is not None:
            self.replay.start(self._background, record.all_nodes())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the background sends and the hint replay until cancelled."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            self.replay.start(nursery, self.record.all_nodes())
            task_status.started()
            await trio.sleep_forever()

    def effective_policy(self) -> WritePolicy:
        return "local" if self.mode.degraded else self.policy

    def replicas_for(self, tenant: str, bucket: str, key: str) -> Replicas:
        """The nodes holding the key, per site: storage nodes for a standard tenant, backup
        nodes for a backup-plan one (every write, hint, read and repair goes through here)."""
        plan = self.plan_of(tenant)
        every = self._every_key.get(plan)
        if every is not None:
            return {site: list(nodes) for site, nodes in every.items()}
        # While migrating: the union of both layouts' replicas, the policy checked in each.
        return self.record.placement(placement_key(tenant, bucket, key), plan)

    def sole_replica_here(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether this node is the key's only replica in its site: ``replicas_for(...)[site]
        == [this node]``, without a placement built when it does not depend on the key (a
        small get asks it first; the dict of lists was ~10 Python calls of its ~470)."""
        plan = self.plan_of(tenant)
        if plan in self._sole_here:
            return True
        if plan in self._every_key:
            return False
        here = self.replicas_for(tenant, bucket, key).get(self.site, [])
        return len(here) == 1 and here[0] == self.name

    # -- the write path --------------------------------------------------------------------
    async def write(self, replicas: Replicas, chunks: Sequence[ChunkRecord],
                    versions: Sequence[Version], *, missed: Collection[str] = ()) -> set[str]:
        """Store the records on every replica; return once the policy holds.

        Returns the replicas that had not confirmed yet (they need a hint if this write ends a
        put). Raises :class:`QuorumNotReached` if the policy cannot be met in time.

        *missed*: the replicas that did not confirm an earlier write of the chunks these
        versions name (a chunked put's chunks, when the policy did not wait for every
        replica). The records are not sent to them: such a replica would hold a version
        naming content it lacks — unreadable there, and, if the put then failed, a version
        no node could ever complete. They count as not confirmed, for the policy too, so the
        caller hints them, and the hint's replay carries the chunks with the version.
        """
        assert self._background is not None, "Replicator.run must be running"
        policy = self.effective_policy()
        targets = [n for nodes in replicas.values() for n in nodes]
        acked: set[str] = set()
        failed: dict[str, HdsdError] = {}
        if missed:
            failed.update((n, Unavailable(f"{n} did not confirm every chunk of the version"))
                          for n in targets if n in missed)
            if failed:
                return await self._write_general(policy, replicas, targets, chunks, versions,
                                                 acked, failed)
        if (len(targets) == 2 and self.name in targets
                and [len(nodes) for nodes in replicas.values()] == [1, 1]):
            # The common case (one replica per site, this node one of them) in the caller's
            # task, no background task. each-site and majority (of two: both) need both, so
            # nothing can be acknowledged early. local needs this node's commit only: the peer
            # gets a grace once its request is out (its usual answer time, see _answered),
            # then lags (a hint). Only over a live link: towards a peer that is down (degraded
            # mode) the session's reconnection would hold every put; the general path leaves
            # it to a background task.
            peer = targets[0] if targets[1] == self.name else targets[1]
            grace = None
            if policy == "local":
                if not self.peers.reachable(peer):
                    return await self._write_general(policy, replicas, targets, chunks,
                                                     versions, acked, failed)
                grace = self._grace_s.get(peer, _GRACE_MIN_S)
            await self._write_pair(targets, chunks, versions, acked, failed, grace)
            # Confirmed where the policy needs it, in a plain placement (no layout parts, each
            # with its own sites, to hold the policy in): no need to ask policy_met. This
            # node is the one replica of its site, so under local its commit is the policy.
            if type(replicas) is dict and (len(acked) == 2 or (
                    grace is not None and self.name in acked)):
                return set(targets) - acked
            if policy_met(policy, replicas, acked, self.site):
                return set(targets) - acked
            return await self._not_met(policy, replicas, targets, versions, acked, failed,
                                       self._may_degrade(replicas, acked, failed))
        return await self._write_general(policy, replicas, targets, chunks, versions, acked,
                                         failed)

    async def _write_general(self, policy: WritePolicy, replicas: Replicas, targets: list[str],
                             chunks: Sequence[ChunkRecord], versions: Sequence[Version],
                             acked: set[str], failed: dict[str, HdsdError]) -> set[str]:
        """:meth:`write` for any placement and policy: one background send per replica,
        acknowledged once the policy holds (the sends still running go on, bounded by the
        write timeout)."""
        assert self._background is not None
        settled = trio.Event()
        local_done = trio.Event()
        all_done = trio.Event()

        def check() -> None:
            if len(acked) + len(failed) == len(targets):
                all_done.set()
            if (policy_met(policy, replicas, acked, self.site)
                    or not policy_still_possible(policy, replicas, set(failed), self.site)
                    or all_done.is_set()):
                settled.set()

        async def deliver(node: str) -> None:
            try:
                if node == self.name:
                    await self.store.commit([*chunks, *versions])
                else:
                    # Batched like the pair's path: under `local` or `majority` the puts of
                    # many clients otherwise cost each peer one frame, one task and one commit
                    # apiece (measured: a `local` 4 KiB put took twice the CPU of an
                    # `each-site` one).
                    await self._replicate_to(node, chunks, versions)
                acked.add(node)
            except HdsdError as exc:
                failed[node] = exc
            finally:
                if node == self.name:
                    local_done.set()
                check()

        for node in targets:
            if node not in failed:  # failed already: a replica that missed a chunk (write)
                self._background.start_soon(deliver, node)
        if self.name in failed:
            local_done.set()
        check()
        with trio.move_on_after(self.timeout):
            await settled.wait()
        if policy_met(policy, replicas, acked, self.site):
            # A replica the policy did not wait for (local, majority) usually confirms a moment
            # later: a short grace saves the durable hint (an fsync) a healthy one would cost.
            with trio.move_on_after(_LAG_GRACE_S):
                await all_done.wait()
            return set(targets) - acked
        degrade = self._may_degrade(replicas, acked, failed)
        if self.name in targets and versions and not degrade:
            with trio.move_on_after(self.timeout):
                await local_done.wait()
        return await self._not_met(policy, replicas, targets, versions, acked, failed, degrade)

    async def _replicate_to(self, peer: str, chunks: Sequence[ChunkRecord],
                            versions: Sequence[Version],
                            sent: Callable[[], None] | None = None,
                            shielded: bool = False,
                            wire: Sequence[Version | dict[str, Any]] | None = None,
                            grace: float | None = None) -> None:
        """Store the records on *peer*; raises what its reply (or the link) says.

        Small writes to the same peer that start together share one Replicate request: the
        first opens a batch and yields once, so the writes of requests that arrived in the
        same reads join it; then one frame, one task and one commit (one batch, all or
        nothing) on the peer, one reply. A write made while no other request is in flight on
        the node (``alone``: a lone put) is sent at once: nobody could join it, and the yield
        would cost it a scheduler pass for nothing. Every write in a
        batch gets the batch's outcome; one that ends without an answer (the caller's
        timeout) is :class:`Unavailable` — outcome unknown — for all of them, as it would be
        for each alone. *sent* is called once the records are on their way (see
        :meth:`SendHookLink.call`), by whoever sends the batch they are in. *wire*: the
        versions as sent, if not *versions* themselves (sealed here already). *grace*: the
        caller stops waiting for the answer that long after the send (``local``); such writes
        batch among themselves only, so that a write that waits for the answer (a mode
        switch can have both kinds in flight) never takes "not answered" from a batch whose
        sender stopped waiting early. They wait no longer than the grace for a free slot of
        the link either (the peer has as many requests in flight as the link allows: it is
        slow): then nothing is sent, and the caller hints the peer.
        """
        nbytes = _weight(chunks, versions)
        if wire is None:
            wire = versions
        batches = self._batches if grace is None else self._graced_batches
        batch = batches.get(peer)
        if batch is not None and batch.nbytes + nbytes <= _BATCH_BYTES_MAX:
            batch.chunks.extend(chunks)
            batch.versions.extend(wire)
            batch.nbytes += nbytes
            if sent is not None:
                batch.on_sent.append(sent)
            await batch.done.wait()
            if batch.error is not None:
                # A fresh exception per waiter (one object raised in many tasks would share,
                # and scramble, its traceback).
                raise type(batch.error)(batch.error.message)
            return
        if nbytes > _BATCH_BYTES_MAX // 2 or self.alone():
            # Alone (large, or no other request in flight on the node: a lone put): sent at
            # once. Yielding for company nobody can bring costs a lone write a scheduler pass
            # for nothing.
            await self.peers.call(peer, replicate_message(self.layout_id, chunks, wire),
                                  sent=sent, shielded=shielded, slot_wait=grace)
            return
        batch = batches[peer] = _Batch(list(chunks), list(wire), nbytes)
        if sent is not None:
            batch.on_sent.append(sent)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()  # let the others join
        finally:
            if batches.get(peer) is batch:
                del batches[peer]
        try:
            await self.peers.call(peer, replicate_message(self.layout_id, batch.chunks,
                                                          batch.versions), sent=batch.sent,
                                  shielded=shielded, slot_wait=grace)
        except HdsdError as exc:
            batch.error = exc
            raise
        except BaseException:
            batch.error = Unavailable(f"peer {peer}: the write was not answered in time")
            raise
        finally:
            batch.done.set()

    async def _write_pair(self, targets: list[str], chunks: Sequence[ChunkRecord],
                          versions: Sequence[Version], acked: set[str],
                          failed: dict[str, HdsdError], grace: float | None = None) -> None:
        """Commit here and on the one other replica in parallel, in this task: the log writer
        syncs while the peer's round trip runs. Fills *acked* and *failed*.

        *grace* (the ``local`` policy, which needs this node's commit only): the peer's
        answer is awaited that long once its request is on its way, no longer; a peer that
        has not answered by then is not in *acked* (the caller hints it): in *failed* neither,
        or as :class:`Unavailable` when its records shared a batch whose sender's grace ended
        first. A link with as many requests in flight as it allows (a slow peer: a request
        whose answer the grace cut keeps its slot until the answer) is waited for no longer
        than the grace either: nothing is sent, the peer lags (:class:`RequestTimeout` in
        *failed*), and the acknowledgement does not follow the slow peer.
        Its request is not cut (it is out), only the wait for its answer: the peer stores
        the records all the same, and its late answer is dropped by the session as any
        abandoned request's is — the hint stands for whatever it would have said. Counted
        from the send, not from the local commit (one task cannot wait for both at once):
        the local fsync usually ends first (the peer's answer includes its own fsync and a
        round trip). The time the answer took (the grace, if none came) feeds the peer's
        smoothed answer time, from which the next grace is drawn (:meth:`_answered`).

        The local commit is queued as soon as the peer's request is on its way (or could not
        be sent), not before: queueing wakes the log writer thread, which would take the GIL
        while the event loop still has the request to encrypt and send, and the peer's round
        trip is the longer of the two anyway. Its versions are encoded before the request,
        though: the peer stores them as sealed here instead of sealing their names a second
        time (``EncodedCommit.wire_versions``).

        Shielded (bounded by the write timeout): a client that goes away must not cut the
        peer request mid-frame (that would close the shared peer session) nor leave the
        records on one site without the hint the caller keeps when the policy fails.
        """
        peer = targets[0] if targets[1] == self.name else targets[1]
        local: LocalCommit | None = None
        started = False
        sealed: EncodedCommit | None = None
        try:
            # The versions only: a chunk's checksum (a megabyte's) is still taken once the
            # request is on its way.
            sealed = self.store.encode_commit(versions) if versions else None
        except HdsdError as exc:
            failed[self.name] = exc

        def start_local() -> None:
            nonlocal local, started
            if started or self.name in failed:
                return
            started = True
            try:
                local = (self.store.start_commit(chunks) if sealed is None
                         else self.store.start_encoded(sealed, chunks))
            except HdsdError as exc:
                failed[self.name] = exc

        sent_at: float | None = None

        def sent() -> None:
            nonlocal sent_at
            start_local()
            if grace is not None:
                sent_at = trio.current_time()
                scope.deadline = min(scope.deadline, sent_at + grace)

        async def commit_here() -> None:
            start_local()  # the request was not sent (or not by us): commit here all the same
            if local is not None:
                try:
                    await local.wait()
                    acked.add(self.name)
                except HdsdError as exc:
                    failed[self.name] = exc
                finally:
                    local.abandon()

        # One shielded scope bounds the peer's round trip, then the local commit: the whole
        # write gets the write timeout, and the local commit at least half of it. A peer that
        # answered in the first half leaves the commit that much (usually durable already:
        # the round trip outlasts the fsync); one that answered later has the deadline moved
        # for the commit by a whole timeout, as two nested timeouts would give it (moving it
        # on every write cost ~20 Python calls). Under `local` the deadline is moved always
        # (the grace had brought it near). Only when the peer's part timed out (the scope is
        # cancelled for good) does the local commit need a scope of its own.
        waited_here = False
        began = trio.current_time()
        with trio.CancelScope(shield=True, deadline=began + self.timeout) as scope:
            try:
                # (shielded, and its deadline earlier than the link's own bound)
                await self._replicate_to(
                    peer, chunks, versions, sent=start_local if grace is None else sent,
                    shielded=True,
                    wire=None if sealed is None else sealed.wire_versions(versions),
                    grace=grace)
                acked.add(peer)
            except HdsdError as exc:
                failed[peer] = exc
            now = trio.current_time()
            if sent_at is not None:
                self._answered(peer, now - sent_at)
                sent_at = None
            if not scope.cancel_called:
                if grace is not None or now - began > self.timeout / 2:
                    scope.deadline = now + self.timeout
                waited_here = True
                await commit_here()
        if not waited_here:
            if grace is not None and sent_at is not None:
                self._answered(peer, grace)  # cut by the grace: it took at least that
            with trio.CancelScope(shield=True, deadline=trio.current_time() + self.timeout):
                await commit_here()

    def _answered(self, peer: str, took: float) -> None:
        """A graced write's peer answered in *took* seconds: smooth it as TCP smooths its
        round trip (RFC 6298: 1/8 of the way, the deviation 1/4) and draw the next grace."""
        last = self._answer_s.get(peer)
        if last is None:
            smooth, deviation = took, took / 2
        else:
            smooth, deviation = last
            deviation += (abs(smooth - took) - deviation) / 4
            smooth += (took - smooth) / 8
        self._answer_s[peer] = (smooth, deviation)
        self._grace_s[peer] = min(max(smooth + 4 * deviation, _GRACE_MIN_S), _GRACE_MAX_S)

    def _may_degrade(self, replicas: Replicas, acked: set[str],
                     failed: dict[str, HdsdError]) -> bool:
        return (self.on_peer_site_loss == "degrade"
                and self._peer_site_lost(replicas, acked, failed))

    async def _not_met(self, policy: str, replicas: Replicas, targets: list[str],
                       versions: Sequence[Version], acked: set[str],
                       failed: dict[str, HdsdError], degrade: bool) -> set[str]:
        """The policy did not hold in time: degrade if configured to, else refuse."""
        if degrade:
            self.mode.set("degraded", reason="peer site unreachable (on_peer_site_loss = "
                          "degrade)", by=self.name, automatic=True)
            self.replay.peer_was_lost = True
            if policy_met("local", replicas, acked, self.site):
                return set(targets) - acked
        await self._hint_refused(targets, versions, acked, failed)
        explained = self._explain(policy, targets, acked, failed)
        full = sorted(n for n, exc in failed.items() if isinstance(exc, DiskFullError))
        if full:
            # Say what the operator must fix (space), not only that the policy failed.
            raise DiskFullError(f"no space left on the data disk of {', '.join(full)}; "
                                f"{explained}")
        raise QuorumNotReached(explained)

    async def _hint_refused(self, targets: list[str], versions: Sequence[Version],
                            acked: set[str], failed: dict[str, HdsdError]) -> None:
        """A refused write may have stored its versions somewhere: a replica confirmed them,
        or did not say (no answer, a broken link: it may commit them later). Either way they
        may surface (merge is a union), so every replica that did not confirm gets a hint —
        the live RPO counts them and replay completes them (or drops the hint once no replica
        turns out to hold them). Only a write every replica definitely refused needs none."""
        if not versions:
            return
        unknown = [n for n in targets
                   if n not in acked and (n not in failed or isinstance(failed[n], Unavailable))]
        if unknown:
            self.doubts.doubt([n for n in unknown if n != self.name],
                              "a write to it ended without an answer")
        if not acked and not unknown:
            return
        try:
            await self.keep_hints(set(targets) - acked, versions)
        except HdsdError as exc:
            log.warning("event=hint_failed error=%s", exc)

    def _peer_site_lost(self, replicas: Replicas, acked: set[str],
                        failed: dict[str, HdsdError]) -> bool:
        """Every replica in the other site is unreachable or silent (not refusing: a replica
        that answered with an error is alive, and degrading would not help)."""
        remote = replicas[self.layout.other_site(self.site)]
        return bool(remote) and all(
            n not in acked and (n not in failed or isinstance(failed[n], Unavailable))
            for n in remote)

    def _explain(self, policy: str, targets: list[str], acked: set[str],
                 failed: dict[str, HdsdError]) -> str:
        parts = [f"write policy {policy} not met within {self.timeout:g} s; nothing was "
                 "acknowledged (retry with the same request id)",
                 f"confirmed by: {', '.join(sorted(acked)) or 'none'}"]
        parts += [f"{n}: {exc}" for n, exc in sorted(failed.items())]
        silent = [n for n in targets if n not in acked and n not in failed]
        if silent:
            parts.append(f"no answer from: {', '.join(silent)}")
        return "; ".join(parts)

    # -- retries -------------------------------------------------------------------------
    async def settle(self, replicas: Replicas, version: Version) -> set[str]:
        """Acknowledge *version* — stored on some replica by an earlier attempt of the same
        request — only once the policy holds for it: find the replicas that hold it, copy it
        (chunks first) to those that answered that they lack it, and return as :meth:`write`
        does (the replicas still lacking it, to hint) or raise :class:`QuorumNotReached`.

        Never writes a second version: a retry completes the first attempt or fails again.
        """
        policy = self.effective_policy()
        targets = [n for nodes in replicas.values() for n in nodes]
        holders: set[str] = set()
        lacking: set[str] = set()
        failed: dict[str, HdsdError] = {}

        async def ask(node: str) -> None:
            try:
                if await self._holds(node, version):
                    holders.add(node)
                else:
                    lacking.add(node)
            except HdsdError as exc:
                failed[node] = exc

        async with trio.open_nursery() as nursery:
            for node in targets:
                nursery.start_soon(ask, node)
        if not policy_met(policy, replicas, holders, self.site) and holders and lacking:
            await self._copy(version, sorted(holders), sorted(lacking), holders, failed)
        if policy_met(policy, replicas, holders, self.site):
            return set(targets) - holders
        return await self._not_met(policy, replicas, targets, [version], holders, failed,
                                   self._may_degrade(replicas, holders, failed))

    async def _holds(self, node: str, version: Version) -> bool:
        """Whether *node* has *version* durably (its index, or its recent commits)."""
        if node == self.name:
            v = version
            if self.store.get_version(v.tenant, v.bucket, v.key, v.hlc, v.node) is not None:
                return True
            found = self.store.find_request(v.tenant, v.request_id) if v.request_id else None
            return found is not None and found.order == v.order
        body = await self.peers.call(
            node, FetchVersions(UNSENT, self.layout_id, version.tenant, version.bucket,
                                version.key))
        return any((w.get("h"), w.get("n")) == version.order for w in body["versions"])

    async def _copy(self, version: Version, sources: list[str], lacking: list[str],
                    acked: set[str], failed: dict[str, HdsdError]) -> None:
        """Copy *version* from one of *sources* to every node of *lacking*, in frame-sized
        batches of chunks (bounded memory whatever the size), the version record last.
        Adds each node that confirmed to *acked*, each that failed to *failed*."""
        source = self.name if self.name in sources else sources[0]
        alive = list(lacking)

        async def read(chunk_id: bytes) -> bytes:
            if source == self.name:
                payload: bytes = await self._offload(self.store.read_chunk, version.tenant,
                                                     chunk_id)
                return payload
            body = await self.peers.call(
                source, FetchChunk(UNSENT, self.layout_id, version.tenant, chunk_id))
            return body["payload"]

        async def send(chunks: list[ChunkRecord], versions: list[Version]) -> None:
            async def one(node: str) -> None:
                try:
                    if node == self.name:
                        await self.store.commit([*chunks, *versions])
                    else:
                        await self.peers.call(node, replicate_message(
                            self.layout_id, chunks, versions))
                except HdsdError as exc:
                    failed[node] = exc
                    alive.remove(node)
            async with trio.open_nursery() as nursery:
                for node in list(alive):
                    nursery.start_soon(one, node)

        batch: list[ChunkRecord] = []
        size = 0
        try:
            ids = [] if version.inline is not None else list(dict.fromkeys(version.chunks))
            for chunk_id in ids:
                payload = await read(chunk_id)
                batch.append(ChunkRecord(version.tenant, chunk_id, payload))
                size += len(payload)
                if size >= BATCH_BYTES:
                    await send(batch, [])
                    batch, size = [], 0
                if not alive:
                    return
        except HdsdError as exc:
            for node in alive:
                failed[node] = exc
            return
        await send(batch, [version])
        acked.update(alive)

    async def keep_hints(self, lagging: set[str], versions: Sequence[Version]) -> None:
        """Durably note that *lagging* replicas still need *versions*; call before the ack.

        This node may be one of them (its own commit failed while the others met the policy):
        its hint is replayed by pulling the records from another replica.
        """
        targets = sorted(lagging)
        if targets:
            await self._offload(self.hints.add, targets, versions)
            self.replay.hints_added()

    def backlog(self) -> dict[str, Backlog]:
        """Hints per node (this node included: versions its own disk missed)."""
        return {n.name: self.hints.backlog(n.name) for n in self.record.all_nodes()}
