"""Import an export archive (format in :mod:`._archive`) into the client's tenant.

The archive is read as a stream (``tarfile`` mode ``r|``, each call in a worker thread), so it
may come from a pipe, and memory stays bounded: the manifest and checksum list are spooled to
temporary files, objects go straight from the archive into puts. Every object is checked (size
and SHA-256) against the manifest while it streams, and the put is completed only if it matches:
a damaged object is never stored, and the import stops with an :class:`ArchiveError` naming it.

Versions are recreated in archive order — each key's versions oldest first — so the newest is
current in the target too; delete markers become deletes. The target cluster assigns new
version ids (its own clock): the report maps old ids to new ones. Each version's request id is
derived from the manifest entry, so re-running an interrupted import stores nothing twice.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Any, TypeAlias, TypeVar

import trio

from .._errors import ArchiveError, HdsdError, NotFound, PermissionDenied
from . import _archive as A
from ._async import AsyncClient
from ._export import certificate_identity

__all__ = ["ImportSummary", "import_archive"]

#: ``progress(bytes_done, bytes_total)``
ImportProgress: TypeAlias = Callable[[int, int], None]

_READ = 1 << 20
#: Longest manifest or checksum line read. A real entry is a few KiB at most (a key is at most
#: 1 KiB, metadata 8 KiB, both JSON-escaped); anything longer is not an hdsd manifest, and is
#: refused after reading this much — never held whole, whatever the archive holds.
MAX_LINE = 1 << 20
T = TypeVar("T")


def _readline(spool: IO[bytes], what: str) -> bytes:
    """One line of a spooled file (b"" at its end), at most MAX_LINE bytes read."""
    line = spool.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ArchiveError(f"{what} is longer than {MAX_LINE} bytes: not an hdsd export "
                           "(or a damaged one)")
    return line


@dataclass(frozen=True, slots=True)
class ImportSummary:
    source_tenant: str
    source_cluster: str
    tenant: str
    cluster: str
    versions: int
    objects: int
    delete_markers: int
    replayed: int  # already stored by an earlier run of the same import
    skipped: int  # delete markers with nothing to delete in the target
    total_bytes: int
    retention_locks: int = 0  # buckets whose retention lock was set (after their versions)
    holds: int = 0  # legal holds set (after the versions)


async def _in_thread(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a tarfile call in a worker thread; a damaged archive becomes an ArchiveError."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArchiveError(f"archive damaged or truncated at {what}: {exc}") from None


async def _spool(tar: tarfile.TarFile, member: tarfile.TarInfo, spool: IO[bytes]) -> None:
    source = await _in_thread(member.name, tar.extractfile, member)
    if source is None:
        raise ArchiveError(f"{member.name}: not a regular file")
    while piece := await _in_thread(member.name, source.read, _READ):
        spool.write(piece)
    spool.seek(0)


def _expect(tar: tarfile.TarInfo | None, name: str) -> tarfile.TarInfo:
    if tar is None:
        raise ArchiveError(f"archive ends before {name}: truncated")
    if tar.name != name or not tar.isreg():
        raise ArchiveError(f"expected {name}, found {tar.name!r}: not an hdsd export, or "
                           "members out of order")
    return tar


async def import_archive(client: AsyncClient, source: IO[bytes], *,
                         report: IO[bytes] | None = None,
                         progress: ImportProgress | None = None,
                         retention: bool = True) -> ImportSummary:
    """Load the archive read from *source* into the client's tenant; write the old → new
    version id map as JSON lines to *report*. Returns only once every version is stored and
    matched the manifest; raises :class:`ArchiveError` (naming the entry) otherwise.

    Each stored version gets the metadata ``hdsd-original-created``: when it was first
    written (kept from an earlier import if it has it already). With *retention*, the
    buckets' retention locks and the legal holds of the export are set once every version
    is stored (a lock or hold set first would refuse the older versions' overwrites); that
    needs the tenant's admin role, checked before anything is stored."""
    ident = certificate_identity(client.profile)
    tenant = ident.tenant or ""
    tar = await _in_thread("the start", tarfile.open, None, "r|", source)
    try:
        with tempfile.TemporaryFile() as manifest, tempfile.TemporaryFile() as sums:
            await _spool(tar, _expect(await _in_thread("the start", tar.next),
                                             A.MANIFEST_NAME), manifest)
            header = A.check_header(A.parse_line(
                _readline(manifest, f"{A.MANIFEST_NAME} line 1"), "the header line"))
            governed = retention and bool(A.retention_of(header) or A.holds_of(header))
            if governed and ident.role != "admin":
                raise PermissionDenied(
                    "this export carries retention locks and legal holds: importing them needs "
                    f"a profile of tenant {tenant!r} with role admin; use one, or import the "
                    "versions only (--without-retention)")
            await _spool(tar, _expect(await _in_thread(A.MANIFEST_NAME, tar.next),
                                            A.SUMS_NAME), sums)
            if report is not None:
                report.write(A.dump_line({
                    "report": "hdsd-import", "format_version": A.FORMAT_VERSION,
                    "source": {k: header.get(k) for k in ("tenant", "cluster", "exported_at")},
                    "target": {"tenant": tenant, "cluster": client.profile.cluster_id}}))
            counts = await _load(client, tar, header, manifest, sums, report, progress)
            last = await _in_thread("the end", tar.next)
            if last is not None:
                raise ArchiveError(f"unexpected member {last.name!r} after the last manifest "
                                   "entry")
            if governed:
                counts.update(await _govern(client, tenant, header))
    finally:
        await trio.to_thread.run_sync(tar.close)
    summary = ImportSummary(source_tenant=header["tenant"], source_cluster=header["cluster"],
                            tenant=tenant, cluster=client.profile.cluster_id, **counts)
    if (summary.versions, summary.objects, summary.total_bytes) != \
            (header["versions"], header["objects"], header["total_bytes"]):
        raise ArchiveError(
            f"{A.MANIFEST_NAME}: the header announces {header['versions']} versions, "
            f"{header['objects']} objects, {header['total_bytes']} bytes; the archive holds "
            f"{summary.versions}, {summary.objects}, {summary.total_bytes}")
    if report is not None:
        report.write(A.dump_line({"summary": {
            f: getattr(summary, f) for f in summary.__dataclass_fields__}}))
    return summary


async def _govern(client: AsyncClient, tenant: str, header: dict[str, Any]) -> dict[str, int]:
    """Set the export's retention locks and legal holds (idempotent: a lock only grows, a
    hold set twice is one hold)."""
    locks = holds = 0
    for r in A.retention_of(header):
        try:
            await client.bucket_create(tenant, r["bucket"], r["retention_days"])
        except HdsdError as exc:
            raise type(exc)(f"setting the retention lock of bucket {r['bucket']}: {exc}") \
                from None
        locks += 1
    for h in A.holds_of(header):
        try:
            await client.hold_set(tenant, h["bucket"], h["key"])
        except HdsdError as exc:
            raise type(exc)(f"setting the legal hold on {h['bucket']}/{h['key']}: {exc}") \
                from None
        holds += 1
    return {"retention_locks": locks, "holds": holds}


async def _load(client: AsyncClient, tar: tarfile.TarFile, header: dict[str, Any],
                manifest: IO[bytes], sums: IO[bytes], report: IO[bytes] | None,
                progress: ImportProgress | None) -> dict[str, int]:
    n = dict(versions=0, objects=0, delete_markers=0, replayed=0, skipped=0, total_bytes=0,
             retention_locks=0, holds=0)
    line = 1
    while raw := _readline(manifest, f"{A.MANIFEST_NAME} line {line + 1}"):
        line += 1
        entry = A.check_entry(A.parse_line(raw, f"line {line}"), line)
        what = f"{entry['bucket']}/{entry['key']} version {entry['version']}"
        request_id = A.entry_request_id(header, entry)
        status = "stored"
        new_version: str | None = None
        try:
            if entry["deleted"]:
                n["delete_markers"] += 1
                try:
                    info = await client.delete(entry["bucket"], entry["key"],
                                               request_id=request_id)
                    new_version = info.version
                except NotFound:
                    status = "skipped"  # nothing (current) to delete here: same visible state
                    n["skipped"] += 1
            else:
                listed = _readline(sums, f"{A.SUMS_NAME} entry for line {line}").decode(
                    "utf-8", "replace")
                if listed != f"{entry['sha256']}  {entry['path']}\n":
                    raise ArchiveError(f"{A.SUMS_NAME} disagrees with {A.MANIFEST_NAME} line "
                                       f"{line} ({entry['path']})")
                member = _expect(await _in_thread(f"the header of {entry['path']}",
                                                        tar.next), entry["path"])
                if member.size != entry["size"]:
                    raise ArchiveError(f"{entry['path']}: {member.size} bytes in the archive, "
                                       f"{entry['size']} in the manifest")
                # The original write time survives as metadata (the target's clock stamps
                # the version); an earlier import's is the real original: kept.
                metadata = {A.ORIGINAL_CREATED: entry["created"], **entry["metadata"]}
                info = await client.put(
                    entry["bucket"], entry["key"], _checked_body(tar, member, entry),
                    metadata=metadata, request_id=request_id, size=entry["size"])
                new_version = info.version
                if info.replayed:
                    status = "replayed"
                    n["replayed"] += 1
                n["objects"] += 1
                n["total_bytes"] += entry["size"]
                if progress is not None:
                    progress(n["total_bytes"], header["total_bytes"])
        except ArchiveError:
            raise
        except HdsdError as exc:
            # Name where the import stopped: re-running it resumes there, storing nothing twice.
            raise type(exc)(f"importing {what}: {exc}") from None
        n["versions"] += 1
        if report is not None:
            report.write(A.dump_line({"bucket": entry["bucket"], "key": entry["key"],
                                      "old_version": entry["version"],
                                      "new_version": new_version, "deleted": entry["deleted"],
                                      "status": status}))
    return n


async def _checked_body(tar: tarfile.TarFile, member: tarfile.TarInfo,
                        entry: dict[str, Any]) -> AsyncIterator[bytes]:
    """The object's bytes; raises (so the put is never completed) if they do not match."""
    source = await _in_thread(member.name, tar.extractfile, member)
    if source is None:
        raise ArchiveError(f"{member.name}: not a regular file")
    digest = hashlib.sha256()
    size = 0
    while piece := await _in_thread(member.name, source.read, _READ):
        digest.update(piece)
        size += len(piece)
        yield piece
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise ArchiveError(
            f"{member.name} ({entry['bucket']}/{entry['key']} version {entry['version']}): "
            f"SHA-256 {digest.hexdigest()} does not match the manifest's {entry['sha256']}; "
            "this version was not stored and the import stopped")
