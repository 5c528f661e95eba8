"""Audit continuity across a replaced disk: a node whose audit directory is empty at start asks
the other site for the tail of the copy of *its own* log before it serves any client.

* The copy exists and the node's signing key is the one pinned there (the key was restored
  from the node's bundle or a backup): the node's log **continues** that chain — its first
  segment starts right after the copy's last record and its first record says so
  (``op = audit_resumed``). The auditor's pinned key still verifies every checkpoint, the
  sequence goes on, and the other site's copy takes the next batches as if nothing happened;
  ``hdsd audit verify`` names the resume point. What the lost disk held beyond the copy (at
  most the records not yet shipped) is lost with it, and the resume record says after which
  seq.
* The copy is pinned to another key (the key was not restored): the node keeps a fresh chain,
  the other site refuses its batches, and ``hdsd status`` says so (``audit.continuity``): the
  operator restores the signing key from the bundle (see the README) and restarts the node.
* No copy (a new node, a new cluster): nothing to continue.

Client requests wait for this check (bounded by the write timeout per node asked): a record
written before it would fix the chain's start.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from .._errors import HdsdError
from ..audit import RESUMED_OP
from ..peers import UNREACHABLE_WARN_AFTER_S
from ..wire import UNSENT, AuditShip

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["AuditContinuity"]

log = logging.getLogger("hdsd.node")

_GENESIS = bytes(32)


class AuditContinuity:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.ready = trio.Event()
        self.state: dict[str, Any] = {"state": "continued" if not node.audit.fresh
                                      else "checking"}
        if not node.audit.fresh:
            self.ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        if self.ready.is_set():
            return
        self._tails: dict[str, tuple[int, bytes]] = {}
        self._refused: dict[str, str] = {}
        self._silent: dict[str, str] = {}
        started = trio.current_time()
        try:
            await self._check()
        finally:
            self.ready.set()
        # Nobody of the other site answered within the bounded wait (a first start of a whole
        # cluster, or the other site down): clients were let in, and the question stays open.
        # Keep asking, so the state ends in a verdict; warn only once the other site has been
        # silent as long as an unreachable peer takes to be warned about.
        warned = False
        while self.state["state"] == "unchecked":
            await trio.sleep(1.0)
            await self._ask_round()
            if self._tails or self._refused:
                self._decide(late=True)
                self._log(logging.INFO if self.state["state"] == "new" else logging.WARNING)
                return
            self.state["unreachable"] = dict(self._silent)
            if not warned and trio.current_time() - started >= UNREACHABLE_WARN_AFTER_S:
                warned = True
                self._log(logging.WARNING)

    async def _ask_round(self) -> None:
        """Ask every node of the other site not yet heard from for the tail of its copy."""
        node = self.node
        audit = node.audit
        tails, refused, silent = self._tails, self._refused, self._silent

        async def ask(name: str) -> None:
            try:
                body = await node.peers.call(
                    name, AuditShip(UNSENT, node.layout.layout_id, node.config.name,
                                    audit.verify_key, 0, _GENESIS, []))
            except HdsdError as exc:
                if exc.code == "layout_mismatch":
                    # A data directory restored from an old bundle runs an old layout
                    # version: learn the current one, and ask again.
                    node.layouts.learn_from(name)
                (refused if exc.code == "audit_chain_broken" else silent)[name] = str(exc)
                return
            silent.pop(name, None)
            if len(body["hash"]) == 32:
                tails[name] = (body["seq"], body["hash"])

        others = [n.name for n in node.layout.nodes if n.site != node.config.site]
        async with trio.open_nursery() as nursery:
            for name in others:
                if name not in tails and name not in refused:
                    nursery.start_soon(ask, name)

    def _answered_all(self) -> bool:
        others = [n.name for n in self.node.layout.nodes if n.site != self.node.config.site]
        return all(n in self._tails or n in self._refused for n in others)

    async def _check(self) -> None:
        node = self.node
        audit = node.audit
        # Until every node of the other site answered (one may be starting, or this node may
        # run an old layout version), for at most the write timeout: clients wait meanwhile.
        deadline = trio.current_time() + node.config.write_timeout_s
        while True:
            await self._ask_round()
            if self._answered_all() or trio.current_time() >= deadline:
                break
            await trio.sleep(0.5)
        # The highest tail wins: the shipper's first target holds the longest copy.
        best = max(self._tails.items(), key=lambda kv: kv[1][0], default=None)
        if best is not None and best[1][0] > 0:
            holder, (seq, digest) = best
            if await trio.to_thread.run_sync(audit.resume_after, seq, digest):
                note = (f"resumed after seq {seq} held by {holder}: this node's own log was "
                        "lost (disk replaced); same signing key")
                audit.record(node.config.name, "node", "", RESUMED_OP, "", note, "", 0, 0, "ok",
                             "")
                self.state = {"state": "resumed", "after_seq": seq, "from": holder,
                              "at": time.time()}
                self._log(logging.WARNING)
                return
        self._decide(late=False)
        # Still waiting for the other site is not yet news (a cluster's first start).
        self._log(logging.INFO if self.state["state"] in ("new", "unchecked")
                  else logging.WARNING)

    def _decide(self, *, late: bool) -> None:
        """The verdict from what was heard; *late*: client records were already written, so a
        copy found now can no longer be continued."""
        best = max(self._tails.items(), key=lambda kv: kv[1][0], default=None)
        if best is not None and best[1][0] > 0:
            holder, (seq, _digest) = best
            self.state = {"state": "too_late", "copy_seq": seq, "from": holder,
                          "why": ("the other site answered only after this node had started "
                                  "serving" if late else
                                  "records were written before the check finished")}
        elif self._refused:
            self.state = {"state": "key_differs", "refused_by": dict(self._refused),
                          "why": "the other site pins another signing key for this node: "
                                 "restore audit/signing.key from the node's bundle (or "
                                 "backup) and restart it"}
        elif self._silent and not self._tails:
            self.state = {"state": "unchecked", "unreachable": dict(self._silent)}
        else:
            self.state = {"state": "new"}

    def _log(self, level: int) -> None:
        log.log(level, "event=audit_continuity node=%s %s", self.node.config.name,
                " ".join(f"{k}={v}" for k, v in self.state.items()))
