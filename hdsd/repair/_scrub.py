"""Scrub: re-read every record at a bounded rate, and heal what rotted from another replica.

For each indexed chunk: read its log record, check the frame checksum and the AEAD tag (which
also proves the tenant key still opens it). A bad chunk is quarantined — unindexed, so reads go
to another replica at once — then fetched from the other replicas (this site first), checked
the same way, and committed again, which indexes the good copy. Then every version this node
holds is checked to have all its chunks (a chunk lost with a damaged range or never received
is fetched the same way), and every version record in the log is re-read (a damaged one is
counted: the index keeps a copy of every version record, which reads use).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from .._errors import HdsdError, IntegrityError, NotFound, PermissionDenied
from ..peers import PeerLink, fetch_chunks, to_thread
from ..store import ChunkRecord, Location, Store
from ._sync import _Pace

__all__ = ["ScrubReport", "Scrubber"]

log = logging.getLogger("hdsd.repair")

_PAGE = 512


@dataclass(slots=True)
class ScrubReport:
    started: float = field(default_factory=time.time)
    duration_s: float = 0.0
    chunks_checked: int = 0
    versions_checked: int = 0
    bytes_checked: int = 0
    corrupt: int = 0  # chunk records that failed their checksum or AEAD tag
    missing: int = 0  # chunks named by a version held here but absent
    repaired: int = 0  # good copies fetched from another replica and committed
    unrepaired: int = 0  # no replica could give a good copy (yet): retried next scrub
    damaged_version_records: int = 0
    skipped_tenants: int = 0  # chunks of tenants without keys here (shredded): not checked
    error: str | None = None
    progress: float = 0.0  # 0..1 of the chunk walk

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ChunkOpener = Callable[[str, bytes, bytes], None]
"""``(tenant, chunk_id, payload)``: raises :class:`IntegrityError` if the AEAD tag fails,
:class:`PermissionDenied` if the tenant has no keys here."""


class Scrubber:
    def __init__(self, *, store: Store, peers: PeerLink, layout_id: str,
                 sources: Sequence[str], open_chunk: ChunkOpener, rate_bytes_s: float) -> None:
        self.store = store
        self.peers = peers
        self.layout_id = layout_id
        self.sources = list(sources)  # where good copies come from, nearest first
        self.open_chunk = open_chunk
        self.rate_bytes_s = rate_bytes_s

    async def run(self, report: ScrubReport | None = None) -> ScrubReport:
        report = report or ScrubReport()
        t0 = trio.current_time()
        pace = _Pace(self.rate_bytes_s)
        try:
            await self._chunks(report, pace)
            await self._versions(report, pace)
        except HdsdError as exc:
            report.error = f"{exc.code}: {exc.message}"
        report.duration_s = round(trio.current_time() - t0, 3)
        log.info("event=scrub_done chunks=%d versions=%d bytes=%d corrupt=%d missing=%d "
                 "repaired=%d unrepaired=%d seconds=%.3f", report.chunks_checked,
                 report.versions_checked, report.bytes_checked, report.corrupt, report.missing,
                 report.repaired, report.unrepaired, report.duration_s)
        return report

    async def _chunks(self, report: ScrubReport, pace: _Pace) -> None:
        total = max(1, self.store.statistics().records)
        after: tuple[str, bytes] | None = None
        while True:
            page = await to_thread(self.store.chunk_locations, after, _PAGE)
            if not page:
                return
            for tenant, chunk_id, loc in page:
                verdict = await to_thread(self._check_chunk, tenant, chunk_id, loc)
                report.chunks_checked += 1
                report.bytes_checked += loc.length
                if verdict == "skipped":
                    report.skipped_tenants += 1
                elif verdict != "ok":
                    report.corrupt += 1
                    log.warning("event=scrub_corrupt tenant=%s chunk=%s at=%d:%d reason=%s",
                                tenant, chunk_id.hex()[:16], loc.segment, loc.offset, verdict)
                    await to_thread(self.store.quarantine_chunk, tenant, chunk_id, loc, verdict)
                    await self._heal(tenant, chunk_id, report)
                await pace.spend(loc.length)
            after = (page[-1][0], page[-1][1])
            report.progress = min(1.0, report.chunks_checked / total)

    def _check_chunk(self, tenant: str, chunk_id: bytes, loc: Location) -> str:
        try:
            payload = self.store.read_chunk(tenant, chunk_id)
        except NotFound:
            return "ok"  # unindexed meanwhile (quarantined by a read): nothing to check here
        except IntegrityError as exc:
            return f"checksum: {exc}"
        try:
            self.open_chunk(tenant, chunk_id, payload)
        except PermissionDenied:
            return "skipped"
        except IntegrityError as exc:
            return f"aead: {exc}"
        return "ok"

    async def _heal(self, tenant: str, chunk_id: bytes, report: ScrubReport) -> None:
        for source in self.sources:
            try:
                [chunk] = await fetch_chunks(self.peers, source, self.layout_id, tenant,
                                             [chunk_id])
                await to_thread(self.open_chunk, tenant, chunk_id, chunk.payload)
            except HdsdError as exc:
                log.info("event=scrub_source_failed source=%s chunk=%s error=%s", source,
                         chunk_id.hex()[:16], exc)
                continue
            await self.store.commit([ChunkRecord(tenant, chunk_id, chunk.payload)])
            report.repaired += 1
            log.warning("event=scrub_repaired tenant=%s chunk=%s from=%s", tenant,
                        chunk_id.hex()[:16], source)
            return
        report.unrepaired += 1

    async def _versions(self, report: ScrubReport, pace: _Pace) -> None:
        after = 0
        while True:
            page = await to_thread(self.store.version_locations, after, _PAGE)
            if not page:
                return
            for vid, version, loc in page:
                report.versions_checked += 1
                try:
                    if isinstance(version, IntegrityError):
                        raise version  # its names do not open (nor will its log record's)
                    await to_thread(self.store.check_record, loc)
                except IntegrityError as exc:
                    report.damaged_version_records += 1
                    log.warning("event=scrub_version_record_damaged vid=%d error=%s", vid, exc)
                if not isinstance(version, IntegrityError) and version.inline is None:
                    for chunk_id in dict.fromkeys(version.chunks):
                        if not await to_thread(self.store.has_chunk, version.tenant, chunk_id):
                            report.missing += 1
                            await self._heal(version.tenant, chunk_id, report)
                await pace.spend(loc.length)
                after = vid
