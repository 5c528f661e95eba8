"""Peers whose agreement with this node is in doubt: the part of the live RPO hints cannot count.

Hints count every version this node *knows* a replica lacks. Some divergence is known to nobody
in particular: a replica that stored a version after its coordinator gave up waiting (a stalled
or partitioned peer commits a request that timed out), a coordinator that crashed between a
replica's fsync and its own hint, versions a repair round just brought here that the other
replicas of their keys may lack. Each of those starts with an event this node *can* see:

* a peer link broke or a peer request timed out (either side of the link),
* this node started after a stop that was not graceful,
* an anti-entropy round received versions (the other peers may lack them too),
* an operator restored the site (everything written alone must be checked).

Each such event puts peers in doubt (durably: a restart keeps them), and an anti-entropy round
with a peer that *started after* the doubt and finished cleanly lifts it. The live RPO is 0 only
when there are no hints and no peer in doubt; while a peer is in doubt, ``status`` says which
and since when. Rounds comparing identical replicas cost a root exchange (~100 bytes), so
doubting generously costs little, and under-doubting would be a silent RPO.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from .._atomic import atomic_write

__all__ = ["PeerDoubts"]

log = logging.getLogger("hdsd.replication")

_CLEAN_STOP = "clean-stop"


class PeerDoubts:
    """The peers of this node awaiting an anti-entropy round, with the time each was doubted.

    *path* keeps them across restarts (``None``: memory only, for tests). *clock* gives the
    time used to compare doubts with round starts (wall clock in a node, the mock clock in the
    deterministic simulation).
    """

    def __init__(self, peers: Iterable[str], path: Path | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.peers = frozenset(peers)
        self._path = path
        self._clock = clock
        self._since: dict[str, float] = {}
        self._reasons: dict[str, str] = {}
        # The time of the latest event per doubted peer: only a round begun after it counts.
        self._recheck_after: dict[str, float] = {}
        self._changed = trio.Event()
        # When the latest clean round with each peer began (in memory): a layout migration
        # is synced once every peer sharing keys had one since the migration's sync phase.
        self.clean_round: dict[str, float] = {}
        if path is not None:
            self._load(path)

    def add_peers(self, peers: Iterable[str]) -> None:
        """Nodes joined the layout: they are peers from now on (a new one is doubted by the
        layout change itself)."""
        self.peers = self.peers | frozenset(peers)

    def keep_only(self, peers: Iterable[str]) -> None:
        """Nodes left the layout: no round will ever compare with them again."""
        self.peers = frozenset(peers)
        gone = [p for p in self._since if p not in self.peers]
        for p in gone:
            del self._since[p]
            self._reasons.pop(p, None)
            self._recheck_after.pop(p, None)
        if gone:
            self._save()
            self._changed.set()
            self._changed = trio.Event()

    # -- durable state ----------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._since = {p: float(t) for p, t in data.get("since", {}).items()
                           if p in self.peers}
            self._reasons = {p: str(r) for p, r in data.get("reasons", {}).items()
                             if p in self._since}
        except FileNotFoundError:
            # A new node (or a wiped one, which rebuilds from every peer anyway): nothing of
            # its own can have been left half-replicated.
            self._save()
            return
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("event=doubts_unreadable path=%s error=%s; doubting every peer", path, exc)
            self.doubt(None, "the file of peers in doubt was unreadable")
        marker = path.with_name(_CLEAN_STOP)
        if marker.exists():
            marker.unlink()
        else:
            # A crash may have cut a write between a replica's fsync and its hint.
            self.doubt(None, "this node started after a stop that was not graceful")

    def mark_clean_stop(self) -> None:
        """Called at the end of a graceful stop: every write finished or was hinted, so the
        next start need not doubt every peer."""
        if self._path is not None:
            atomic_write(self._path.with_name(_CLEAN_STOP), b"", mode=0o600)

    def _save(self) -> None:
        if self._path is not None:
            data = {"since": self._since, "reasons": self._reasons}
            atomic_write(self._path, json.dumps(data).encode(), mode=0o600)

    # -- events -----------------------------------------------------------------------------
    def doubt(self, peers: Iterable[str] | None, reason: str) -> None:
        """Put *peers* (``None``: every peer) in doubt. A peer already in doubt keeps its
        earlier time but is rechecked: the next round must start after *now*."""
        now = self._clock()
        added = False
        for peer in self.peers if peers is None else peers:
            if peer not in self.peers:
                continue
            if peer not in self._since:
                self._since[peer] = now
                self._reasons[peer] = reason
                added = True
                log.info("event=peer_in_doubt peer=%s reason=%r", peer, reason)
            # A round already running may have passed what this event concerns.
            self._recheck_after[peer] = now
        if added:
            self._save()
        self._changed.set()
        self._changed = trio.Event()

    def verified(self, peer: str, round_started: float) -> bool:
        """A round with *peer* that started at *round_started* finished cleanly: lift the
        doubt unless a newer event came after the round began. Returns whether it lifted."""
        self.clean_round[peer] = max(self.clean_round.get(peer, 0.0), round_started)
        if peer not in self._since:
            return True
        if self._recheck_after.get(peer, 0.0) > round_started:
            return False
        del self._since[peer]
        self._reasons.pop(peer, None)
        self._recheck_after.pop(peer, None)
        self._save()
        log.info("event=peer_verified peer=%s", peer)
        return True

    # -- reading ----------------------------------------------------------------------------
    def pending(self) -> dict[str, float]:
        """Peer → when it was first doubted (wall-clock seconds of *clock*)."""
        return dict(self._since)

    def age(self) -> float:
        """Seconds since the oldest doubt still standing (0 when none)."""
        return max(0.0, self._clock() - min(self._since.values())) if self._since else 0.0

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def describe(self) -> dict[str, Any]:
        return {peer: {"since": since, "reason": self._reasons.get(peer, "")}
                for peer, since in sorted(self._since.items())}
