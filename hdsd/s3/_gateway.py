"""The S3 gateway: routing, operations and their mapping onto the node's object API.

Path-style addressing (``/bucket/key``). A request is authenticated first (its access key names
the tenant and the role), authorised like a native request of that role, served through the
:class:`Backend` (the node's object API: the same put/get code as the native protocol, so an
S3 PUT returns 200 only once the write policy holds), and audited as one record.

What S3 keeps that hdsd does not have natively is stored in the version's metadata:
``s3.etag`` (the MD5 of the body, or ``md5(part md5s)-N`` of a multipart upload),
``content-type`` and the other representation headers, and ``x-amz-meta-*`` as sent.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote

import trio

from .._errors import ConnectionLost, HdsdError, NotFound
from .._groups import single_error
from ..cluster import HybridClock
from ..pipeline import random_bytes
from ..store import Version, parse_version_id
from ._auth import BodyDecoder, CredentialLookup, authenticate, body_decoder
from ._errors import S3AuthError
from ._http import HttpRequest
from ._multipart import Part, Upload, Uploads
from ._xml import S3Error, error_body, error_for, parse_xml, xml_doc

__all__ = ["Access", "Backend", "BodyDecoder", "Gateway", "Principal", "authenticate_request"]

log = logging.getLogger("hdsd.s3")

_MAX_XML = 1 << 20  # DeleteObjects of 1,000 long keys fits
_MAX_USER_METADATA = 2 << 10  # S3's limit on x-amz-meta-* (keys and values)
_MIN_PART = 5 << 20
_SMALL_BODY = 16 << 10  # read whole before storing (the default inline_max)
_MAX_PARTS = 10_000
_KEEP_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language",
                 "cache-control", "expires")
_ETAG = "s3.etag"
_LAST = "\U0010ffff"
_MAX_RETAIN_MS = 100 * 366 * 86_400_000
_VERSIONS_PAGE = 1000  # versions asked of the node per listing call (ListObjectVersions)
_STORING = frozenset({"PutObject", "UploadPart", "UploadPartCopy", "CopyObject",
                      "CompleteMultipartUpload"})  # sorts after any key continuing a common prefix


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent the request: an access key of a tenant, with a role."""

    name: str
    tenant: str
    role: str


@dataclass(frozen=True, slots=True)
class Access:
    principal: Principal
    decoder: BodyDecoder


class Backend(Protocol):
    """What the gateway needs of the node (``hdsd.node`` implements it over its object API)."""

    def authorize(self, role: str, op: str) -> None: ...

    def check_serving(self) -> None: ...

    async def audit_ready(self) -> None: ...

    def in_flight(self) -> AbstractContextManager[None]: ...

    def check_put(self, tenant: str, bucket: str, key: str) -> None:
        """The refusals of a put that need nothing but memory (tenant, node role, names):
        run before a small body is read whole, so they come before ``100 Continue``."""
        ...

    async def put(self, tenant: str, bucket: str, key: str, source: Any, *, size: int | None,
                  metadata: Mapping[str, str]) -> Version: ...

    async def store_part(self, tenant: str, bucket: str, key: str,
                         source: Any) -> dict[str, Any]: ...

    async def compose(self, tenant: str, bucket: str, key: str,
                      records: builtins.list[dict[str, Any]],
                      metadata: Mapping[str, str]) -> Version: ...

    def piece_source(self, receive: trio.MemoryReceiveChannel[bytes],
                     trailer: Mapping[str, str]) -> Any:
        """A body source over pieces another task sends into *receive* (a copy, an upload
        part copied): the node's own kind of source, so the body is stored as any other."""
        ...

    async def resolve(self, tenant: str, bucket: str, key: str,
                      version: str | None) -> Version: ...

    async def retention(self, tenant: str, bucket: str, key: str,
                        version: str | None) -> tuple[Version, int]: ...

    async def retain(self, tenant: str, bucket: str, key: str, version: str | None,
                     until_ms: int) -> tuple[Version, int]: ...

    def now_ms(self) -> int: ...

    async def stream(self, tenant: str, version: Version, lo: int, hi: int,
                     sink: Callable[[memoryview], Awaitable[bool]]) -> bool: ...

    async def delete(self, tenant: str, bucket: str, key: str) -> Version: ...

    async def purge(self, tenant: str, bucket: str, key: str, version: str) -> Version: ...

    async def versions(self, tenant: str, bucket: str, key: str) -> list[Version]: ...

    async def list(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                   versions: bool) -> tuple[builtins.list[dict[str, Any]], str | None]: ...

    async def buckets(self, tenant: str) -> builtins.list[str]: ...

    async def bucket_exists(self, tenant: str, bucket: str) -> bool: ...

    async def create_bucket(self, tenant: str, bucket: str) -> bool: ...

    def audit(self, principal: Principal | None, op: str, bucket: str, key: str, version: str,
              bytes_in: int, bytes_out: int, outcome: str, peer: str) -> None: ...

    def retention_days(self, tenant: str, bucket: str) -> int: ...

    async def set_retention_days(self, tenant: str, bucket: str, days: int) -> None: ...

    def held(self, tenant: str, bucket: str, key: str) -> bool: ...

    async def set_hold(self, tenant: str, bucket: str, key: str, held: bool, by: str) -> None: ...


def authenticate_request(req: HttpRequest, lookup: CredentialLookup, region: str) -> Access:
    """Who sent *req* (Signature V4 in its headers or its query string: a presigned URL),
    verified with the secret of its access key; and its body's decoder (aws-chunked framing,
    chunk signatures, the signed SHA-256, Content-MD5, x-amz-checksum-*), whose ``finish``
    must succeed before anything is committed. S3AuthError becomes the S3 error it names."""
    try:
        auth = authenticate(req.method, req.target, req.headers, lookup,
                            now=datetime.now(UTC), region=region)
        decoder = body_decoder(auth, req.headers)
    except S3AuthError as exc:
        raise S3Error(exc.code, exc.status, exc.message) from None
    credential = auth.credential
    return Access(Principal(credential.access_key_id, credential.tenant, credential.role),
                  decoder)


# -- helpers -----------------------------------------------------------------------------------
def _after_versions_of(key: str) -> str:
    """A versions-listing cursor past every version of *key* (``key NUL version id``, the
    greatest version id there can be)."""
    return f"{key}\x00{(1 << 64) - 1:016x}.{_LAST}"


def _http_date(ms: int) -> str:
    return formatdate(ms / 1000, usegmt=True)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _iso_ms(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("MalformedXML", 400, f"not an ISO 8601 date: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _modified_ms(hlc: int) -> int:
    return HybridClock.wall_ms(hlc)


def _etag_of(metadata: Mapping[str, str], content_hash: bytes | str) -> str:
    tag = metadata.get(_ETAG)
    if tag:
        return f'"{tag}"'
    raw = content_hash.hex() if isinstance(content_hash, bytes) else content_hash
    return f'"{raw[:32]}"'  # written by a native client: no MD5 known, a stable tag instead


def _object_headers(version: Version) -> list[tuple[str, str]]:
    meta = version.metadata
    headers = [("ETag", _etag_of(meta, version.content_hash)),
               ("Last-Modified", _http_date(_modified_ms(version.hlc))),
               ("x-amz-version-id", version.version_id),
               ("Accept-Ranges", "bytes")]
    headers.append(("Content-Type", meta.get("content-type", "binary/octet-stream")))
    for name in _KEEP_HEADERS[1:]:
        if name in meta:
            headers.append((name, meta[name]))
    for name, value in meta.items():
        if name.startswith("x-amz-meta-"):
            headers.append((name, value))
    if meta.get("s3.parts"):
        headers.append(("x-amz-mp-parts-count", meta["s3.parts"]))
    return headers


def _metadata_from(req: HttpRequest) -> dict[str, str]:
    meta: dict[str, str] = {}
    user = 0
    for name, value in req.headers:
        if name.startswith("x-amz-meta-"):
            meta[name] = f"{meta[name]},{value}" if name in meta else value
            user += len(name) - len("x-amz-meta-") + len(value)
        elif name in _KEEP_HEADERS:
            meta[name] = value
    if user > _MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", 400, f"user metadata is {user} bytes, at most "
                                               f"{_MAX_USER_METADATA}")
    return meta


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", 400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise S3Error("InvalidArgument", 400, f"{name} must be between {low} and {high}")
    return value


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[lo, hi)`` of a ``Range: bytes=...`` header; None to ignore it (S3 ignores what it
    does not understand); InvalidRange (416) when unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[6:].strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise S3Error("InvalidRange", 416, "the range is not satisfiable")
            return max(0, size - n), size
        lo = int(first)
        hi = size if last == "" else min(int(last) + 1, size)
    except ValueError:
        return None
    if lo >= size or hi <= lo:
        raise S3Error("InvalidRange", 416, "the range is not satisfiable")
    return lo, hi


def _http_time(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _etag_matches(header: str, etag: str) -> bool:
    wanted = [t.strip() for t in header.split(",")]
    return "*" in wanted or etag in wanted or etag.strip('"') in wanted


class _Body:
    """A PutObject/UploadPart body as a source for the object API: the decoder's output (the
    object's bytes), its checks done before the end is reported — so a body whose signature,
    SHA-256, Content-MD5 or checksum fails is never committed — and its MD5 as the ETag."""

    def __init__(self, req: HttpRequest, decoder: BodyDecoder) -> None:
        self.req = req
        self.decoder = decoder
        self.pending: list[bytes] = []
        self.done = False
        self.whole: bytes | None = None

    async def preload(self) -> None:
        """Read (and check) the whole body now: a small one, so that the object API stores it
        in one step (one seal, one replicated write, no tasks)."""
        pieces = []
        while piece := await self.read():
            pieces.append(piece)
        self.whole = b"".join(pieces)

    def ready(self) -> bytes | None:
        return self.whole

    async def read(self) -> bytes:
        while not self.pending:
            if self.done:
                return b""
            raw = await self.req.read()
            try:
                if not raw:
                    self.decoder.finish()
                    self.done = True
                    return b""
                self.pending = [p if isinstance(p, bytes) else bytes(p)
                                for p in self.decoder.feed(raw) if len(p)]
            except S3AuthError as exc:
                raise S3Error(exc.code, exc.status, exc.message) from None
            self.pending.reverse()
        return self.pending.pop()

    async def consumed(self, n: int) -> None:
        return None

    def md5_hex(self) -> str:
        return base64.b64decode(self.decoder.checksums["md5"]).hex()

    def trailer(self) -> dict[str, str]:
        return {_ETAG: self.md5_hex()}


# -- the gateway -------------------------------------------------------------------------------
class Gateway:
    def __init__(self, backend: Backend, uploads: Uploads, *, region: str,
                 lookup: CredentialLookup, max_uploads: int = 8, domain: str = "") -> None:
        self.backend = backend
        self.uploads = uploads
        self.region = region
        self.lookup = lookup
        # Virtual-host-style addressing ("BUCKET.<domain>" in Host) when a domain is set;
        # path-style always works.
        self.domain = domain.strip(".").lower()
        # Bodies being stored at once, node-wide: each holds a few chunks in flight (about
        # 6 MiB), so memory stays bounded whatever the number of clients; the others wait
        # without reading (TCP holds their clients back).
        self.storing = trio.Semaphore(max_uploads)

    async def handle(self, req: HttpRequest) -> None:
        # From a buffer of kernel randomness: a getrandom per request is a point where the
        # trio thread gives up the GIL (and may wait behind the node's other threads for it).
        req.request_id = random_bytes(8).hex().upper()
        path, _, raw_query = req.target.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        bucket, _, key = unquote(path.lstrip("/")).partition("/")
        hosted = self._hosted_bucket(req.header("host"))
        if hosted:  # virtual-host style: the whole path is the key
            bucket, key = hosted, unquote(path.lstrip("/"))
        principal: Principal | None = None
        op = "S3"
        outcome = "ok"
        version = ""
        try:
            await self.backend.audit_ready()
            self.backend.check_serving()
            access = authenticate_request(req, self.lookup, self.region)
            principal = access.principal
            op, call = self._route(req.method, bucket, key, query, req)
            with self.backend.in_flight():  # a graceful stop waits for it
                if op in _STORING:
                    async with self.storing:
                        version = await call(req, access, bucket, key, query) or ""
                else:
                    version = await call(req, access, bucket, key, query) or ""
        except S3Error as failure:
            outcome = failure.s3_code
            await self._error(req, failure, path)
        except HdsdError as exc:
            mapped = error_for(exc)
            if isinstance(exc, NotFound) and not key:
                mapped = S3Error("NoSuchBucket", 404, exc.message)
            outcome = exc.code
            await self._error(req, mapped, path)
        except (trio.Cancelled, KeyboardInterrupt):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "internal"
            # (no bucket name: it may identify a patient, and logs go to the journal in clear)
            log.exception("event=s3_request_failed op=%s", op)
            await self._error(req, S3Error("InternalError", 500, "internal error on the node; "
                                           "see its log"), path)
        finally:
            self.backend.audit(principal, op, bucket, key, version, req.bytes_in, req.bytes_out,
                               outcome, req.peer)

    def _hosted_bucket(self, host: str) -> str:
        """The bucket a ``Host`` of the form ``BUCKET.<domain>[:port]`` names ("" if none).
        The signature covers the Host header, so the bucket is as signed."""
        if not self.domain or not host:
            return ""
        name = host.lower()
        if name.startswith("["):
            return ""  # an IPv6 literal: path-style
        name = name.rsplit(":", 1)[0] if ":" in name else name
        suffix = "." + self.domain
        return name[:-len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else ""

    async def _error(self, req: HttpRequest, err: S3Error, resource: str) -> None:
        if req.responded:
            # Headers are out: the only way left to say "broken" is to cut the connection.
            raise ConnectionLost(f"{err.s3_code} after the response started: {err.message}")
        headers = [("Content-Type", "application/xml")]
        body = error_body(err, resource, req.request_id)
        if req.method == "HEAD":
            headers.append(("Content-Length", "0"))
            body = b""
        await req.respond(err.status, headers, body)

    # -- routing -----------------------------------------------------------------------------
    def _route(self, method: str, bucket: str, key: str, query: dict[str, str],
               req: HttpRequest) -> tuple[str, Callable[..., Awaitable[str | None]]]:
        if not bucket:
            if method == "GET":
                return "ListBuckets", self.list_buckets
            raise S3Error("MethodNotAllowed", 405, f"{method} / is not an S3 operation")
        unsupported = {"acl", "policy", "lifecycle", "cors", "tagging", "encryption",
                       "website", "replication", "logging", "notification", "accelerate",
                       "requestPayment", "ownershipControls", "publicAccessBlock",
                       "analytics", "metrics", "inventory", "intelligent-tiering", "torrent",
                       "restore", "select", "attributes"}
        sub = sorted(set(query) & unsupported)
        if not key:
            if method == "GET" and "location" in query:
                return "GetBucketLocation", self.get_bucket_location
            if method == "GET" and "versioning" in query:
                return "GetBucketVersioning", self.get_bucket_versioning
            if method == "PUT" and "versioning" in query:
                return "PutBucketVersioning", self.put_bucket_versioning
            if method == "GET" and "uploads" in query:
                return "ListMultipartUploads", self.list_uploads
            if method == "GET" and "versions" in query:
                return "ListObjectVersions", self.list_versions
            if method == "POST" and "delete" in query:
                return "DeleteObjects", self.delete_objects
            if "object-lock" in query and method in ("GET", "PUT"):
                return (f"{method.title()}ObjectLockConfiguration",
                        self.get_lock if method == "GET" else self.put_lock)
            if sub:
                return f"Bucket?{sub[0]}", self._not_implemented
            if method == "GET":
                if query.get("list-type") == "2":
                    return "ListObjectsV2", self.list_objects_v2
                return "ListObjects", self.list_objects_v1
            if method == "HEAD":
                return "HeadBucket", self.head_bucket
            if method == "PUT":
                return "CreateBucket", self.create_bucket
            if method == "DELETE":
                return "DeleteBucket", self.delete_bucket
            raise S3Error("MethodNotAllowed", 405, f"{method} is not allowed on a bucket")
        if sub:
            return f"Object?{sub[0]}", self._not_implemented
        for name, (get, put) in (("retention", (self.get_retention, self.put_retention)),
                                 ("legal-hold", (self.get_legal_hold, self.put_legal_hold))):
            if name in query and method in ("GET", "PUT"):
                op = "ObjectRetention" if name == "retention" else "ObjectLegalHold"
                return f"{method.title()}{op}", get if method == "GET" else put
        if method == "PUT":
            if "uploadId" in query:
                if req.has_header("x-amz-copy-source"):
                    return "UploadPartCopy", self.upload_part_copy
                return "UploadPart", self.upload_part
            if req.has_header("x-amz-copy-source"):
                return "CopyObject", self.copy_object
            return "PutObject", self.put_object
        if method in ("GET", "HEAD"):
            if "uploadId" in query and method == "GET":
                return "ListParts", self.list_parts
            return ("GetObject" if method == "GET" else "HeadObject"), self.get_object
        if method == "DELETE":
            if "uploadId" in query:
                return "AbortMultipartUpload", self.abort_upload
            return "DeleteObject", self.delete_object
        if method == "POST":
            if "uploads" in query:
                return "CreateMultipartUpload", self.create_upload
            if "uploadId" in query:
                return "CompleteMultipartUpload", self.complete_upload
        raise S3Error("MethodNotAllowed", 405, f"{method} is not allowed on an object")

    async def _not_implemented(self, req: HttpRequest, access: Access, bucket: str, key: str,
                               query: dict[str, str]) -> None:
        raise S3Error("NotImplemented", 501, "this S3 operation is not implemented by hdsd "
                                             "(see docs/s3.md for what is)")

    async def _xml(self, req: HttpRequest, status: int, body: bytes) -> None:
        await req.respond(status, [("Content-Type", "application/xml")], body)

    async def _read_small(self, req: HttpRequest, access: Access) -> bytes:
        body = _Body(req, access.decoder)
        out = bytearray()
        while piece := await body.read():
            out += piece
            if len(out) > _MAX_XML:
                raise S3Error("MaxMessageLengthExceeded", 400, "request body too large")
        return bytes(out)

    def _auth(self, access: Access, op: str) -> str:
        self.backend.authorize(access.principal.role, op)
        return access.principal.tenant

    # -- service and buckets -----------------------------------------------------------------
    async def list_buckets(self, req: HttpRequest, access: Access, bucket: str, key: str,
                           query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        names = await self.backend.buckets(tenant)
        epoch = _iso(0)
        await self._xml(req, 200, xml_doc("ListAllMyBucketsResult", [
            ("Owner", [("ID", tenant), ("DisplayName", tenant)]),
            ("Buckets", [("Bucket", [("Name", n), ("CreationDate", epoch)]) for n in names])]))

    async def _bucket_must_exist(self, tenant: str, bucket: str) -> None:
        if not await self.backend.bucket_exists(tenant, bucket):
            raise S3Error("NoSuchBucket", 404, f"bucket {bucket} does not exist")

    async def head_bucket(self, req: HttpRequest, access: Access, bucket: str, key: str,
                          query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        await req.respond(200, [("x-amz-bucket-region", self.region), ("Content-Length", "0")])

    async def create_bucket(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        await self._read_small(req, access)  # an optional LocationConstraint: any is ours
        # x-amz-bucket-object-lock-enabled needs nothing more: every hdsd bucket keeps every
        # version and can be given a COMPLIANCE retention (PutObjectLockConfiguration).
        if not await self.backend.create_bucket(tenant, bucket):
            raise S3Error("BucketAlreadyOwnedByYou", 409, f"bucket {bucket} already exists")
        await req.respond(200, [("Location", f"/{bucket}")])

    async def delete_bucket(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> None:
        tenant = self._auth(access, "delete")
        await self._bucket_must_exist(tenant, bucket)
        entries, _ = await self.backend.list(tenant, bucket, "", "", 1, False)
        if entries:
            raise S3Error("BucketNotEmpty", 409, f"bucket {bucket} is not empty")
        # hdsd keeps a bucket's name (and its versions' history); an empty bucket is "deleted"
        # in the only sense a versioned, retained store allows: it lists nothing.
        await req.respond(204, [])

    async def get_bucket_location(self, req: HttpRequest, access: Access, bucket: str, key: str,
                                  query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        element = xml_doc("LocationConstraint", [])
        element = element.replace(b"</LocationConstraint>", b"").replace(
            b" />", f">{self.region}</LocationConstraint>".encode()).replace(
            b"/>", f">{self.region}</LocationConstraint>".encode())
        await self._xml(req, 200, element)

    async def get_bucket_versioning(self, req: HttpRequest, access: Access, bucket: str,
                                    key: str, query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        # hdsd keeps every version of every key: versioning is always on.
        await self._xml(req, 200, xml_doc("VersioningConfiguration", [("Status", "Enabled")]))

    async def put_bucket_versioning(self, req: HttpRequest, access: Access, bucket: str,
                                    key: str, query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        await self._bucket_must_exist(tenant, bucket)
        doc = parse_xml(await self._read_small(req, access))
        status = doc.findtext("Status") or ""
        if status != "Enabled":
            raise S3Error("NotImplemented", 501, "hdsd keeps every version: versioning can only "
                                                 "be Enabled")
        await req.respond(200, [])

    # -- listings ----------------------------------------------------------------------------
    async def _walk(self, tenant: str, bucket: str, prefix: str, delimiter: str, after: str,
                    max_keys: int) -> tuple[list[dict[str, Any]], list[str], bool, str]:
        """Keys after *after* (exclusive) with *prefix*, rolled up at *delimiter*: (contents,
        common prefixes, truncated, the position to continue after)."""
        contents: list[dict[str, Any]] = []
        prefixes: list[str] = []
        position = after
        if max_keys == 0:
            return contents, prefixes, False, position
        while True:
            asked = position
            entries, cursor = await self.backend.list(tenant, bucket, prefix, asked, 1000,
                                                      False)
            for entry in entries:
                name = entry["key"]
                if name <= position:
                    continue
                if delimiter:
                    cut = name.find(delimiter, len(prefix))
                    if cut >= 0:
                        common = name[:cut + len(delimiter)]
                        if len(contents) + len(prefixes) >= max_keys:
                            return contents, prefixes, True, position
                        prefixes.append(common)
                        position = common + _LAST
                        break  # ask again after the whole common prefix
                if len(contents) + len(prefixes) >= max_keys:
                    return contents, prefixes, True, position
                contents.append(entry)
                position = name
            else:
                if cursor is None or cursor <= asked:  # the end (or no progress: stop)
                    return contents, prefixes, False, position
                position = max(position, cursor)

    def _contents(self, entries: list[dict[str, Any]], encode: bool) -> list[tuple[str, Any]]:
        out = []
        for e in entries:
            out.append(("Contents", [
                ("Key", quote(e["key"], safe="/") if encode else e["key"]),
                ("LastModified", _iso(_modified_ms(e["hlc"]))),
                ("ETag", _etag_of(e.get("metadata", {}), e["content_hash"])),
                ("Size", e["size"]), ("StorageClass", "STANDARD")]))
        return out

    async def _list_common(self, access: Access, bucket: str, query: dict[str, str]
                           ) -> tuple[str, str, str, int, bool]:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        encoding = query.get("encoding-type", "")
        if encoding not in ("", "url"):
            raise S3Error("InvalidArgument", 400, "encoding-type must be url")
        return (tenant, query.get("prefix", ""), query.get("delimiter", ""),
                _int_param(query, "max-keys", 1000, 0, 2**31 - 1), encoding == "url")

    async def list_objects_v1(self, req: HttpRequest, access: Access, bucket: str, key: str,
                              query: dict[str, str]) -> None:
        tenant, prefix, delimiter, max_keys, encode = await self._list_common(access, bucket,
                                                                               query)
        marker = query.get("marker", "")
        after = marker + _LAST if delimiter and marker.endswith(delimiter) else marker
        contents, prefixes, truncated, position = await self._walk(
            tenant, bucket, prefix, delimiter, after, min(max_keys, 1000))
        enc = (lambda s: quote(s, safe="/")) if encode else (lambda s: s)
        items: list[tuple[str, Any]] = [
            ("Name", bucket), ("Prefix", enc(prefix)), ("Marker", enc(marker)),
            ("MaxKeys", max_keys), ("IsTruncated", truncated)]
        if delimiter:
            items.append(("Delimiter", enc(delimiter)))
        if truncated and delimiter:
            items.append(("NextMarker", enc(position.removesuffix(_LAST))))
        if encode:
            items.append(("EncodingType", "url"))
        items += self._contents(contents, encode)
        items += [("CommonPrefixes", [("Prefix", enc(p))]) for p in prefixes]
        await self._xml(req, 200, xml_doc("ListBucketResult", items))

    async def list_objects_v2(self, req: HttpRequest, access: Access, bucket: str, key: str,
                              query: dict[str, str]) -> None:
        tenant, prefix, delimiter, max_keys, encode = await self._list_common(access, bucket,
                                                                               query)
        token = query.get("continuation-token")
        start_after = query.get("start-after", "")
        after = start_after
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (binascii.Error, ValueError):
                raise S3Error("InvalidArgument", 400, "the continuation token is not "
                                                      "one of ours") from None
        contents, prefixes, truncated, position = await self._walk(
            tenant, bucket, prefix, delimiter, after, min(max_keys, 1000))
        enc = (lambda s: quote(s, safe="/")) if encode else (lambda s: s)
        items: list[tuple[str, Any]] = [
            ("Name", bucket), ("Prefix", enc(prefix)), ("MaxKeys", max_keys),
            ("KeyCount", len(contents) + len(prefixes)), ("IsTruncated", truncated)]
        if delimiter:
            items.append(("Delimiter", enc(delimiter)))
        if token is not None:
            items.append(("ContinuationToken", token))
        if start_after:
            items.append(("StartAfter", enc(start_after)))
        if truncated:
            items.append(("NextContinuationToken",
                          base64.urlsafe_b64encode(position.encode()).decode()))
        if encode:
            items.append(("EncodingType", "url"))
        items += self._contents(contents, encode)
        items += [("CommonPrefixes", [("Prefix", enc(p))]) for p in prefixes]
        await self._xml(req, 200, xml_doc("ListBucketResult", items))

    async def list_versions(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> None:
        """ListObjectVersions: keys ascending, each key's versions newest first, *max-keys*
        counting versions and delete markers, continued exactly by ``key-marker`` and
        ``version-id-marker`` — also inside a key with more versions than a page."""
        tenant, prefix, _, max_keys, _ = await self._list_common(access, bucket, query)
        key_marker = query.get("key-marker", "")
        vid_marker = query.get("version-id-marker", "")
        if vid_marker and not key_marker:
            raise S3Error("InvalidArgument", 400, "A version-id marker cannot be specified "
                                                  "without a key marker.")
        max_keys = min(max_keys, 1000)
        out: list[tuple[str, dict[str, Any], bool]] = []  # (key, entry, is latest)
        truncated = False

        def emit(name: str, newest_first: list[dict[str, Any]], latest: str) -> bool:
            """Take versions until the page is full; True once it is and one is left."""
            nonlocal truncated
            for e in newest_first:
                if len(out) == max_keys:
                    truncated = True
                    return True
                out.append((name, e, e["version"] == latest))
            return False

        async def whole_key(name: str) -> list[dict[str, Any]]:
            found = await self.backend.versions(tenant, bucket, name)
            return [v.public_info() for v in reversed(found)]

        after = ""
        full = max_keys == 0
        if key_marker:
            after = _after_versions_of(key_marker)
            if vid_marker and vid_marker != "null" and key_marker.startswith(prefix):
                try:
                    below = parse_version_id(vid_marker)
                except ValueError:
                    raise S3Error("InvalidArgument", 400, "Invalid version id marker") from None
                versions = await whole_key(key_marker)
                rest = [e for e in versions if (e["hlc"], e["node"]) < below]
                full = emit(key_marker, rest, versions[0]["version"] if versions else "")
        while not full:
            page, cursor = await self.backend.list(tenant, bucket, prefix, after,
                                                   _VERSIONS_PAGE, True)
            by_key: dict[str, list[dict[str, Any]]] = {}
            for e in page:
                by_key.setdefault(e["key"], []).append(e)
            names = list(by_key)
            for i, name in enumerate(names):
                if cursor is None or i < len(names) - 1:
                    versions = sorted(by_key[name], key=lambda e: (e["hlc"], e["node"]),
                                      reverse=True)
                else:  # the page's last key may go on in the next page: read it whole
                    versions = await whole_key(name)
                    cursor = _after_versions_of(name)
                if emit(name, versions, versions[0]["version"] if versions else ""):
                    full = True
                    break
            if full or cursor is None:
                break
            after = cursor
        items: list[tuple[str, Any]] = [
            ("Name", bucket), ("Prefix", prefix), ("KeyMarker", key_marker),
            ("VersionIdMarker", vid_marker), ("MaxKeys", max_keys), ("IsTruncated", truncated)]
        if truncated and out:
            items += [("NextKeyMarker", out[-1][0]), ("NextVersionIdMarker", out[-1][1]["version"])]
        for name, e, latest in out:
            common: list[tuple[str, Any]] = [
                ("Key", name), ("VersionId", e["version"]), ("IsLatest", latest),
                ("LastModified", _iso(_modified_ms(e["hlc"])))]
            if e["deleted"]:
                items.append(("DeleteMarker", common))
            else:
                items.append(("Version", [
                    *common, ("ETag", _etag_of(e.get("metadata", {}), e["content_hash"])),
                    ("Size", e["size"]), ("StorageClass", "STANDARD")]))
        await self._xml(req, 200, xml_doc("ListVersionsResult", items))

    # -- objects -----------------------------------------------------------------------------
    async def put_object(self, req: HttpRequest, access: Access, bucket: str, key: str,
                         query: dict[str, str]) -> str:
        tenant = self._auth(access, "put")
        size = self._declared_size(req)
        metadata = _metadata_from(req)
        body = _Body(req, access.decoder)
        if size is not None and size <= _SMALL_BODY:
            # A small body is read whole first, so that the object API stores it in one step
            # (one seal, one replicated write, no tasks). boto3 and the AWS CLI send
            # "Expect: 100-continue" on every PutObject, 4 KiB ones too: the refusals that
            # need only memory come before 100 Continue; the rest (legal hold, retention,
            # quota) come after at most _SMALL_BODY bytes were read.
            self.backend.check_put(tenant, bucket, key)
            await body.preload()
        version = await self.backend.put(tenant, bucket, key, body, size=size,
                                         metadata=metadata)
        await req.respond(200, [("ETag", _etag_of(version.metadata, version.content_hash)),
                                ("x-amz-version-id", version.version_id)])
        return version.version_id

    @staticmethod
    def _declared_size(req: HttpRequest) -> int | None:
        raw = req.header("x-amz-decoded-content-length") or req.header("content-length")
        if not raw:
            return None
        try:
            size = int(raw)
        except ValueError:
            raise S3Error("InvalidArgument", 400, "the content length is not a number") from None
        if size > 5 << 40:
            raise S3Error("EntityTooLarge", 400, "an object is at most 5 TiB")
        return size

    async def get_object(self, req: HttpRequest, access: Access, bucket: str, key: str,
                         query: dict[str, str]) -> str:
        tenant = self._auth(access, "get")
        version = await self.backend.resolve(tenant, bucket, key, query.get("versionId"))
        headers = _object_headers(version)
        etag = headers[0][1]
        modified = _modified_ms(version.hlc) / 1000
        # Conditions, in the order RFC 9110 §13.2.2 gives.
        if req.has_header("if-match") and not _etag_matches(req.header("if-match"), etag):
            raise S3Error("PreconditionFailed", 412, "If-Match did not match")
        if not req.has_header("if-match") and req.has_header("if-unmodified-since"):
            since = _http_time(req.header("if-unmodified-since"))
            if since is not None and int(modified) > since:
                raise S3Error("PreconditionFailed", 412, "modified since If-Unmodified-Since")
        if req.has_header("if-none-match"):
            if _etag_matches(req.header("if-none-match"), etag):
                await req.respond(304, headers[:3])
                return version.version_id
        elif req.has_header("if-modified-since"):
            since = _http_time(req.header("if-modified-since"))
            if since is not None and int(modified) <= since:
                await req.respond(304, headers[:3])
                return version.version_id
        lo, hi = 0, version.size
        status = 200
        wanted = _parse_range(req.header("range"), version.size) if req.has_header("range") \
            else None
        if wanted is not None:
            lo, hi = wanted
            status = 206
            headers.append(("Content-Range", f"bytes {lo}-{hi - 1}/{version.size}"))
        headers.append(("Content-Length", str(hi - lo)))
        await req.start(status, headers)
        if req.method == "GET" and hi > lo:
            async def sink(piece: memoryview) -> bool:
                await req.write(piece)
                return True
            await self.backend.stream(tenant, version, lo, hi, sink)
        await req.finish()
        return version.version_id

    async def delete_object(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> str | None:
        tenant = self._auth(access, "delete")
        if "versionId" in query:
            purged = await self._purge(tenant, bucket, key, query["versionId"])
            if purged is None:
                await req.respond(204, [])  # S3: deleting a version that is not there succeeds
                return None
            headers = [("x-amz-version-id", purged.version_id)]
            if purged.tombstone:
                headers.insert(0, ("x-amz-delete-marker", "true"))
            await req.respond(204, headers)
            return purged.version_id
        try:
            marker = await self.backend.delete(tenant, bucket, key)
        except NotFound:
            await req.respond(204, [])  # S3: deleting what is not there succeeds
            return None
        await req.respond(204, [("x-amz-delete-marker", "true"),
                                ("x-amz-version-id", marker.version_id)])
        return marker.version_id

    async def delete_objects(self, req: HttpRequest, access: Access, bucket: str, key: str,
                             query: dict[str, str]) -> None:
        tenant = self._auth(access, "delete")
        if not req.has_header("content-md5") and not any(
                k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm"
                for k, _ in req.headers):
            raise S3Error("InvalidRequest", 400, "DeleteObjects needs Content-MD5 or an "
                                                 "x-amz-checksum-* header")
        doc = parse_xml(await self._read_small(req, access))
        quiet = (doc.findtext("Quiet") or "").lower() == "true"
        objects = [(o.findtext("Key") or "", o.findtext("VersionId"))
                   for o in doc.findall("Object")]
        if len(objects) > 1000:
            raise S3Error("MalformedXML", 400, "at most 1000 keys per DeleteObjects")
        results: list[tuple[str, Any]] = []
        for name, version_id in objects:
            outcome, audited = "ok", ""
            try:
                if version_id is not None:
                    purged = await self._purge(tenant, bucket, name, version_id)
                    audited = version_id
                    entry: list[tuple[str, Any]] = [("Key", name), ("VersionId", version_id)]
                    if purged is not None and purged.tombstone:
                        entry += [("DeleteMarker", True),
                                  ("DeleteMarkerVersionId", purged.version_id)]
                    if not quiet:
                        results.append(("Deleted", entry))
                else:
                    marker = await self.backend.delete(tenant, bucket, name)
                    audited = marker.version_id
                    if not quiet:
                        results.append(("Deleted", [
                            ("Key", name), ("DeleteMarker", True),
                            ("DeleteMarkerVersionId", marker.version_id)]))
            except NotFound:
                if not quiet:
                    results.append(("Deleted", [("Key", name)]))
            except HdsdError as exc:
                err = error_for(exc)
                outcome = err.s3_code
                results.append(("Error", [("Key", name)]
                                + ([("VersionId", version_id)] if version_id is not None else [])
                                + [("Code", err.s3_code), ("Message", err.message)]))
            self.backend.audit(access.principal, "S3:DeleteObjects", bucket, name, audited, 0, 0,
                               outcome, req.peer)
        await self._xml(req, 200, xml_doc("DeleteResult", results))

    async def _purge(self, tenant: str, bucket: str, key: str,
                     version_id: str) -> Version | None:
        """Delete one version for good (refused with AccessDenied under a legal hold or while
        retained, as S3 does under Object Lock); None when there is no such version (S3
        answers success). ``null`` names the version written before versioning was enabled:
        hdsd has none."""
        if version_id == "null":
            return None
        try:
            parse_version_id(version_id)
        except ValueError:
            raise S3Error("InvalidArgument", 400, "Invalid version id specified") from None
        try:
            return await self.backend.purge(tenant, bucket, key, version_id)
        except NotFound:
            return None

    async def copy_object(self, req: HttpRequest, access: Access, bucket: str, key: str,
                          query: dict[str, str]) -> str:
        tenant = self._auth(access, "put")
        self.backend.authorize(access.principal.role, "get")
        await self._read_small(req, access)
        src, _ = await self._copy_source(req, tenant)
        copy_version = "versionId=" in req.header("x-amz-copy-source")
        directive = req.header("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", 400, "x-amz-metadata-directive: COPY or REPLACE")
        if directive == "COPY":
            if (src.bucket, src.key) == (bucket, key) and not copy_version:
                raise S3Error("InvalidRequest", 400, "copying an object onto itself needs "
                                                     "x-amz-metadata-directive: REPLACE")
            metadata = {k: v for k, v in src.metadata.items() if k != _ETAG}
        else:
            metadata = _metadata_from(req)
        trailer = {_ETAG: src.metadata[_ETAG]} if _ETAG in src.metadata else {}
        if "s3.parts" in src.metadata:
            trailer["s3.parts"] = src.metadata["s3.parts"]
        version = await self._put_from(tenant, bucket, key, metadata, trailer, src.size,
                                       lambda sink: self.backend.stream(tenant, src, 0,
                                                                        src.size, sink))
        await self._xml(req, 200, xml_doc("CopyObjectResult", [
            ("LastModified", _iso(_modified_ms(version.hlc))),
            ("ETag", _etag_of(version.metadata, version.content_hash))]))
        return version.version_id

    async def _put_from(self, tenant: str, bucket: str, key: str, metadata: dict[str, str],
                        trailer: dict[str, str], size: int,
                        produce: Callable[[Callable[[memoryview], Awaitable[bool]]],
                                          Awaitable[Any]]) -> Version:
        """Put an object whose body another task produces (bounded: two pieces in flight)."""
        send, receive = trio.open_memory_channel[bytes](2)
        result: list[Version] = []

        async def feed() -> None:
            async with send:
                async def sink(piece: memoryview) -> bool:
                    try:
                        await send.send(bytes(piece))
                    except trio.BrokenResourceError:
                        return False  # the storing side ended (refused): its error answers
                    return True
                await produce(sink)

        async def store() -> None:
            async with receive:
                result.append(await self.backend.put(tenant, bucket, key,
                                                     self.backend.piece_source(receive, trailer),
                                                     size=size,
                                                     metadata=metadata))

        with single_error():  # a typed refusal (retention, quota...) as itself
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(store)
        return result[0]

    # -- multipart ---------------------------------------------------------------------------
    async def create_upload(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        await self._read_small(req, access)
        metadata = _metadata_from(req)
        upload = await self.uploads.create(tenant, bucket, key, metadata)
        await self._xml(req, 200, xml_doc("InitiateMultipartUploadResult", [
            ("Bucket", bucket), ("Key", key), ("UploadId", upload.upload_id)]))

    async def upload_part(self, req: HttpRequest, access: Access, bucket: str, key: str,
                          query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        number = _int_param(query, "partNumber", 0, 1, _MAX_PARTS)
        upload = self.uploads.get(tenant, query["uploadId"], bucket, key)
        declared = self._declared_size(req)
        if declared is not None and declared > 5 << 30:
            raise S3Error("EntityTooLarge", 400, "a part is at most 5 GiB")
        body = _Body(req, access.decoder)
        record = await self.backend.store_part(tenant, bucket, key, body)
        size = int(record["size"])
        if declared is not None and size != declared:
            raise S3Error("IncompleteBody", 400, f"the part has {size} bytes, {declared} were "
                                                 "declared")
        part = await self.uploads.record_part(upload, number, body.md5_hex(), size, record)
        await req.respond(200, [("ETag", f'"{part.md5}"')])

    async def _copy_source(self, req: HttpRequest, tenant: str) -> tuple[Version, str]:
        """The version ``x-amz-copy-source`` names (``bucket/key[?versionId=...]``), checked
        against the ``x-amz-copy-source-if-*`` conditions; and its ETag."""
        source = unquote(req.header("x-amz-copy-source"))
        source_path, _, source_query = source.partition("?")
        src_bucket, _, src_key = source_path.lstrip("/").partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", 400, "x-amz-copy-source must be bucket/key")
        src_version = dict(parse_qsl(source_query)).get("versionId")
        src = await self.backend.resolve(tenant, src_bucket, src_key, src_version)
        etag = _etag_of(src.metadata, src.content_hash)
        if req.has_header("x-amz-copy-source-if-match") and \
                not _etag_matches(req.header("x-amz-copy-source-if-match"), etag):
            raise S3Error("PreconditionFailed", 412, "x-amz-copy-source-if-match did not match")
        if req.has_header("x-amz-copy-source-if-none-match") and \
                _etag_matches(req.header("x-amz-copy-source-if-none-match"), etag):
            raise S3Error("PreconditionFailed", 412, "x-amz-copy-source-if-none-match matched")
        return src, etag

    async def upload_part_copy(self, req: HttpRequest, access: Access, bucket: str, key: str,
                               query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        self.backend.authorize(access.principal.role, "get")
        number = _int_param(query, "partNumber", 0, 1, _MAX_PARTS)
        upload = self.uploads.get(tenant, query["uploadId"], bucket, key)
        await self._read_small(req, access)
        src, _ = await self._copy_source(req, tenant)
        lo, hi = 0, src.size
        if req.has_header("x-amz-copy-source-range"):
            wanted = _parse_range(req.header("x-amz-copy-source-range"), src.size)
            if wanted is None:
                raise S3Error("InvalidArgument", 400, "x-amz-copy-source-range must be "
                                                      "bytes=first-last")
            lo, hi = wanted
        if hi - lo > 5 << 30:
            raise S3Error("EntityTooLarge", 400, "a part is at most 5 GiB")
        send, receive = trio.open_memory_channel[bytes](2)
        md5 = hashlib.md5()

        async def produce() -> None:
            async with send:
                async def sink(piece: memoryview) -> bool:
                    md5.update(piece)
                    try:
                        await send.send(bytes(piece))
                    except trio.BrokenResourceError:
                        return False  # the storing side ended (refused): its error answers
                    return True
                await self.backend.stream(tenant, src, lo, hi, sink)

        records: list[dict[str, Any]] = []

        async def store() -> None:
            async with receive:
                records.append(await self.backend.store_part(
                    tenant, bucket, key, self.backend.piece_source(receive, {})))

        with single_error():  # a typed refusal (retention, quota...) as itself
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(store)
        part = await self.uploads.record_part(upload, number, md5.hexdigest(),
                                              int(records[0]["size"]), records[0])
        await self._xml(req, 200, xml_doc("CopyPartResult", [
            ("LastModified", _iso(int(part.modified * 1000))), ("ETag", f'"{part.md5}"')]))

    async def list_parts(self, req: HttpRequest, access: Access, bucket: str, key: str,
                         query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        upload = self.uploads.get(tenant, query["uploadId"], bucket, key)
        marker = _int_param(query, "part-number-marker", 0, 0, _MAX_PARTS)
        max_parts = _int_param(query, "max-parts", 1000, 0, 1000)
        parts = [p for p in self.uploads.parts(upload) if p.number > marker]
        truncated = len(parts) > max_parts
        parts = parts[:max_parts]
        items: list[tuple[str, Any]] = [
            ("Bucket", bucket), ("Key", key), ("UploadId", upload.upload_id),
            ("PartNumberMarker", marker), ("MaxParts", max_parts), ("IsTruncated", truncated),
            ("StorageClass", "STANDARD")]
        if parts:
            items.append(("NextPartNumberMarker", parts[-1].number))
        items += [("Part", [("PartNumber", p.number),
                            ("LastModified", _iso(int(p.modified * 1000))),
                            ("ETag", f'"{p.md5}"'), ("Size", p.size)]) for p in parts]
        await self._xml(req, 200, xml_doc("ListPartsResult", items))

    async def list_uploads(self, req: HttpRequest, access: Access, bucket: str, key: str,
                           query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        prefix = query.get("prefix", "")
        uploads = [u for u in self.uploads.list(tenant, bucket) if u.key.startswith(prefix)]
        max_uploads = _int_param(query, "max-uploads", 1000, 0, 1000)
        truncated = len(uploads) > max_uploads
        uploads = uploads[:max_uploads]
        items: list[tuple[str, Any]] = [
            ("Bucket", bucket), ("KeyMarker", query.get("key-marker", "")),
            ("UploadIdMarker", query.get("upload-id-marker", "")), ("Prefix", prefix),
            ("MaxUploads", max_uploads), ("IsTruncated", truncated)]
        if truncated and uploads:
            items += [("NextKeyMarker", uploads[-1].key),
                      ("NextUploadIdMarker", uploads[-1].upload_id)]
        items += [("Upload", [("Key", u.key), ("UploadId", u.upload_id),
                              ("Initiated", _iso(int(u.created * 1000))),
                              ("StorageClass", "STANDARD")]) for u in uploads]
        await self._xml(req, 200, xml_doc("ListMultipartUploadsResult", items))

    async def abort_upload(self, req: HttpRequest, access: Access, bucket: str, key: str,
                           query: dict[str, str]) -> None:
        tenant = self._auth(access, "put")
        upload = self.uploads.get(tenant, query["uploadId"], bucket, key)
        await self.uploads.remove(upload)
        await req.respond(204, [])

    async def complete_upload(self, req: HttpRequest, access: Access, bucket: str, key: str,
                              query: dict[str, str]) -> str:
        tenant = self._auth(access, "put")
        upload = self.uploads.get(tenant, query["uploadId"], bucket, key)
        doc = parse_xml(await self._read_small(req, access))
        wanted: list[tuple[int, str]] = []
        for element in doc.findall("Part"):
            try:
                number = int(element.findtext("PartNumber") or "")
            except ValueError:
                raise S3Error("MalformedXML", 400, "PartNumber must be an integer") from None
            wanted.append((number, (element.findtext("ETag") or "").strip().strip('"')))
        if not wanted:
            raise S3Error("MalformedXML", 400, "CompleteMultipartUpload names no part")
        if [n for n, _ in wanted] != sorted({n for n, _ in wanted}):
            raise S3Error("InvalidPartOrder", 400, "parts must be listed in ascending order")
        have = {p.number: p for p in self.uploads.parts(upload)}
        chosen: list[Part] = []
        for i, (number, etag) in enumerate(wanted):
            part = have.get(number)
            if part is None or part.md5 != etag.lower():
                raise S3Error("InvalidPart", 400, f"part {number} was not uploaded with ETag "
                                                  f"{etag}")
            if i < len(wanted) - 1 and part.size < _MIN_PART:
                raise S3Error("EntityTooSmall", 400, f"part {number} is {part.size} bytes; "
                                                     "every part but the last is at least 5 MiB")
            chosen.append(part)
        etag = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in chosen)).hexdigest()
        trailer = {_ETAG: f"{etag}-{len(chosen)}", "s3.parts": str(len(chosen))}
        # The parts' chunks are stored already: one version naming them, once the write
        # policy holds for it (the node reads them back for the content hash, or re-puts them
        # when they are not uniform chunks).
        version = await self.backend.compose(tenant, bucket, key, [p.record for p in chosen],
                                             {**upload.metadata, **trailer})
        await self.uploads.remove(upload)
        await self._xml(req, 200, xml_doc("CompleteMultipartUploadResult", [
            ("Location", f"/{bucket}/{quote(key)}"), ("Bucket", bucket), ("Key", key),
            ("ETag", f'"{trailer[_ETAG]}"')]))
        return version.version_id

    def upload_of(self, tenant: str, upload_id: str) -> Upload:
        return self.uploads.get(tenant, upload_id)

    # -- object lock: retention and legal holds ------------------------------------------------
    # hdsd's retention is the bucket's (days from each version's creation, COMPLIANCE: no role
    # may shorten it or delete/overwrite within it); its legal holds are per key. S3's Object
    # Lock maps onto them: the bucket's default COMPLIANCE retention *is* the bucket retention,
    # an object's retention is what the bucket's guarantees for that version, and a legal hold
    # is the key's hold.
    async def get_lock(self, req: HttpRequest, access: Access, bucket: str, key: str,
                       query: dict[str, str]) -> None:
        tenant = self._auth(access, "list")
        await self._bucket_must_exist(tenant, bucket)
        days = self.backend.retention_days(tenant, bucket)
        items: list[tuple[str, Any]] = [("ObjectLockEnabled", "Enabled")]
        if days:
            items.append(("Rule", [("DefaultRetention", [("Mode", "COMPLIANCE"),
                                                         ("Days", days)])]))
        await self._xml(req, 200, xml_doc("ObjectLockConfiguration", items))

    async def put_lock(self, req: HttpRequest, access: Access, bucket: str, key: str,
                       query: dict[str, str]) -> None:
        tenant = self._auth(access, "admin")  # a bucket's retention is an admin's decision
        await self._bucket_must_exist(tenant, bucket)
        doc = parse_xml(await self._read_small(req, access))
        if (doc.findtext("ObjectLockEnabled") or "Enabled") != "Enabled":
            raise S3Error("MalformedXML", 400, "ObjectLockEnabled can only be Enabled")
        rule = doc.find("Rule/DefaultRetention")
        if rule is not None:
            mode = rule.findtext("Mode") or ""
            if mode != "COMPLIANCE":
                raise S3Error("NotImplemented", 501, f"retention mode {mode!r}: hdsd keeps "
                              "COMPLIANCE only (no role may shorten it or bypass it)")
            try:
                days = int(rule.findtext("Days") or 0) or 365 * int(rule.findtext("Years") or 0)
            except ValueError:
                raise S3Error("MalformedXML", 400, "Days/Years must be integers") from None
            if days <= 0:
                raise S3Error("InvalidArgument", 400, "a default retention needs Days or Years")
            await self.backend.set_retention_days(tenant, bucket, days)
        await req.respond(200, [])

    async def get_retention(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> str:
        tenant = self._auth(access, "stat")
        version, until = await self.backend.retention(tenant, bucket, key,
                                                      query.get("versionId"))
        if not until:
            raise S3Error("NoSuchObjectLockConfiguration", 404, f"{bucket}/{key} has no "
                          "retention")
        await self._xml(req, 200, xml_doc("Retention", [("Mode", "COMPLIANCE"),
                                                        ("RetainUntilDate", _iso(until))]))
        return version.version_id

    async def put_retention(self, req: HttpRequest, access: Access, bucket: str, key: str,
                            query: dict[str, str]) -> str:
        tenant = self._auth(access, "put")
        doc = parse_xml(await self._read_small(req, access))
        mode = doc.findtext("Mode") or ""
        if mode != "COMPLIANCE":
            raise S3Error("NotImplemented", 501, f"retention mode {mode!r}: hdsd keeps "
                          "COMPLIANCE only (a retention some role may bypass is not one)")
        wanted = _iso_ms(doc.findtext("RetainUntilDate") or "")
        if wanted <= self.backend.now_ms():
            raise S3Error("InvalidArgument", 400, "The retain until date must be in the future")
        if wanted > self.backend.now_ms() + _MAX_RETAIN_MS:
            raise S3Error("InvalidArgument", 400, "RetainUntilDate is more than 100 years away")
        # A retain-until within what already holds the version is accepted as is (COMPLIANCE
        # only grows: it is never shortened); a later one is a replicated retention record.
        version, _ = await self.backend.retain(tenant, bucket, key, query.get("versionId"),
                                               wanted)
        await req.respond(200, [])
        return version.version_id

    async def get_legal_hold(self, req: HttpRequest, access: Access, bucket: str, key: str,
                             query: dict[str, str]) -> str:
        tenant = self._auth(access, "stat")
        version = await self.backend.resolve(tenant, bucket, key, query.get("versionId"))
        status = "ON" if self.backend.held(tenant, bucket, key) else "OFF"
        await self._xml(req, 200, xml_doc("LegalHold", [("Status", status)]))
        return version.version_id

    async def put_legal_hold(self, req: HttpRequest, access: Access, bucket: str, key: str,
                             query: dict[str, str]) -> str:
        tenant = self._auth(access, "put")
        version = await self.backend.resolve(tenant, bucket, key, query.get("versionId"))
        doc = parse_xml(await self._read_small(req, access))
        status = doc.findtext("Status") or ""
        if status not in ("ON", "OFF"):
            raise S3Error("MalformedXML", 400, "Status must be ON or OFF")
        if status == "OFF":
            self.backend.authorize(access.principal.role, "admin")  # lifting one: an admin's
        await self.backend.set_hold(tenant, bucket, key, status == "ON",
                                    f"s3:{access.principal.name}")
        await req.respond(200, [])
        return version.version_id
