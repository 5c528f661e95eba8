"""Multipart uploads: their state on the node's disk until completed, aborted or reclaimed.

A part's bytes are stored by the node as chunks at once (sealed, replicated under the write
policy, on the replicas of the key the upload completes into: see
``hdsd.node.store_part``); what stays here is each part's *record* — its MD5, size and the
node's description of its chunks — and the upload's own (bucket, key, metadata, creation
time). Layout: ``<root>/<tenant>/<upload id>/upload.json`` and ``part-<number:05d>.json``,
each written under a temporary name, fsynced, then renamed, so a record is whole or absent; a
part uploaded again replaces the record of its number. CompleteMultipartUpload hands the
records to the node, which commits one version naming the parts' chunks. An upload neither
completed nor aborted is reclaimed ``expire_s`` after its creation (7 days by default,
``[s3] multipart_expire_h``); the chunks of its parts, like those of any put that never
committed its version, stay in the log unreferenced.

Names are sealed at rest here too, like the store's (``docs/design-notes.md``, *Names sealed at
rest*): ``upload.json`` holds the bucket, key and metadata sealed under the tenant's key
(the node's name seal: XChaCha20-Poly1305, associated data the tenant and upload id, so a
sealed record cannot be moved to another upload) and the creation time in clear (reclaiming
needs no key). A shredded tenant's uploads can no longer be opened: they answer NoSuchUpload
and are reclaimed by age. A part record names no object: MD5, size and chunk ids.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from .._errors import HdsdError
from ._xml import S3Error

__all__ = ["NameSealer", "Part", "Upload", "Uploads"]


class NameSealer(Protocol):
    """A tenant's name seal (the node's: :class:`hdsd.pipeline.NameSeal`)."""

    def seal(self, plain: bytes, aad: bytes) -> bytes: ...

    def open(self, sealed: bytes, aad: bytes) -> bytes: ...


_AAD = b"hdsd-s3-upload-v1\x00"

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_PART_RE = re.compile(r"^part-(\d{5})\.json$")


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    tenant: str
    bucket: str
    key: str
    metadata: dict[str, str]
    created: float


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    md5: str
    size: int
    record: dict[str, Any]  # the node's description of the part's chunks
    modified: float


def _write_durably(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Uploads:
    def __init__(self, root: Path, expire_s: float,
                 seal_for: Callable[[str], NameSealer | None] | None = None) -> None:
        """*seal_for*: a tenant's name seal (None: the tenant has no key here). Without it
        (tests of the gateway alone) names are kept in clear."""
        self.root = root
        self.expire_s = expire_s
        self.seal_for = seal_for

    def _names_doc(self, tenant: str, upload_id: str, names: dict[str, Any]) -> dict[str, Any]:
        if self.seal_for is None:
            return names
        seal = self.seal_for(tenant)
        if seal is None:
            raise S3Error("AccessDenied", 403, f"tenant {tenant!r} has no key on this node")
        sealed = seal.seal(json.dumps(names).encode(), _AAD + f"{tenant}\x00{upload_id}".encode())
        return {"sealed": base64.b64encode(sealed).decode()}

    def _open_names(self, tenant: str, upload_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        if "sealed" not in doc:
            return doc  # in clear: written without a seal (or before names were sealed here)
        seal = self.seal_for(tenant) if self.seal_for is not None else None
        if seal is None:
            raise ValueError("no key to open the upload's names (tenant shredded?)")
        plain = seal.open(base64.b64decode(doc["sealed"]),
                          _AAD + f"{tenant}\x00{upload_id}".encode())
        names: dict[str, Any] = json.loads(plain)
        return names

    def _dir(self, tenant: str, upload_id: str) -> Path:
        if not _ID_RE.match(upload_id):
            raise S3Error("NoSuchUpload", 404, "the upload id is not one of this gateway's")
        return self.root / tenant / upload_id

    async def create(self, tenant: str, bucket: str, key: str,
                     metadata: dict[str, str]) -> Upload:
        upload = Upload(secrets.token_hex(16), tenant, bucket, key, dict(metadata), time.time())

        def write() -> None:
            where = self.root / tenant / upload.upload_id
            where.mkdir(parents=True, mode=0o700)
            _write_durably(where / "upload.json", {
                **self._names_doc(tenant, upload.upload_id, {
                    "bucket": bucket, "key": key, "metadata": upload.metadata}),
                "created": upload.created})
            _fsync_dir(where.parent)

        await trio.to_thread.run_sync(write)
        return upload

    def get(self, tenant: str, upload_id: str, bucket: str | None = None,
            key: str | None = None) -> Upload:
        where = self._dir(tenant, upload_id)
        try:
            doc = json.loads((where / "upload.json").read_text(encoding="utf-8"))
            names = self._open_names(tenant, upload_id, doc)
            upload = Upload(upload_id, tenant, names["bucket"], names["key"],
                            names["metadata"], doc["created"])
        except (OSError, ValueError, KeyError, TypeError, HdsdError):
            raise S3Error("NoSuchUpload", 404, f"upload {upload_id} does not exist (completed, "
                                               "aborted or reclaimed?)") from None
        if (bucket is not None and bucket != upload.bucket) or \
                (key is not None and key != upload.key):
            raise S3Error("NoSuchUpload", 404, f"upload {upload_id} is not for this key")
        return upload

    def parts(self, upload: Upload) -> list[Part]:
        where = self._dir(upload.tenant, upload.upload_id)
        found: list[Part] = []
        for entry in os.scandir(where):
            m = _PART_RE.match(entry.name)
            if not m:
                continue
            try:
                doc = json.loads(Path(entry.path).read_text(encoding="utf-8"))
                found.append(Part(int(m[1]), doc["md5"], int(doc["size"]), doc["record"],
                                  entry.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue  # removed meanwhile (abort, reclaim): not a part any more
        return sorted(found, key=lambda p: p.number)

    async def record_part(self, upload: Upload, number: int, md5: str, size: int,
                          record: dict[str, Any]) -> Part:
        """Durably note part *number* (its chunks are already stored); replaces an earlier
        upload of the same number."""
        where = self._dir(upload.tenant, upload.upload_id)
        if not (where / "upload.json").is_file():
            raise S3Error("NoSuchUpload", 404, f"upload {upload.upload_id} ended meanwhile")
        await trio.to_thread.run_sync(_write_durably, where / f"part-{number:05d}.json",
                                      {"md5": md5, "size": size, "record": record})
        return Part(number, md5, size, record, time.time())

    async def remove(self, upload: Upload) -> None:
        where = self._dir(upload.tenant, upload.upload_id)
        await trio.to_thread.run_sync(lambda: shutil.rmtree(where, ignore_errors=True))

    def list(self, tenant: str, bucket: str) -> list[Upload]:
        out = []
        base = self.root / tenant
        if not base.is_dir():
            return []
        for entry in os.scandir(base):
            try:
                upload = self.get(tenant, entry.name)
            except S3Error:
                continue
            if upload.bucket == bucket:
                out.append(upload)
        return sorted(out, key=lambda u: (u.key, u.created))

    def reclaim(self, now: float | None = None) -> int:
        """Remove uploads older than ``expire_s`` (and leftovers of broken ones); how many."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for tenant_dir in self.root.iterdir():
            for where in tenant_dir.iterdir() if tenant_dir.is_dir() else ():
                meta = where / "upload.json"
                try:
                    created = json.loads(meta.read_text(encoding="utf-8"))["created"]
                except (OSError, ValueError, KeyError):
                    created = where.stat().st_mtime  # never finished creating: by its age
                if now - created >= self.expire_s:
                    shutil.rmtree(where, ignore_errors=True)
                    removed += 1
        return removed

