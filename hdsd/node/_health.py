"""What an operator asks of a node: is it ready to take writes, how full is its disk, how fast
are its fsyncs, and how is the rest of the cluster (``hdsd status`` fans out from the node asked).

Readiness follows the write policy the node would apply now (``effective_policy``): a node is
ready when its store takes writes and the policy can be met — the other site answers, or the
site is degraded (policy ``local``), or ``on_peer_site_loss = "degrade"`` would let the write
through alone. A peer without a live link is probed once (a ``PeerStatusRequest``, short
timeout); a probe that succeeds leaves the link open, so the next check costs no I/O.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._errors import HdsdError
from ..wire import UNSENT, PeerStatusRequest

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["cluster_status", "directory_bytes", "disk_usage", "fsync_summary", "health_status",
           "readiness", "tenant_status"]

PROBE_TIMEOUT = 1.0
FANOUT_TIMEOUT = 2.0


def disk_usage(node: Node) -> dict[str, int]:
    """The data directory's file system (total, used and free bytes: one statvfs) and the
    store's own use (``data_dir_bytes``: what the files under the data directory occupy)."""
    try:
        usage = shutil.disk_usage(node.config.data_dir)
    except OSError:
        return {}
    return {"total": usage.total, "used": usage.used, "free": usage.free,
            "data_dir_bytes": directory_bytes(node.config.data_dir)}


def directory_bytes(path: Path) -> int:
    """Bytes allocated to the files under *path* (blocks, not apparent sizes: log segments
    are preallocated, and a sparse file takes only what it uses). A few hundred files at
    most (segments, SQLite files, audit segments): a walk per status request is cheap."""
    total = 0
    stack = [os.fspath(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue  # a file removed by compaction meanwhile
        except OSError:
            continue
    return total


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fsync_summary(node: Node) -> dict[str, float]:
    """Percentiles of the last few hundred group commits' fdatasync, and records per batch."""
    recent = node.store.recent_fsyncs()
    if not recent:
        return {"samples": 0}
    seconds = sorted(s for s, _ in recent)
    return {"samples": len(recent),
            "p50_ms": round(_percentile(seconds, 0.50) * 1000, 3),
            "p99_ms": round(_percentile(seconds, 0.99) * 1000, 3),
            "max_ms": round(seconds[-1] * 1000, 3),
            "records_per_batch": round(sum(n for _, n in recent) / len(recent), 2)}


def health_status(node: Node) -> dict[str, Any]:
    """Keys added to :meth:`Node.status` (no I/O beyond one statvfs)."""
    return {"disk": disk_usage(node), "fsync": fsync_summary(node),
            # Catalog syncs that failed last time, per peer (a key that does not open the
            # peer's entries says so here): `hdsd status` exits non-zero while any remain.
            "catalog": {"sync_failures": dict(node.tenancy.sync_failures)},
            "disk_full": node.metrics.disk_full,
            "metrics_address": (f"{node.config.metrics_host}:{node.metrics_port}"
                                if node.metrics_port else None)}


def _peer_status_request(node: Node) -> PeerStatusRequest:
    return PeerStatusRequest(UNSENT, node.layout.layout_id)


async def _reachable(node: Node, names: list[str]) -> set[str]:
    """Which of *names* answer now: a live link counts; the others are probed concurrently."""
    up = {n for n in names if node.peers.reachable(n)}

    async def probe(name: str) -> None:
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await node.peers.call(name, _peer_status_request(node))
                up.add(name)
            except HdsdError:
                pass

    if len(up) < len(names):
        async with trio.open_nursery() as nursery:
            for name in names:
                if name not in up:
                    nursery.start_soon(probe, name)
    return up


async def readiness(node: Node) -> tuple[bool, str]:
    """(ready, one-line reason) for ``/readyz``: ready to take writes under the current policy;
    for a backup node, which never takes client writes, ready to receive replicated data and
    serve restores."""
    if node.stopping:
        return False, "node is shutting down"
    try:
        failed = node.store.statistics().failed
    except HdsdError as exc:
        return False, f"store unavailable: {exc}"
    if failed:
        return False, "store stopped after a storage failure (fail-stop); restart the node"
    if node.metrics.disk_full:
        return False, "data disk full: the last write was refused (disk_full); free space"
    if node.role == "backup":
        return True, "ready (backup node: receives replicated data and serves restores; " \
                     "client writes go through the storage nodes)"
    policy = node.replicator.effective_policy()
    if policy == "local":
        return True, "ready (site degraded: writes accepted alone, kept as hints)"
    others = [n.name for n in node.layout.nodes if n.name != node.config.name]
    other_site = {n.name for n in node.layout.nodes if n.site != node.config.site}
    up = await _reachable(node, others)
    if policy == "each-site":
        met = bool(up & other_site)
    else:  # majority, over every node of the layout (this one included)
        met = 2 * (len(up) + 1) > len(node.layout.nodes)
    if met:
        return True, f"ready (policy {policy})"
    if node.config.on_peer_site_loss == "degrade":
        return True, (f"ready (policy {policy} unreachable; the next write degrades the site "
                      "as on_peer_site_loss = degrade)")
    down = ", ".join(sorted(set(others) - up)) or "none"
    return False, (f"write policy {policy} cannot be met: unreachable {down}; "
                   "writes are refused (hdsd site degrade to accept them alone)")


async def cluster_status(node: Node) -> list[dict[str, Any]]:
    """This node's status and every other node's (asked concurrently), one entry per node of
    the layout, in layout order; a node that does not answer within :data:`FANOUT_TIMEOUT` is
    ``up: false`` with the reason. Never takes longer than that (plus this node's own
    status)."""
    timeout = FANOUT_TIMEOUT
    results: dict[str, dict[str, Any]] = {node.config.name: {"up": True, **node.status()}}

    async def ask(name: str) -> None:
        with trio.move_on_after(timeout):
            try:
                body = await node.peers.call(name, _peer_status_request(node))
                results[name] = {"up": True, **body}
            except HdsdError as exc:
                results[name] = {"up": False, "error": str(exc)}
            return
        results[name] = {"up": False, "error": f"no answer within {timeout:g} s"}

    # Every node of the layout version, those leaving it during a migration included.
    everyone = node.layouts.record.all_nodes()
    async with trio.open_nursery() as nursery:
        for info in everyone:
            if info.name != node.config.name:
                nursery.start_soon(ask, info.name)
    out = []
    for info in everyone:
        if info.name not in results:  # this node, removed from the layout it learnt
            continue
        entry = results[info.name]
        entry.update(node=info.name, site=info.site, address=f"{info.host}:{info.port}",
                     role=info.role)
        out.append(entry)
    return out


# What a node entry of the scoped status keeps: whether the node serves, and under which mode.
_SCOPED_NODE_KEYS = ("node", "site", "role", "up", "software", "write_policy")


async def tenant_status(node: Node, tenant: str) -> dict[str, Any]:
    """The status a tenant's client sees (anyone but the operator): every node up or down and
    the write policy it applies, the tenant's own usage and quota — no addresses, disks, peers,
    backlog or store figures (they describe every tenant's activity), no other tenant."""
    nodes = await cluster_status(node)
    entry = node.tenancy.catalog.tenant(tenant)
    await node.tenancy.refresh_usage(node)
    mine = next(n for n in nodes if n["node"] == node.config.name)
    return {
        "scope": "tenant",
        **{k: mine[k] for k in _SCOPED_NODE_KEYS if k in mine},
        "cluster": node.config.cluster_id,
        "mode": {"mode": node.mode.describe().get("mode")},
        "tenant": {"tenant": tenant, "usage_bytes": node.tenancy.usage(tenant),
                   "quota_bytes": entry.quota_bytes if entry is not None else 0,
                   "plan": node.tenancy.plan(tenant)},
        "nodes": [{**{k: n[k] for k in _SCOPED_NODE_KEYS if k in n},
                   "mode": {"mode": (n.get("mode") or {}).get("mode")}} for n in nodes],
    }
