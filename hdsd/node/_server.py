"""The node: a trio server that accepts mutually authenticated clients and serves requests.

This module holds the node's state (:class:`Node`: config, store, tenancy, replicator, audit,
status, request claims, shutdown) and its start. Structure (every task lives in a nursery):
``serve_node`` opens the store and the listeners, and runs one task per connection
(:mod:`._connections`); a connection runs one reader task (the :class:`WireSession`) and one
task per in-flight request (:mod:`._handlers`).

Shutdown (``Node.shutdown``, wired to SIGTERM/SIGINT by the CLI): stop accepting, refuse new
requests with ``Unavailable``, let in-flight requests finish (up to ``shutdown_grace_s``), close
the connections, then close the store — which flushes and syncs the log. A second signal cancels
everything at once; the log's recovery makes that safe too.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .._errors import ConfigError, HdsdError, StoreError
from .._meta import __version__
from ..audit import (
    AuditCopies,
    AuditLog,
    AuditSettings,
    AuditShipper,
    RefusalCounter,
    seal_audit_names,
)
from ..catalog import KEYRING_FILE, Keyring
from ..cluster import HybridClock
from ..peers import PeerPool
from ..pipeline import ChunkCodec
from ..repair import Maintenance
from ..replication import HintStore, ModeState, PeerDoubts, Replicator
from ..s3 import Endpoint, Gateway, HttpLimits, Uploads, serve_s3
from ..store import Store, Version, migration_pending
from ..transport import (
    Identity,
    WireSession,
    client_context,
    https_context,
    listener_port,
    open_tls_listeners,
    server_context,
)
from ._budget import BodyBudget
from ._config import NodeConfig
from ._connections import Connections
from ._continuity import AuditContinuity
from ._handlers import SmallWrites
from ._health import health_status
from ._layouts import LayoutKeeper, load_record
from ._malloc import limit_arenas, memory_status, trim_every
from ._masterkey import check_master, load_master
from ._metrics import NodeMetrics, serve_metrics
from ._objects import NodeObjects
from ._reads import ReadPaths
from ._revocation import LiveSessions
from ._room import RequestRoom
from ._s3keys import S3Keys
from ._sealing import NodeSealing
from ._slots import ConnectionSlots
from ._tenancy import Tenancy

__all__ = ["Node", "serve_node"]

log = logging.getLogger("hdsd.node")


class Node:
    """The running state of one node; create it with :func:`serve_node`."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        master = load_master(config)
        check_master(config, master)  # a key of another cluster: refused before anything
        self.keyring = Keyring(config.data_dir / KEYRING_FILE, master)
        self.clock = HybridClock(floor=store.max_hlc())
        self._codecs: dict[str, ChunkCodec] = {}
        self.tenancy = Tenancy(config.data_dir, master, self.keyring, self.clock,
                               operator_tenant=config.operator_tenant,
                               evict=self._forget_tenant, on_revoke=self._cut_revoked)
        # The S3 gateway's credential lookup (hdsd.s3.CredentialLookup): secrets unwrapped on
        # first use, cached per catalog entry, so a revocation applies to the next request.
        self.s3_credentials = S3Keys(self.tenancy.catalog, master, self.clock,
                                     tenant_usable=self._tenant_has_keys)
        # The layout version this node runs (layout.json, else node.toml's [[sites]]); it
        # changes live (see ._layouts).
        record = load_record(config)
        self.layout = record.layout
        self.role = (record.node(config.name).role if record.has_node(config.name)
                     else config.role)  # "storage" or "backup" (see _roles)
        self.hints = HintStore(config.data_dir / "hints.sqlite", store.sealing)
        self.mode = ModeState(config.data_dir / "site-mode.json", site=config.site)
        # Peers an anti-entropy round must compare before the live RPO may read 0.
        # Peer sessions that delivered replicated writes (see Connections._coordinator_gone).
        self.replicated_over: weakref.WeakSet[WireSession] = weakref.WeakSet()
        self.doubts = PeerDoubts((n.name for n in record.all_nodes() if n.name != config.name),
                                 config.data_dir / "peers-in-doubt.json")
        self.peers = PeerPool(name=config.name, cluster_id=config.cluster_id, layout=self.layout,
                              ssl_context=client_context(config.cert, config.key, config.ca),
                              request_timeout=config.write_timeout_s,
                              on_link=self._peer_link_changed, revoked=self._revoked_peer)
        self.peers.set_nodes(record.all_nodes())
        self.replicator = Replicator(
            name=config.name, site=config.site, layout=self.layout, store=store,
            peers=self.peers, hints=self.hints, mode=self.mode, policy=config.write_policy,
            on_peer_site_loss=config.on_peer_site_loss, timeout=config.write_timeout_s,
            plan_of=self.tenancy.plan, doubts=self.doubts,
            alone=lambda: self._active_requests <= 1)
        self.replicator.set_record(record)
        self.maintenance = Maintenance(
            name=config.name, layout=self.layout, store=store, peers=self.peers,
            snapshot=config.data_dir / "merkle-trees.bin", observe_hlc=self.clock.observe,
            open_chunk=self._verify_chunk, repair_interval_s=config.repair_interval_s,
            repair_rate_mib_s=config.repair_rate_mib_s,
            rebuild_rate_mib_s=config.rebuild_rate_mib_s,
            scrub_interval_s=config.scrub_interval_h * 3600,
            scrub_rate_mib_s=config.scrub_rate_mib_s,
            salvaged=store.statistics().salvaged, plan_of=self.tenancy.plan,
            dead_tenants=self._shredded, doubts=self.doubts,
            purge_grace_s=config.purge_grace_h * 3600, snapshot_s=config.repair_snapshot_s)
        self.reads = ReadPaths(config=config, store=store, peers=self.peers,
                               replicator=self.replicator, layout=lambda: self.layout,
                               rebuilding=lambda: self.rebuilding,
                               checking=lambda: self.checking)
        self.started = time.time()
        self.port = config.port
        # Request ids being written, each with the event its holder sets when it ends: made
        # by the first request that waits for it (None until then: most never wait, and an
        # event made and set costs every put ~10 Python calls).
        self._requests_in_flight: dict[tuple[str, bytes], trio.Event | None] = {}
        self._active_requests = 0
        self.small_writes = SmallWrites()  # small puts' groups of one pass share a write
        self.request_room = RequestRoom(config.max_requests_in_flight,
                                        lambda: self._active_requests)  # see ._room
        self.budget = BodyBudget(config.max_body_mib_in_flight << 20)  # see ._budget
        # How often each bound held a connection back (status, metrics): an operator sees a
        # limit being hit before clients complain.
        self.limit_hits = {"connection_body": 0, "connection_requests": 0,
                           "connection_unsent": 0, "node_requests": 0, "refused_busy": 0}
        # Set when the last request in flight ends, made only by a graceful stop that waits
        # for that (an event made and set at every lone request's start and end costs each
        # ~3 Python calls).
        self._idle: trio.Event | None = None
        self._stopping = False
        self._stop_accepting = trio.CancelScope()
        self._connections = 0  # sessions (client and peer) past their handshake
        self.slots = ConnectionSlots(config)
        self.metrics = NodeMetrics(self)
        self.metrics_port: int | None = None  # bound port of [metrics] address, once serving
        self.s3_endpoints: list[Endpoint] = []  # bound [s3] listeners, once serving
        # Last: the audit log starts a thread, closed by serve_node (see close_audit).
        self.audit = AuditLog(config.data_dir / "audit", config.name, AuditSettings(
            checkpoint_records=config.audit_checkpoint_records,
            checkpoint_s=config.audit_checkpoint_s, retention_days=config.audit_retention_days,
            segment_bytes=config.audit_segment_mib << 20,
            commit_interval_s=config.audit_commit_ms / 1000))
        if isinstance(store.sealing, NodeSealing):  # names sealed with the tenancy's seals
            store.sealing.bind(self.tenancy.name_seal)
        seal_for = store.sealing.seal_for  # (bound above: no property call per record)
        self.audit.seal_names = lambda tenant, bucket, key: seal_audit_names(
            seal_for(tenant), tenant, bucket, key)
        self.audit_copies = AuditCopies(config.data_dir / "audit",
                                        segment_bytes=config.audit_segment_mib << 20,
                                        retention_days=config.audit_retention_days)
        self.refusals = RefusalCounter(self.audit, interval_s=config.audit_refusals_interval_s)
        self.audit_shipper = AuditShipper(self.audit, self.peers, self.layout, site=config.site)
        self.connections = Connections(self)  # the serving of the listeners (._connections)
        self.live = LiveSessions(self.audit, self.tenancy.catalog.is_revoked,
                                 refused=self.connections.connection_refused)
        self.layouts = LayoutKeeper(self, record)
        self.audit_continuity = AuditContinuity(self)

    # -- pieces the handlers use -----------------------------------------------------------
    def _tenant_has_keys(self, tenant: str) -> bool:
        entry = self.tenancy.catalog.tenant(tenant)
        return entry is not None and entry.has_keys

    def codec(self, tenant: str) -> ChunkCodec:
        codec = self._codecs.get(tenant)
        if codec is None:
            keys = self.tenancy.keys(tenant)  # PermissionDenied, TenantShredded
            codec = ChunkCodec(keys, compression_level=self.config.compression_level)
            self._codecs[tenant] = codec
        return codec

    def _forget_tenant(self, tenant: str) -> None:
        """A tenant was shredded: drop its codec, and reclaim its log space in the background
        (its records are garbage now that no key can open them)."""
        self._codecs.pop(tenant, None)
        maintenance = getattr(self, "maintenance", None)  # None while the node is built
        if maintenance is not None:
            maintenance.request_compaction()

    def _peer_link_changed(self, peer: str, up: bool) -> None:
        """A link to *peer* broke or came back: whatever was in flight on it may have landed
        on one side only, so compare with it (and, for a lost link, with everyone: a peer that
        went away may have been coordinating writes to the others) as soon as it answers."""
        if self._stopping:
            return
        if up:
            self.doubts.doubt([peer], "the link to it came back")
        else:
            self.doubts.doubt(None, f"the link to {peer} broke")

    def _cut_revoked(self, serials: set[str]) -> None:
        """Certificates were revoked (here, by a push or by a sync): close their sessions and
        the links to peers that present them. (None while the node is built.)"""
        live: LiveSessions | None = getattr(self, "live", None)
        if live is not None:
            live.cut(serials)
        peers: PeerPool | None = getattr(self, "peers", None)
        if peers is not None:
            peers.drop_revoked(serials)

    def _revoked_peer(self, ident: Identity) -> bool:
        return self.tenancy.catalog.is_revoked(ident.serial_hex)

    def _shredded(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tenancy.catalog.tenants() if t.is_shredded)

    def _verify_chunk(self, tenant: str, chunk_id: bytes, payload: bytes) -> None:
        """Scrub's check of a sealed chunk: its AEAD tag (and content id) under the tenant's
        key; PermissionDenied if the tenant has no keys here."""
        self.codec(tenant).open(chunk_id, payload)

    @property
    def rebuilding(self) -> bool:
        """True while an emptied node pulls its data back: its store alone is not the truth."""
        return self.maintenance.rebuilding

    @property
    def checking(self) -> bool:
        """An empty store not yet compared with a peer: local misses are asked elsewhere."""
        return self.maintenance.checking

    async def read_payload(self, tenant: str, chunk_id: bytes) -> bytes:
        # A 1 MiB pread is ~0.3 ms of blocking I/O: worth a thread hop, unlike index lookups.
        return await trio.to_thread.run_sync(self.store.read_chunk, tenant, chunk_id)

    @asynccontextmanager
    async def idempotent(self, tenant: str, request_id: bytes, bucket: str, key: str, *,
                         retry: bool = False) -> AsyncIterator[Version | None]:
        """Serialise requests sharing a request id; yield the version it already wrote, if any
        (looked for at both sites when the client says it is retrying).

        A client retrying after a timeout may race its own first attempt: the retry waits for the
        first to finish, then sees its result instead of writing a second version.
        """
        slot = (tenant, request_id)
        while slot in self._requests_in_flight:
            running = self._requests_in_flight[slot]
            if running is None:  # the first to wait makes the event its holder will set
                running = self._requests_in_flight[slot] = trio.Event()
            await running.wait()
        self._requests_in_flight[slot] = None
        try:
            yield await self.reads.find_request(tenant, request_id, bucket, key, retry)
        finally:
            self.release_request(tenant, request_id)

    @property
    def active_requests(self) -> int:
        """Requests in flight on this node (client and peer ones)."""
        return self._active_requests

    def claim_request(self, tenant: str, request_id: bytes) -> bool:
        """Take *request_id*'s slot (see :meth:`idempotent`) if no request holds it, without
        waiting; False if one does. :meth:`release_request` when done."""
        slot = (tenant, request_id)
        if slot in self._requests_in_flight:
            return False
        self._requests_in_flight[slot] = None
        return True

    def release_request(self, tenant: str, request_id: bytes) -> None:
        """Give back a slot :meth:`claim_request` took (waking a request that waits on it)."""
        waiting = self._requests_in_flight.pop((tenant, request_id))
        if waiting is not None:
            waiting.set()

    @contextmanager
    def counted_request(self) -> Iterator[None]:
        """A request in flight (an S3 one: native ones are counted by their connection): a
        graceful stop waits for it (up to ``shutdown_grace_s``) before closing anything."""
        self._request_began()
        try:
            yield
        finally:
            self._request_done()
            self.request_room.freed()

    def _request_began(self) -> None:
        self._active_requests += 1
        # A lone request's batches are indexed once it ended, off its reply's path (see
        # hdsd.store.LogWriter.node_busy); with company, as they come.
        self.store.node_busy(self._active_requests == 1)

    def _request_done(self) -> None:
        self._active_requests -= 1
        if self._active_requests == 0 and self._idle is not None:
            self._idle.set()
        self.store.node_busy(self._active_requests == 1)

    def status(self) -> dict[str, Any]:
        stats = self.store.statistics()
        backlog = self.replicator.backlog()
        total = self.hints.backlog()
        return {
            "mode": self.mode.describe(),
            "write_policy": self.replicator.effective_policy(),
            "configured_policy": self.config.write_policy,
            "layout": self.layout.layout_id,
            "layout_record": self.layouts.describe(),
            # The live RPO: hinted versions (counted) and peers in doubt (not countable until
            # a round compared them). It is 0 only when both are empty.
            "rpo": {"versions": total.versions, "bytes": total.bytes,
                    "age_s": round(max(total.age(), self.doubts.age()), 3),
                    "peers_in_doubt": self.doubts.describe(),
                    "zero": total.versions == 0 and not self.doubts.pending()},
            "peers": {name: {"site": self.layouts.record.node(name).site,
                             **self.peers.describe(name),
                             "backlog_versions": b.versions, "backlog_bytes": b.bytes,
                             "backlog_age_s": round(b.age(), 3)}
                      for name, b in backlog.items() if name != self.config.name},
            # Versions this node's own disk missed while the others acknowledged them.
            "self_backlog_versions": (backlog[self.config.name].versions
                                      if self.config.name in backlog else 0),
            "node": self.config.name,
            "site": self.config.site,
            "role": self.role,
            "cluster": self.config.cluster_id,
            "software": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "connections": self._connections,
            "requests_in_flight": self._active_requests,
            "memory": memory_status(),
            "limits": {**self.slots.describe(), "hits": dict(self.limit_hits),
                       "body_budget": self.budget.describe(),
                       "refusals_audited": {"events": self.refusals.total,
                                            "records": self.refusals.records}},
            "store": {k: getattr(stats, k) for k in stats.__dataclass_fields__},
            **self._maintenance_status(),
            "audit": {**self.audit_shipper.describe(),
                      "continuity": self.audit_continuity.state},
            **health_status(self),
        }

    def _maintenance_status(self) -> dict[str, Any]:
        m = self.maintenance.describe()
        return {"maintenance": m, "last_repair": m["repair"]["last"],
                "last_scrub": m["scrub"]["last"], "rebuild": m["rebuild"]}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def shutdown(self) -> None:
        """Begin a graceful stop: no new connections or requests; in-flight ones finish."""
        if not self._stopping:
            log.info("event=shutdown_begin node=%s in_flight=%d", self.config.name,
                     self._active_requests)
        self._stopping = True
        self._stop_accepting.cancel()

    async def _serve(self, task_status: trio.TaskStatus[Node]) -> None:
        ctx = server_context(self.config.cert, self.config.key, self.config.ca)
        listeners = await open_tls_listeners(self.config.host, self.config.port, ctx)
        self.port = listener_port(listeners[0])
        log.info("event=listening node=%s site=%s address=%s:%d", self.config.name,
                 self.config.site, self.config.host, self.port)
        async with trio.open_nursery() as services:
            await services.start(self.peers.run)
            await services.start(self.replicator.run)
            await services.start(self.maintenance.run)
            await services.start(self.layouts.run)
            await services.start(self.audit_continuity.run)
            await services.start(self.audit_shipper.run)
            await services.start(self.refusals.run)
            # Catch up with the other nodes' catalog (a shred missed while down) before serving.
            await services.start(partial(self.tenancy.run, self,
                                         interval=self.config.catalog_sync_s))
            if self.config.metrics_host is not None:
                await services.start(serve_metrics, self)
            if self.config.s3_https or self.config.s3_http:
                self.s3_endpoints = await services.start(self._serve_s3)
            services.start_soon(trim_every, self.config.malloc_trim_s)
            services.start_soon(self._warm_listings)  # never waited for: readiness is not
            await self.connections.serve(listeners, task_status)
            await self._final_audit_checkpoint()
            services.cancel_scope.cancel()
        if self._active_requests == 0:
            # Every request finished (acknowledged with its hints, or refused with them): the
            # next start need not doubt every peer.
            self.doubts.mark_clean_stop()
        self.hints.close()
        self.tenancy.close()
        log.info("event=shutdown_done node=%s", self.config.name)

    async def _warm_listings(self) -> None:
        """Open the names of the largest buckets into the listing caches in a worker thread,
        once, at start (``Store.warm_listings``: bounded in names): a first listing of a
        bucket of 100k keys after a restart otherwise opens all of them while its client
        waits (seconds). Cancelled with the node's services: the thread sees the flag within
        a few hundred names and stops."""
        stop = threading.Event()

        async def flag_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flag_on_cancel)
            try:
                buckets, names = await trio.to_thread.run_sync(self.store.warm_listings,
                                                               stop.is_set)
            except HdsdError as exc:  # a listing will build its cache and report it
                log.warning("event=listing_warm_failed node=%s error=%s", self.config.name, exc)
                buckets = names = 0
            nursery.cancel_scope.cancel()
        if buckets:
            log.info("event=listing_cache_warm node=%s buckets=%d names=%d seconds=%.1f",
                     self.config.name, buckets, names, time.monotonic() - started)

    async def _serve_s3(self, task_status: trio.TaskStatus[list[Endpoint]]) -> None:
        """The S3 gateway ([s3]): HTTPS with this node's certificate, plain HTTP only where
        configured; requests go through the same object API as the native protocol."""
        cfg = self.config
        # Upload records seal their names with the store's tenant seals, as the store does.
        gateway = Gateway(NodeObjects(self), Uploads(cfg.data_dir / "s3-uploads",
                                                     cfg.s3_multipart_expire_h * 3600,
                                                     self.store.sealing.seal_for),
                          region=cfg.s3_region, lookup=self.s3_credentials,
                          domain=cfg.s3_domain)
        limits = HttpLimits(body_timeout_s=cfg.request_timeout_s,
                            idle_timeout_s=min(cfg.idle_timeout_s, 60.0),
                            head_timeout_s=cfg.request_timeout_s / 2,
                            send_timeout_s=cfg.request_timeout_s,
                            min_upload_rate_kib_s=cfg.min_upload_rate_kib_s)
        context = https_context(cfg.cert, cfg.key, cfg.ca) if cfg.s3_https else None
        await serve_s3(gateway, cfg.s3_https, cfg.s3_http, context, limits,
                       cfg.max_connections, task_status=task_status)

    async def _final_audit_checkpoint(self) -> None:
        """Sign the log's tail and try to ship it before the links close (a graceful stop)."""
        self.refusals.flush()
        await trio.to_thread.run_sync(self.audit.checkpoint_and_wait, 3.0)
        with trio.move_on_after(3.0):
            await self.audit_shipper.flush()

    def close_audit(self) -> None:
        """Flush the audit log, write its final checkpoint and stop its thread."""
        self.audit_copies.close()
        self.audit.close()


async def serve_node(config: NodeConfig, *,
                     task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the store and serve until :meth:`Node.shutdown` (or cancellation).

    ``task_status.started(node)`` is called once listening; ``node.port`` is the bound port.

    Everything the node creates is its own: the data directory must not be open to group or
    others (ConfigError otherwise, as for key files), and while the node runs the process
    umask is 077, so every directory is 0700 and every file 0600 from creation — the SQLite
    indexes and their journals, the Merkle snapshot, the audit files, the log segments.
    """
    check_private_dir(config.data_dir)
    limit_arenas()  # before the store's and trio's threads allocate
    with _private_umask():
        await _serve_node(config, task_status)


_umask_saved: list[int] = []  # the caller's umask, once per node serving in this process


@contextmanager
def _private_umask() -> Iterator[None]:
    """umask 077 while any node of this process serves (tests run several); the caller's
    umask back after the last one."""
    _umask_saved.append(os.umask(0o077) if not _umask_saved else _umask_saved[0])
    try:
        yield
    finally:
        original = _umask_saved.pop()
        if not _umask_saved:
            os.umask(original)


def check_private_dir(path: Path) -> None:
    """Refuse a data directory that group or others may read or enter."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"data directory {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"data directory {path} is open to group or others (mode "
                          f"{stat.S_IMODE(mode):04o}); run: chmod 700 {path}")


async def _serve_node(config: NodeConfig, task_status: trio.TaskStatus[Node]) -> None:
    pending = migration_pending(config.data_dir / "store")
    if pending is not None:
        raise StoreError(pending)
    sealing = NodeSealing()
    store = Store.open(config.data_dir / "store", sealing=sealing,
                       segment_bytes=config.segment_mib << 20,
                       salvage=config.on_corrupt_log == "repair",
                       read_fds=config.segment_read_fds)
    for where in store.statistics().salvaged:
        log.error("event=log_damage_set_aside node=%s range=%s action=refetch_from_replicas",
                  config.name, where)
    try:
        node = Node(config, store)
        try:
            await node._serve(task_status)
        finally:
            node.close_audit()
    finally:
        store.close()
