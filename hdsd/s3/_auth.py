"""The gateway's authentication entry point: who signed this request, and what its body must
satisfy.

:func:`authenticate` verifies the request's Signature V4 (header or presigned query) with the
secret of its access key, looked up through a :class:`CredentialLookup` (the node's catalog of
S3 access keys), and returns the key's tenant and role with the body's :class:`PayloadMode`.
:func:`body_decoder` then checks the body as it streams: the SHA-256 it was signed with (at the
end of the stream — the gateway commits the version only once :meth:`BodyDecoder.finish`
returns), the aws-chunked framing and chunk signatures, ``x-amz-decoded-content-length``,
``Content-MD5`` and the ``x-amz-checksum-*`` headers or trailers. Sans-IO: the caller owns
sockets, clocks and timeouts (``now`` is given).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ._checksums import Checksum, decode_digest, new_checksum
from ._chunked import ChunkedDecoder
from ._errors import S3AuthError, access_denied, invalid_request
from ._sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    check_time,
    header_map,
    parse_signed_request,
    split_target,
    verify_signature,
)

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "Authenticated",
    "BodyDecoder",
    "CredentialLookup",
    "CredentialRecord",
    "PayloadMode",
    "S3AuthError",
    "S3Credential",
    "authenticate",
    "body_decoder",
]

#: The ``x-amz-checksum-<name>`` algorithms S3 accepts (headers and trailers).
CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512", "xxhash64",
                       "xxhash3", "xxhash128")
_CHECKSUM_PREFIX = "x-amz-checksum-"


@dataclass(frozen=True)
class S3Credential:
    """An S3 access key: its id, its secret (in memory only), the tenant it acts for and its
    role (one of the certificate roles: admin, writer, reader, auditor)."""

    access_key_id: str
    secret: str = field(repr=False)
    tenant: str
    role: str


class CredentialRecord(Protocol):
    """Anything with an access key's four fields (:class:`S3Credential`, or the node's own
    record: the node does not import the gateway, nor the gateway the node's internals)."""

    @property
    def access_key_id(self) -> str: ...

    @property
    def secret(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def role(self) -> str: ...


class CredentialLookup(Protocol):
    """The live (not revoked) access key of this id, or None."""

    def __call__(self, access_key_id: str) -> CredentialRecord | None: ...


@dataclass(frozen=True)
class PayloadMode:
    """What the body must satisfy: ``content_sha256`` is the request's
    ``x-amz-content-sha256`` (a SHA-256 in hex, ``UNSIGNED-PAYLOAD`` or one of the
    ``STREAMING-*`` aws-chunked modes); the rest chains chunk signatures from the request's."""

    content_sha256: str
    amz_date: str
    scope: str
    signing_key: bytes = field(repr=False)
    seed_signature: str = field(repr=False)

    @property
    def streaming(self) -> bool:
        return self.content_sha256 in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER,
                                       STREAMING_UNSIGNED_TRAILER)

    @property
    def expected_sha256(self) -> str | None:
        """The body's SHA-256 (hex) the signature covers, if it covers one."""
        if self.streaming or self.content_sha256 == UNSIGNED_PAYLOAD:
            return None
        return self.content_sha256.lower()


@dataclass
class Authenticated:
    credential: S3Credential
    payload: PayloadMode


def authenticate(method: str, raw_target: str, headers: list[tuple[str, str]],
                 lookup: CredentialLookup, *, now: datetime, region: str) -> Authenticated:
    """Verify the request's signature; :class:`S3AuthError` if it is anonymous (``AccessDenied``),
    malformed, for another region, by an unknown or revoked key (``InvalidAccessKeyId``), out
    of its time window (``RequestTimeTooSkewed``, or ``AccessDenied`` for an expired presigned
    URL) or does not match (``SignatureDoesNotMatch``).

    *raw_target* is the request target exactly as sent (``/bucket/key?query``), *headers* as
    received (names in any case)."""
    hmap = header_map(headers)
    raw_path, raw_query = split_target(raw_target)
    req = parse_signed_request(raw_query, hmap)
    if req is None:
        raise access_denied("Anonymous access is not allowed: sign the request "
                            "(AWS Signature Version 4)")
    if req.region != region:
        what = "the region" if not req.presigned else "X-Amz-Credential's region"
        code = ("AuthorizationQueryParametersError" if req.presigned
                else "AuthorizationHeaderMalformed")
        raise S3AuthError(code, 400, f"The authorization header is malformed; {what} "
                          f"{req.region!r} is wrong; expecting {region!r}")
    record = lookup(req.access_key_id)
    if record is None:
        raise S3AuthError("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided "
                          "does not exist in our records.")
    check_time(req, now)
    key = verify_signature(req, method.upper(), raw_path, raw_query, hmap, record.secret)
    credential = S3Credential(access_key_id=record.access_key_id, secret=record.secret,
                              tenant=record.tenant, role=record.role)
    return Authenticated(credential=credential, payload=PayloadMode(
        content_sha256=req.content_sha256, amz_date=req.amz_date, scope=req.scope,
        signing_key=key, seed_signature=req.signature))


# -- the body -----------------------------------------------------------------------------------
def _single(hmap: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = hmap.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_request(f"header {name} given more than once")
    return values[0].strip()


def _declared_checksums(hmap: Mapping[str, Sequence[str]]) -> dict[str, bytes]:
    """Algorithm → digest of the ``x-amz-checksum-*`` headers (S3 allows one)."""
    out: dict[str, bytes] = {}
    for name in hmap:
        if not name.startswith(_CHECKSUM_PREFIX):
            continue
        alg = name[len(_CHECKSUM_PREFIX):]
        if alg in ("type", "algorithm", "mode"):
            continue  # x-amz-checksum-type: FULL_OBJECT/COMPOSITE (multipart), not a value
        if alg not in CHECKSUM_ALGORITHMS:
            raise invalid_request(f"unknown checksum header {name}")
        value = _single(hmap, name) or ""
        digest = decode_digest(alg, value)
        if digest is None:
            raise invalid_request(f"Value for {name} header is invalid.")
        out[alg] = digest
    if len(out) > 1:
        raise invalid_request("Expecting a single x-amz-checksum- header. Multiple checksum "
                              "Types are not allowed.")
    return out


def _trailer_names(hmap: Mapping[str, Sequence[str]], mode: str) -> frozenset[str]:
    raw = ",".join(hmap.get("x-amz-trailer", []))
    names = frozenset(n.strip().lower() for n in raw.split(",") if n.strip())
    if names and mode not in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
        raise invalid_request("x-amz-trailer needs a STREAMING-*-TRAILER x-amz-content-sha256")
    for name in names:
        if not name.startswith(_CHECKSUM_PREFIX) or \
                name[len(_CHECKSUM_PREFIX):] not in CHECKSUM_ALGORITHMS:
            raise invalid_request(f"unsupported trailer {name}: only x-amz-checksum-* trailers")
    if len(names) > 1:
        raise invalid_request("Expecting a single x-amz-checksum- trailer.")
    return names


class BodyDecoder:
    """Decodes and checks one request body: :meth:`feed` each piece as received, then
    :meth:`finish`; ``checksums`` (algorithm → base64 digest, ``md5`` always) and ``size``
    are complete once :meth:`finish` returned."""

    def __init__(self, payload: PayloadMode, hmap: Mapping[str, Sequence[str]],
                 compute: Iterable[str]) -> None:
        mode = payload.content_sha256
        self._expected_sha256 = payload.expected_sha256
        self._declared = _declared_checksums(hmap)
        self._md5: bytes | None = None
        md5 = _single(hmap, "content-md5")
        if md5 is not None:
            self._md5 = decode_digest("md5", md5)
            if self._md5 is None:
                raise S3AuthError("InvalidDigest", 400, "The Content-MD5 you specified was "
                                  "invalid.")
        self._chunked: ChunkedDecoder | None = None
        trailer_names = _trailer_names(hmap, mode)
        self._trailer_algs = [n[len(_CHECKSUM_PREFIX):] for n in sorted(trailer_names)]
        if payload.streaming:
            decoded = _single(hmap, "x-amz-decoded-content-length")
            if decoded is None:
                raise S3AuthError("MissingContentLength", 411, "You must provide the "
                                  "x-amz-decoded-content-length HTTP header.")
            if not decoded.isdigit() or len(decoded) > 19:
                raise invalid_request("x-amz-decoded-content-length is not a number")
            self._chunked = ChunkedDecoder(
                mode, decoded_length=int(decoded), trailer_names=trailer_names,
                signing_key=payload.signing_key, amz_date=payload.amz_date, scope=payload.scope,
                seed_signature=payload.seed_signature)
        names = {"md5", *compute, *self._declared, *self._trailer_algs}
        if self._expected_sha256 is not None:
            names.add("sha256")
        self._sums: list[Checksum] = [new_checksum(n) for n in sorted(names)]
        self.size = 0
        self.checksums: dict[str, str] = {}
        self._finished = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """The payload in *data* (pieces, possibly views of it); raises :class:`S3AuthError`
        on bad framing or a bad chunk signature as soon as it is seen."""
        if self._finished:
            raise invalid_request("body after its end")
        pieces: list[bytes | memoryview]
        if self._chunked is not None:
            pieces = list(self._chunked.feed(data))
        else:
            pieces = [data if not isinstance(data, bytearray) else memoryview(data)]
        for piece in pieces:
            self.size += len(piece)
            for s in self._sums:
                s.update(piece)
        return pieces

    def finish(self) -> None:
        """The body ended: every check that needs the whole of it. :class:`S3AuthError`
        ``IncompleteBody``, ``XAmzContentSHA256Mismatch``, ``BadDigest`` or a signature
        error; the gateway must not commit the version then."""
        self._finished = True
        trailers = self._chunked.finish() if self._chunked is not None else {}
        sums = {s.name: s for s in self._sums}
        if self._expected_sha256 is not None:
            got = sums["sha256"].digest().hex()
            if not hmac.compare_digest(got, self._expected_sha256):
                raise S3AuthError("XAmzContentSHA256Mismatch", 400, "The provided "
                                  "'x-amz-content-sha256' header does not match what was "
                                  "computed.")
        if self._md5 is not None and sums["md5"].digest() != self._md5:
            raise S3AuthError("BadDigest", 400, "The Content-MD5 you specified did not match "
                              "what we received.")
        for alg, digest in self._declared.items():
            if sums[alg].digest() != digest:
                raise S3AuthError("BadDigest", 400, f"The {alg.upper()} you specified did not "
                                  "match the calculated checksum.")
        for alg in self._trailer_algs:
            sent = decode_digest(alg, trailers.get(_CHECKSUM_PREFIX + alg, ""))
            if sent is None:
                raise invalid_request(f"Value for x-amz-checksum-{alg} trailing header is "
                                      "invalid.")
            if sums[alg].digest() != sent:
                raise S3AuthError("BadDigest", 400, f"The {alg.upper()} you specified did not "
                                  "match the calculated checksum.")
        self.checksums = {s.name: s.b64() for s in self._sums}


def body_decoder(auth: Authenticated, headers: list[tuple[str, str]], *,
                 compute: Iterable[str] = ()) -> BodyDecoder:
    """The decoder of this request's body (see :class:`BodyDecoder`); *compute* adds
    checksums to report (``md5`` is always computed: S3's ETag). Header errors
    (``InvalidDigest``, ``MissingContentLength``, a bad checksum header) raise here, before
    any of the body is read."""
    return BodyDecoder(auth.payload, header_map(headers), compute)
