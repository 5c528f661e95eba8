"""Multipart uploads staged on the node's disk until completed, aborted or reclaimed.

Layout: ``<root>/<tenant>/<upload id>/upload.json`` (bucket, key, metadata, creation time) and
one file per part, ``part-<number:05d>-<md5 hex>-<size>``: written under a temporary name,
fsynced, then renamed, so a part is either whole (its name says its MD5 and size) or absent.
A part uploaded again replaces the previous one of its number. A part is acknowledged once it
is fsynced on this node; the object is under the write policy from CompleteMultipartUpload on,
which streams the parts, in order, through the same put path as any object. An upload neither
completed nor aborted is reclaimed ``expire_s`` after its creation (7 days by default,
``[s3] multipart_expire_h``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ._xml import S3Error

__all__ = ["Part", "Upload", "Uploads"]

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_PART_RE = re.compile(r"^part-(\d{5})-([0-9a-f]{32})-(\d+)$")
_WRITE_BATCH = 1 << 20


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
    path: Path
    modified: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Uploads:
    def __init__(self, root: Path, expire_s: float) -> None:
        self.root = root
        self.expire_s = expire_s

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
            doc = {"bucket": bucket, "key": key, "metadata": upload.metadata,
                   "created": upload.created}
            tmp = where / "upload.json.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(where / "upload.json")
            _fsync_dir(where)
            _fsync_dir(where.parent)

        await trio.to_thread.run_sync(write)
        return upload

    def get(self, tenant: str, upload_id: str, bucket: str | None = None,
            key: str | None = None) -> Upload:
        where = self._dir(tenant, upload_id)
        try:
            doc = json.loads((where / "upload.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise S3Error("NoSuchUpload", 404, f"upload {upload_id} does not exist (completed, "
                                               "aborted or reclaimed?)") from None
        upload = Upload(upload_id, tenant, doc["bucket"], doc["key"], doc["metadata"],
                        doc["created"])
        if (bucket is not None and bucket != upload.bucket) or \
                (key is not None and key != upload.key):
            raise S3Error("NoSuchUpload", 404, f"upload {upload_id} is not for this key")
        return upload

    def parts(self, upload: Upload) -> list[Part]:
        where = self._dir(upload.tenant, upload.upload_id)
        found: dict[int, Part] = {}
        for entry in os.scandir(where):
            m = _PART_RE.match(entry.name)
            if m:
                part = Part(int(m[1]), m[2], int(m[3]), Path(entry.path),
                            entry.stat().st_mtime)
                old = found.get(part.number)
                if old is None or part.modified >= old.modified:
                    found[part.number] = part
        return [found[n] for n in sorted(found)]

    async def write_part(self, upload: Upload, number: int,
                         read: Callable[[], Awaitable[bytes]],
                         check: Callable[[int, bytes], None]) -> Part:
        """Stream a part to disk; *check(size, md5 digest)* runs on the whole part before it
        is made visible (Content-MD5, a payload signature)."""
        where = self._dir(upload.tenant, upload.upload_id)
        tmp = where / f"tmp-{number:05d}-{secrets.token_hex(4)}"
        md5 = hashlib.md5()
        size = 0
        f = await trio.to_thread.run_sync(lambda: open(tmp, "wb"))
        try:
            batch: list[bytes] = []
            batched = 0
            while piece := await read():
                md5.update(piece)
                size += len(piece)
                batch.append(piece)
                batched += len(piece)
                if batched >= _WRITE_BATCH:
                    data = b"".join(batch)
                    batch, batched = [], 0
                    await trio.to_thread.run_sync(f.write, data)
            data = b"".join(batch)
            check(size, md5.digest())

            def finish() -> Path:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                f.close()
                final = where / f"part-{number:05d}-{md5.hexdigest()}-{size}"
                tmp.rename(final)
                for other in where.glob(f"part-{number:05d}-*"):
                    if other != final:
                        other.unlink(missing_ok=True)
                _fsync_dir(where)
                return final

            final = await trio.to_thread.run_sync(finish)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        return Part(number, md5.hexdigest(), size, final, time.time())

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

