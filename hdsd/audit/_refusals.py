"""Refused and failed connections, counted per source and interval before they are audited.

A refused handshake needs no credential: recording each one would let anyone grow the audit log
(and the node's log) at the speed of a TCP connect. So connection-level events — a refusal
before or during the handshake, a refusal for lack of a slot, a protocol error after Hello — are
counted by *(identity, role, tenant, op, outcome, source address)* and written as **one record
per key and interval** when the interval ends (and at a graceful stop). The record's ``key``
field holds how many events it stands for, as decimal text; its ``peer`` is the source address
without a port (the ports of a flood are noise). At most ``max_keys`` keys are tracked per
interval; beyond, events are counted under source ``*`` — the log grows by at most
``max_keys + 1`` records per outcome and interval, whatever the flood.

:meth:`RefusalCounter.note` returns True for the first event of a key in its interval, so the
node's own log line is rate-limited the same way.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import trio

__all__ = ["RefusalCounter"]

_Key = tuple[str, str, str, str, str, str]  # identity, role, tenant, op, outcome, source


class _Recorder(Protocol):
    def record(self, identity: str, role: str, tenant: str, op: str, bucket: str, key: str,
               version: str, bytes_in: int, bytes_out: int, outcome: str, peer: str) -> None: ...


class RefusalCounter:
    def __init__(self, audit: _Recorder, *, interval_s: float = 60.0, max_keys: int = 256) -> None:
        self.audit = audit
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._counts: Counter[_Key] = Counter()
        self.total = 0  # events ever noted (status)
        self.records = 0  # audit records written for them

    def note(self, identity: str, role: str, tenant: str, op: str, outcome: str,
             source: str) -> bool:
        """Count one event; True if it is the first of its key in this interval."""
        self.total += 1
        key = (identity, role, tenant, op, outcome, source)
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = (identity if identity != "?" else "?", "", "", op, outcome, "*")
        first = key not in self._counts
        self._counts[key] += 1
        return first

    def flush(self) -> None:
        """Write one audit record per key counted since the last flush."""
        counts, self._counts = self._counts, Counter()
        for (identity, role, tenant, op, outcome, source), n in sorted(counts.items()):
            self.audit.record(identity, role, tenant, op, "", str(n), "", 0, 0, outcome, source)
            self.records += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Flush every interval until cancelled (the node flushes once more at its stop)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            self.flush()
