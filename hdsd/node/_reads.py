"""The read paths of a node: the :class:`ReadPaths` a :class:`~hdsd.node.Node` owns
(``node.reads``).

A key lives on its rendezvous replicas only, so a node reads through them: versions are merged
across the replicas of its site (the other site is asked only when none here answers), a chunk
missing or damaged locally is read from another replica and repaired here, a listing merges
the byte-bounded parts of the nodes of the site (see ``_listing``), and a retried request id
is looked for on the key's replicas.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

import trio

from .._errors import HdsdError, IntegrityError, InvalidRequest, NotFound, Unavailable
from ..cluster import Layout
from ..peers import PeerPool
from ..pipeline import ChunkCodec, open_in_thread, pipeline_limiter, run_in_worker
from ..replication import Replicator
from ..store import ChunkRecord, Store, Version, parse_version_id, visible_versions
from ..wire import UNSENT, FetchChunk, FetchVersions, ListBucketsPeer, ListPeer
from ._config import NodeConfig
from ._listing import BucketPart, Part, merge_buckets, take_buckets, take_versions

__all__ = ["ON_LOOP_MAX", "ReadAhead", "ReadPaths", "decode_version_cursor"]

log = logging.getLogger("hdsd.node")

#: Bucket names one node reads for its part of a bucket listing (then bounded by bytes).
_BUCKETS_FETCH = 20_000

#: A chunk of at most this many plaintext bytes may be read and opened on the event loop
#: when its record is in the page cache (:meth:`ReadPaths.chunk_payload`).
ON_LOOP_MAX = 64 << 10


def decode_version_cursor(text: str) -> tuple[str, int, str]:
    """A listing cursor ``key NUL version-id`` → ``(key, hlc, node)``."""

    key, sep, version = text.rpartition("\x00")
    try:
        if not sep:
            raise ValueError("no separator")
        hlc, origin = parse_version_id(version)
    except ValueError:
        raise InvalidRequest("malformed listing cursor; pass back the 'next' value as given") \
            from None
    return key, hlc, origin


class ReadPaths:
    """Reads through a key's replicas, given what they need: the node's configuration, its
    store, its peer links, the write coordinator (placement), and three views of the node's
    live state — the layout in force, whether it is rebuilding, whether its store is still
    unchecked (both: the local store alone is not the truth)."""

    def __init__(self, *, config: NodeConfig, store: Store, peers: PeerPool,
                 replicator: Replicator, layout: Callable[[], Layout],
                 rebuilding: Callable[[], bool], checking: Callable[[], bool]) -> None:
        self.config = config
        self.store = store
        self.peers = peers
        self.replicator = replicator
        self._layout = layout
        self._rebuilding = rebuilding
        self._checking = checking

    @property
    def layout(self) -> Layout:
        return self._layout()

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding()

    @property
    def checking(self) -> bool:
        return self._checking()

    async def versions_of(self, tenant: str, bucket: str, key: str) -> list[Version]:
        """Every version of a key known to its replicas, merged (union), less purged versions
        (a purge record from any replica hides its target, also on a replica that has not
        learnt of the purge yet) and the purge and retention records themselves (see
        :meth:`key_records`)."""
        return visible_versions(await self.key_records(tenant, bucket, key))

    async def key_records(self, tenant: str, bucket: str, key: str) -> list[Version]:
        """Every version record of a key known to its replicas, merged (union), purge and
        retention records included, ascending.

        Every acknowledged version is on at least one replica of each site (``each-site``),
        but not necessarily on every one: the union is complete only once *every* replica of
        one site answered. So this site's replicas are asked first; when one of them is silent
        (or this node's own store cannot be trusted alone: rebuilding, or empty and not yet
        compared), the other site's replicas are asked too. A silent replica never turns into
        a false "not found": if nothing was found while no site answered whole, the read is
        refused as unavailable (retry)."""
        replicas = self.replicator.replicas_for(tenant, bucket, key)
        found: dict[tuple[int, str], Version] = {}
        here = replicas[self.config.site]
        answered: set[str] = set()
        if self.config.name in here:
            for v in self.store.versions(tenant, bucket, key):
                found[v.order] = v
            # While rebuilding, the local store is still filling; an empty store not yet
            # compared with a peer may have been wiped: neither is this replica's whole answer.
            if not self.rebuilding and not (self.checking and not found):
                answered.add(self.config.name)

        async def ask(node: str) -> None:
            versions = await self._fetch_versions(node, tenant, bucket, key)
            if versions is None:
                return
            answered.add(node)
            for v in versions:
                found[v.order] = v

        async def ask_all(nodes: list[str]) -> None:
            # The usual 1+1 asks nobody here: no nursery (and its scheduler passes) on a get.
            if len(nodes) <= 1:
                for node in nodes:
                    await ask(node)
                return
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(ask, node)

        others_here = [n for n in here if n != self.config.name]
        await ask_all(others_here)
        if (self.config.name in here and self.checking and not self.rebuilding
                and any(n in answered for n in others_here)):
            # An empty store not yet compared with anyone: most likely a new node of a new
            # cluster (a wiped one turns to "rebuilding" at its first round). Another replica
            # of this site answered, so its answer stands in for this node's, as before.
            answered.add(self.config.name)
        if set(here) <= answered:
            return sorted(found.values(), key=lambda v: v.order)
        remote = replicas[self.layout.other_site(self.config.site)]
        await ask_all(remote)
        if not set(remote) <= answered and not found:
            silent = sorted(n for nodes in replicas.values() for n in nodes if n not in answered)
            raise Unavailable(f"replicas of {bucket}/{key} did not answer ({', '.join(silent)}) "
                              "and no site answered whole; retry later")
        return sorted(found.values(), key=lambda v: v.order)

    def local_only(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether this node's store is the whole answer of :meth:`key_records` for the key:
        it is the key's only replica in its site, neither rebuilding nor unchecked, so
        nobody else would be asked (the usual 1+1 cluster: every key, on every node)."""
        if self.rebuilding or self.checking:
            return False
        return self.replicator.sole_replica_here(tenant, bucket, key)

    def local_version(self, tenant: str, bucket: str, key: str,
                      wanted: tuple[int, str] | None) -> Version | None:
        """For a key :meth:`local_only` answers for: the version a reader is shown as its
        current one (*wanted* None; it may be a delete marker) or as ``(hlc, node)``
        *wanted*, read now, without awaiting; None when there is no such version.

        The same version as the last (or the named) of ``visible_versions(key_records)``,
        from one record: the index keeps each key's head, its greatest version that is
        neither a purge nor a retention record, and drops a purged version. Opening every
        version of the key to pick one (its sealed names, a Version built) cost a get ~28
        Python calls per version the key had: a key put 20 times, 1,028 calls per small get
        on its node against 497 for a key put once."""
        if wanted is None:
            return self.store.current(tenant, bucket, key)
        found = self.store.get_version(tenant, bucket, key, *wanted)
        return None if found is None or found.control else found

    def list_local(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                   versions: bool) -> Part:
        """This node's part of a listing, bounded by count and by encoded bytes."""
        if versions:
            start = decode_version_cursor(after) if after else None

            def fetch_versions(last: Version | None, n: int) -> list[Version]:
                cursor = start if last is None else (last.key, last.hlc, last.node)
                return self.store.list_versions(tenant, bucket, prefix=prefix, after=cursor,
                                                limit=n)
            return take_versions(fetch_versions, limit)

        def fetch_current(last: Version | None, n: int) -> list[Version]:
            return self.store.list_current(tenant, bucket, prefix=prefix,
                                           after=after if last is None else last.key, limit=n,
                                           include_deleted=True)
        return take_versions(fetch_current, limit)

    def list_buckets_local(self, tenant: str, after: str) -> BucketPart:
        names = self.store.buckets(tenant, after=after, limit=_BUCKETS_FETCH)
        part = take_buckets(names)
        return BucketPart(part.buckets, part.more or len(names) == _BUCKETS_FETCH)

    def _site_gap(self, what: str, plan: str, down: dict[str, str]) -> None:
        """Raise :class:`Unavailable` unless every key placed on a *down* node of this site
        also has a replica here that answered: with ``replicas_per_site`` ≥ 2 and fewer down
        nodes than that, each key keeps at least one live replica in the site."""
        if not down:
            return
        site = self.config.site
        per_key = min(self.layout.replicas_per_site, len(self.layout.plan_nodes(site, plan)))
        if len(down) < per_key:
            log.info("event=listing_without nodes=%s replicas_per_site=%d", ",".join(down),
                     self.layout.replicas_per_site)
            return
        other = self.layout.other_site(site)
        raise Unavailable(
            f"{what} from site {site} needs {', '.join(sorted(down))}, which did not answer ("
            + "; ".join(f"{n}: {e}" for n, e in sorted(down.items()))
            + f"); with replicas_per_site = {self.layout.replicas_per_site} some keys have no "
            f"other replica in {site}: list from site {other} (--site {other}) or retry once "
            "the node is back")

    async def list_site(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                        versions: bool) -> list[Part]:
        """Every node of this site's part of a listing. A node that does not answer is done
        without when every key it holds has another replica here (else :class:`Unavailable`).
        While this node rebuilds, the other site's nodes are asked too (their union covers
        what it lacks)."""
        plan = self.replicator.plan_of(tenant)  # only nodes of the plan's role hold its keys
        names = [n.name for n in self.layout.plan_nodes(self.config.site, plan)]
        optional = set()
        if self.rebuilding or self.checking:
            optional = {n.name for n in self.layout.plan_nodes(
                self.layout.other_site(self.config.site), plan)}
            names += sorted(optional)
        parts: dict[str, Part] = {}
        down: dict[str, str] = {}

        async def ask(name: str) -> None:
            if name == self.config.name:
                # In a worker thread: the first listing of a bucket opens all its names (or
                # waits for the start's warm-up to have done so), which must not stall the
                # event loop and every put with it.
                parts[name] = await trio.to_thread.run_sync(
                    self.list_local, tenant, bucket, prefix, after, limit, versions)
                return
            try:
                body = await self.peers.call(
                    name, ListPeer(UNSENT, self.layout.layout_id, tenant, bucket, prefix, after,
                                   limit, versions))
                found = [Version.from_wire(v) for v in body["versions"]]
                # A node without "more" answered by count alone: a full part may go on.
                parts[name] = Part(found, more=body.get("more", len(found) >= limit))
            except (HdsdError, KeyError, TypeError) as exc:
                if name not in optional:
                    down[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(ask, name)
        self._site_gap(f"listing {bucket}", plan, down)
        return list(parts.values())

    async def list_buckets_site(self, tenant: str, after: str) -> list[BucketPart]:
        """Every node of this site's part of a bucket listing (a node that does not answer is
        done without as in :meth:`list_site`: a bucket whose keys all live on a silent node
        would otherwise be missing)."""
        plan = self.replicator.plan_of(tenant)
        names = [n.name for n in self.layout.plan_nodes(self.config.site, plan)]
        parts: list[BucketPart] = []
        down: dict[str, str] = {}

        async def ask(name: str) -> None:
            if name == self.config.name:
                parts.append(self.list_buckets_local(tenant, after))
                return
            try:
                body = await self.peers.call(
                    name, ListBucketsPeer(UNSENT, self.layout.layout_id, tenant, after))
                parts.append(BucketPart(body["buckets"], more=body.get("more", False)))
            except (HdsdError, KeyError, TypeError) as exc:
                down[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(ask, name)
        self._site_gap("listing buckets", plan, down)
        return parts

    async def buckets_site(self, tenant: str) -> list[str]:
        """Every bucket of *tenant* holding versions in this site (every page, merged)."""
        out: list[str] = []
        after = ""
        while True:
            names, cursor = merge_buckets(await self.list_buckets_site(tenant, after))
            out.extend(names)
            if cursor is None:
                return out
            after = cursor

    def holds(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether this node is one of the key's replicas (its chunks are read here first)."""
        return self.config.name in self.replicator.replicas_for(tenant, bucket, key)[
            self.config.site]

    async def chunk_payload(self, tenant: str, bucket: str, key: str, chunk_id: bytes,
                            codec: ChunkCodec, size: int | None = None) -> bytes:
        """The plaintext of a chunk: from the local replica, else (missing or damaged) from
        another replica, local site first, repairing the local copy when it was missing.
        *size*: the chunk's plaintext length if known — a chunk of at most
        :data:`ON_LOOP_MAX` bytes whose record is in the page cache is read and opened on the
        event loop, without a worker thread's hop."""
        if self.holds(tenant, bucket, key):
            try:
                if size is not None and size <= ON_LOOP_MAX:
                    # Never waits for the disk (None: not all cached, or a compaction holds
                    # the segments). Opening it (AEAD and BLAKE3) holds the loop ~50 µs for
                    # 40 KiB, ~70 for 64 KiB; the hop it replaces cost the loop ~100 Python
                    # calls and three scheduler passes per get.
                    view = self.store.read_chunk_now(tenant, chunk_id)
                    if view is not None:
                        await trio.lowlevel.checkpoint_if_cancelled()
                        return codec.open(chunk_id, view)

                # Read and decrypt in one worker-thread hop (a hop costs ~0.1 ms).
                def read_and_open() -> bytes:
                    return self.open_local(tenant, chunk_id, codec)
                return await trio.to_thread.run_sync(read_and_open, limiter=pipeline_limiter())
            except (NotFound, IntegrityError) as exc:
                return await self.chunk_elsewhere(tenant, bucket, key, chunk_id, codec, exc)
        return await self.chunk_elsewhere(tenant, bucket, key, chunk_id, codec, None)

    def open_local(self, tenant: str, chunk_id: bytes, codec: ChunkCodec) -> bytes:
        """The plaintext of a chunk of this node's store (blocking: a worker thread's), the
        payload decrypted where it was read — a view, not copied out of its record first.
        :class:`NotFound` or :class:`IntegrityError` as :meth:`Store.read_chunk`."""
        return codec.open(chunk_id, self.store.read_chunk_view(tenant, chunk_id))

    async def chunk_elsewhere(self, tenant: str, bucket: str, key: str, chunk_id: bytes,
                              codec: ChunkCodec, local: HdsdError | None) -> bytes:
        """The plaintext of a chunk from another replica, local site first; *local*: why this
        node's copy could not be read (None: this node is not a replica) — a missing copy
        is repaired here with the one found."""
        if local is not None:
            log.warning("event=read_repair_needed tenant=%s chunk=%s error=%s", tenant,
                        chunk_id.hex()[:16], local)
        replicas = self.replicator.replicas_for(tenant, bucket, key)
        missing = isinstance(local, NotFound)
        others = [n for site in (self.config.site, self.layout.other_site(self.config.site))
                  for n in replicas[site] if n != self.config.name]
        last: HdsdError = NotFound(f"chunk {chunk_id.hex()[:16]} of {bucket}/{key} not found")
        for node in others:
            try:
                body = await self.peers.call(
                    node, FetchChunk(UNSENT, self.layout.layout_id, tenant, chunk_id))
                plain = await open_in_thread(codec, chunk_id, body["payload"])
            except (HdsdError, KeyError, TypeError) as exc:
                last = exc if isinstance(exc, HdsdError) else IntegrityError(str(exc))
                continue
            if missing:
                await self.store.commit([ChunkRecord(tenant=tenant, chunk_id=chunk_id,
                                                     payload=body["payload"])])
                log.warning("event=read_repaired tenant=%s chunk=%s from=%s", tenant,
                            chunk_id.hex()[:16], node)
            return plain
        raise last

    def read_ahead(self, tenant: str, bucket: str, key: str, chunk_ids: Sequence[bytes],
                   codec: ChunkCodec, depth: int) -> ReadAhead | None:
        """The chunks *chunk_ids* of a key, read and opened ahead of their use (see
        :class:`ReadAhead`); None when this node is not one of the key's replicas (its
        chunks all come from peers: :meth:`chunk_payload`, one after the other)."""
        if not self.holds(tenant, bucket, key):
            return None
        return ReadAhead(self, tenant, bucket, key, chunk_ids, codec, depth)

    async def _fetch_versions(self, node: str, tenant: str, bucket: str,
                              key: str) -> list[Version] | None:
        """*node*'s versions of a key; None (logged) if it did not answer."""
        try:
            body = await self.peers.call(
                node, FetchVersions(UNSENT, self.layout.layout_id, tenant, bucket, key))
        except HdsdError as exc:
            log.info("event=read_fallback peer=%s error=%s", node, exc)
            return None
        return [Version.from_wire(raw) for raw in body["versions"]]

    async def _versions_asked(self, nodes: list[str], tenant: str, bucket: str,
                              key: str) -> list[Version]:
        """The versions of a key that any of *nodes* (asked at once) holds."""
        found: list[Version] = []

        async def ask(node: str) -> None:
            found.extend(await self._fetch_versions(node, tenant, bucket, key) or [])

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask, node)
        return found

    def first_request_now(self, tenant: str, request_id: bytes,
                          replicas: dict[str, list[str]]) -> bool:
        """Whether :meth:`find_request` for a first attempt (not a retry) of a key placed on
        *replicas* would find nothing without asking anyone: no version of *request_id* here,
        and this node the key's only replica in its site."""
        return (not request_id or self.store.find_request(tenant, request_id) is None) and \
            replicas.get(self.config.site) == [self.config.name]

    async def find_request(self, tenant: str, request_id: bytes, bucket: str,
                           key: str, retry: bool = False) -> Version | None:
        """The version an earlier attempt of *request_id* wrote, if any can be found.

        A first attempt pays at most its own site's replicas (usually nothing: the coordinator
        is the replica). A *retry* may follow an attempt that reached only the other site (the
        client switched sites, or a link was cut after that site stored it), so it asks every
        replica of both sites. A replica that does not answer cannot be searched: then a second
        version with the same content may still be written, never a lost or altered one."""
        if not request_id:
            return None
        found = self.store.find_request(tenant, request_id)
        if found is not None:
            return found
        replicas = self.replicator.replicas_for(tenant, bucket, key)
        if retry:
            others = [n for nodes in replicas.values() for n in nodes if n != self.config.name]
            known = await self._versions_asked(others, tenant, bucket, key)
            return next((v for v in known if v.request_id == request_id), None)
        if replicas[self.config.site] == [self.config.name]:
            return None  # the only replica here is us: nothing elsewhere in this site
        # Another node of this site holds the key: the retry may have reached it first.
        try:
            known = await self.versions_of(tenant, bucket, key)
        except Unavailable as exc:
            # Nobody who answered holds a version of the key, and no site answered whole
            # (this node rebuilding or unchecked while a replica of each site is silent: a
            # 2x2 cluster with one node killed while another still pulls from it). As above,
            # an unsearchable replica costs at most a second version of the same content; a
            # first attempt is written, not refused for a search it does not need to be safe.
            log.info("event=request_lookup_partial bucket=%s error=%s", bucket, exc)
            return None
        return next((v for v in known if v.request_id == request_id), None)


class _Read:
    """One chunk of a :class:`ReadAhead`: queued, then read and opened in a worker thread."""

    __slots__ = ("chunk_id", "claimed", "done", "error", "plain", "started")

    def __init__(self, chunk_id: bytes) -> None:
        self.chunk_id = chunk_id
        self.started = False
        self.claimed = False  # ReadAhead.next waits for a limiter token for it
        self.plain = b""
        self.error: BaseException | None = None
        self.done = trio.Event()


class ReadAhead:
    """The chunks of one object, in order, read from this node's store and opened (decrypted,
    checked against their id) in worker threads ahead of their sending: at most *depth*
    queued or read and not yet taken, one read at a time, each holding a token of the
    pipeline's shared limiter while it runs.

    Without a task or a memory channel of its own: a producer task handing chunks over a
    channel (each chunk a ``to_thread.run_sync``, a channel send and a receive) was ~145
    Python calls and three scheduler steps per MiB on the event loop of a streaming get. A
    read reports back through ``run_sync_soon`` (as the sealing side's ``_Dispatcher``) and
    its completion starts the next one, so the reads go on while the consumer sends.

    A chunk missing or damaged here is read from another replica when its turn comes
    (:meth:`ReadPaths.chunk_elsewhere`). :meth:`close` (always, also on error or
    cancellation) forgets queued reads; a running one finishes in its thread and gives its
    token back.
    """

    def __init__(self, paths: ReadPaths, tenant: str, bucket: str, key: str,
                 chunk_ids: Sequence[bytes], codec: ChunkCodec, depth: int) -> None:
        self._paths = paths
        self._where = (tenant, bucket, key)
        self._ids = chunk_ids
        self._codec = codec
        self._depth = max(1, depth)
        self._next = 0  # the next of _ids to queue
        self._queue: deque[_Read] = deque()  # queued, reading or read; not yet taken
        self._running = False
        self._closed = False
        self._limiter = pipeline_limiter()
        self._token = trio.lowlevel.current_trio_token()
        self._fill()

    async def next(self) -> bytes:
        """The next chunk's plaintext (in the order of *chunk_ids*); the errors of
        :meth:`ReadPaths.chunk_payload`."""
        job = self._queue[0]
        if not job.started:
            # No token was free when it was queued: wait for one. Claimed first, so that a
            # completion running before we resume does not try to start it a second time.
            job.claimed = True
            try:
                await self._limiter.acquire_on_behalf_of(job)
            finally:
                job.claimed = False
            self._start(job)
        if job.done.is_set():
            # Read already: taken without a scheduler pass (``wait`` would pass anyway, ~100
            # Python calls and ~0.75 passes per MiB of a streamed get). Fair all the same: a
            # chunk counts as read only once its completion ran on the loop, so at most
            # *depth* chunks are taken in a row without a pass, and the sink's sends pass
            # whenever the client's socket is full.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await job.done.wait()
        self._queue.popleft()
        self._fill()
        if job.error is None:
            return job.plain
        if isinstance(job.error, (NotFound, IntegrityError)):
            tenant, bucket, key = self._where
            return await self._paths.chunk_elsewhere(tenant, bucket, key, job.chunk_id,
                                                     self._codec, job.error)
        raise job.error

    def close(self) -> None:
        self._closed = True
        self._queue.clear()

    def _fill(self) -> None:
        while len(self._queue) < self._depth and self._next < len(self._ids):
            self._queue.append(_Read(self._ids[self._next]))
            self._next += 1
        self._start_ready()

    def _start_ready(self) -> None:
        if self._running or self._closed:
            return
        job = next((j for j in self._queue if not j.started), None)
        if job is None or job.claimed:
            return
        try:
            self._limiter.acquire_on_behalf_of_nowait(job)
        except trio.WouldBlock:
            return  # next() waits for a token when it comes to this chunk
        self._start(job)

    def _start(self, job: _Read) -> None:
        job.started = True
        self._running = True
        paths, codec, token = self._paths, self._codec, self._token
        tenant = self._where[0]

        def read_and_open() -> None:
            try:
                job.plain = paths.open_local(tenant, job.chunk_id, codec)
            except BaseException as exc:
                job.error = exc

        run_in_worker(read_and_open, partial(self._complete, job), token, "read_and_open")

    def _complete(self, job: _Read) -> None:
        self._limiter.release_on_behalf_of(job)
        self._running = False
        job.done.set()
        self._start_ready()
