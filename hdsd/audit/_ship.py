"""Shipping the node's audit records to the other site, so the log survives on another machine.

Target: the first node of the other site, in layout order, that accepts a batch. Each target has
its own durable cursor (``ship-cursor.json``: the seq and hash it acknowledged), so a target that
was down catches up from where *it* stopped, and a restart or a partition resumes without loss
or duplication (a resend of records the target holds is skipped by the receiver after it checks
that they hash to the same tail). Only durable (fdatasync'd) records are shipped.

Up to date, the shipper sleeps until the audit writer says new records are durable (a bell
rung from its thread), with a slow beat (:data:`IDLE_BEAT_S`) only as a safety net: a node at
rest no longer wakes twice a second to find nothing new. Busy, it ships at most one batch per
``interval`` (a backlog back to back).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._errors import HdsdError, Unavailable
from ..cluster import Layout
from ..peers import PeerLink
from ..wire import UNSENT, AuditShip, AuditShipped
from ._files import load_cursors, save_cursors
from ._log import AuditLog
from ._segments import Reader

__all__ = ["IDLE_BEAT_S", "AuditShipper"]

log = logging.getLogger("hdsd.audit")

_BATCH_RECORDS = 1000
_BATCH_BYTES = 1 << 20
_REFUSED_BACKOFF = 30.0
#: Up to date, the shipper looks again this often even if no bell rang (a safety net).
IDLE_BEAT_S = 30.0


class AuditShipper:
    """Runs in the node's service nursery; :meth:`flush` is called at a graceful shutdown."""

    def __init__(self, audit: AuditLog, peers: PeerLink, layout: Layout, *, site: str,
                 interval: float = 0.5) -> None:
        self.audit = audit
        self.peers = peers
        self.layout = layout
        self.site = site
        self.targets = [n.name for n in layout.nodes if n.site != site]
        self.interval = interval
        self.cursors = load_cursors(audit.directory)
        self._readers = {t: Reader(audit.directory) for t in self.targets}
        self._refused_until: dict[str, float] = {}
        self.last_error = ""
        # The final flush at shutdown runs while run() may be mid-batch: one batch at a time,
        # or both save the cursor file at once (and one rename finds its temp file gone).
        self._shipping = trio.Lock()
        self._full = False  # the last batch shipped was as large as a batch may be
        self._new_records = trio.Event()  # set (via the bell) when records became durable
        self._idle = False  # run() waits for the bell: only then does the writer ring it

    def set_layout(self, layout: Layout) -> None:
        """The layout changed (live): ship to the other site's nodes of the new one."""
        self.layout = layout
        self.targets = [n.name for n in layout.nodes if n.site != self.site]
        for t in self.targets:
            self._readers.setdefault(t, Reader(self.audit.directory))
        self._new_records.set()  # a new target may lack everything: look now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        token = trio.lowlevel.current_trio_token()

        def ring() -> None:  # the audit writer's thread
            # A busy shipper looks at its next interval anyway, and one with no target (a
            # single site) has nothing to ship: no hop for either.
            if self._idle and self.targets:
                try:
                    token.run_sync_soon(self._wake)
                except trio.RunFinishedError:
                    pass

        self.audit.on_durable = ring
        task_status.started()
        try:
            while True:
                # A backlog (catching up) is shipped batch after batch; otherwise one batch
                # per interval. Shipping whatever became durable as soon as the last batch
                # was answered made, under steady traffic, one batch per request or two: a
                # peer request, two thread hops and an fsync'd cursor file on this node, a
                # write and an fdatasync on the receiver, per client request. A record waits
                # at most an interval either way.
                shipped = await self.ship_once()
                if shipped and self._full:
                    continue
                if shipped or self.pending():  # more may follow; or no target took it
                    await trio.sleep(self.interval)
                    continue
                await self._wait_for_records()
        finally:
            if self.audit.on_durable is ring:
                self.audit.on_durable = None

    def _wake(self) -> None:
        self._new_records.set()

    async def _wait_for_records(self) -> None:
        """Up to date: wait for the bell (or the safety beat)."""
        self._new_records = trio.Event()
        # Published before the last look: the writer makes a record durable before it reads
        # _idle (both under the GIL), so either it rings or this look sees the record.
        self._idle = True
        try:
            if not self.pending():
                with trio.move_on_after(IDLE_BEAT_S):
                    await self._new_records.wait()
        finally:
            self._idle = False

    async def flush(self) -> None:
        """Ship until a target holds everything durable or no target takes a batch (the other
        site is down: the cursor resumes at the next start); the caller bounds how long."""
        while self.pending():
            if not await self.ship_once():
                return

    def pending(self) -> bool:
        durable = self.audit.durable[0]
        return bool(self.targets) and max(
            (self.cursors.get(t, (0, b""))[0] for t in self.targets), default=0) < durable

    async def ship_once(self) -> bool:
        """Send one batch to the first target that takes it; True if records were shipped."""
        async with self._shipping:
            return await self._ship_batch()

    async def _ship_batch(self) -> bool:
        durable = self.audit.durable[0]
        now = trio.current_time()
        for target in self.targets:
            after = self.cursors.get(target, (0, b""))[0]
            if after >= durable or self._refused_until.get(target, 0.0) > now:
                if after >= durable:
                    return False  # the preferred reachable target is up to date
                continue
            reader = self._readers[target]
            prev_seq, prev_hash, bodies = await trio.to_thread.run_sync(
                reader.read_after, after, durable, _BATCH_RECORDS, _BATCH_BYTES)
            if not bodies:
                continue
            self._full = (len(bodies) >= _BATCH_RECORDS
                          or sum(map(len, bodies)) >= _BATCH_BYTES)
            try:
                reply = await self.peers.call(
                    target, AuditShip(UNSENT, self.layout.layout_id, self.audit.node,
                                      self.audit.verify_key, prev_seq, prev_hash, bodies))
            except Unavailable as exc:
                self.last_error = f"{target}: {exc}"
                continue
            except HdsdError as exc:
                # Refused (chain broken, layout mismatch): an operator must look; try the next
                # target meanwhile and come back later.
                self.last_error = f"{target}: {exc}"
                log.warning("event=audit_ship_refused target=%s reason=%s", target, exc)
                self._refused_until[target] = now + _REFUSED_BACKOFF
                continue
            await self._advance(target, reply)
            return True
        return False

    async def _advance(self, target: str, reply: AuditShipped) -> None:
        seq = reply["seq"]
        self.cursors[target] = (seq, reply["hash"])
        snapshot = dict(self.cursors)
        await trio.to_thread.run_sync(save_cursors, self.audit.directory, snapshot)
        self.audit.shipped_seq = max(self.audit.shipped_seq, seq)
        self.last_error = ""

    def describe(self) -> dict[str, Any]:
        return {"durable_seq": self.audit.durable[0],
                "shipped": {t: self.cursors.get(t, (0, b""))[0] for t in self.targets},
                "last_error": self.last_error}
