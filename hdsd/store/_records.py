"""Record bodies: what each kind of log record carries, and their msgpack encoding."""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from .._errors import IntegrityError, InvalidRequest
from .._packing import PackError, packb, unpackb
from . import _format as F
from ._sealed import (
    ReplicatedVersion,
    SealedVersion,
    Sealing,
    TenantSeal,
    parse_sealed,
    seal_for,
    seal_version,
)
from ._version import Version

__all__ = ["ChunkRecord", "EncodedRecord", "StoredRecord", "chunk_payload_view", "decode_record",
           "encode_record"]

CHUNK_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One sealed chunk (opaque bytes from the pipeline), named by its 32-byte content id."""

    tenant: str
    chunk_id: bytes
    payload: bytes

    def __post_init__(self) -> None:
        if len(self.chunk_id) != CHUNK_ID_BYTES:
            raise ValueError(f"a chunk id is {CHUNK_ID_BYTES} bytes")


StoredRecord = ChunkRecord | SealedVersion  # what the log and the index hold


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready to frame: its kind, msgpack body and the xxh3-64 of the body.

    Encoding happens on the caller's thread, so a record that cannot be encoded is refused
    before it reaches the log writer and cannot fail anyone else's batch.
    """

    kind: int
    body: bytes
    body_digest: int
    record: StoredRecord
    clear: Version | None = None  # the version before sealing (None: chunks, moved records)
    # The body's last bytes, kept apart so a large chunk's payload is written as it came,
    # not copied into the body first (the frame is *body* then *tail*; the digest covers both).
    tail: bytes = b""

    @property
    def size(self) -> int:
        """The record body's length on the log (``body`` and ``tail``)."""
        return len(self.body) + len(self.tail)


def encode_record(record: ChunkRecord | Version | ReplicatedVersion | SealedVersion,
                  sealing: Sealing | None = None, *, seal: TenantSeal | None = None,
                  name_id: bytes | None = None) -> EncodedRecord:
    """Encode *record* (a clear :class:`Version` is sealed with *sealing*, or with *seal*, its
    tenant's seal, if the caller has it already — one of them is required then — and
    *name_id*, its name id, if computed already; a :class:`ReplicatedVersion` keeps the record
    its coordinator sealed when it belongs to its version here, see ``_sealed``);
    :class:`InvalidRequest` if it cannot be stored (e.g. a lone surrogate),
    :class:`PermissionDenied` if its tenant has no key here."""
    clear: Version | None = None
    stored: StoredRecord
    sent = None
    if isinstance(record, ReplicatedVersion):
        sent = record.wire
        record = record.version
    try:
        if isinstance(record, ChunkRecord):
            kind = F.KIND_CHUNK
            stored = record
            if len(record.payload) >= _TAIL_BYTES:
                record.tenant.encode("utf-8")
                return _chunk_with_tail(record)
            body = packb({"t": record.tenant, "c": record.chunk_id, "p": record.payload})
        elif isinstance(record, Version):
            kind = F.KIND_VERSION
            # Names are compared and sorted as UTF-8: refuse what cannot round-trip.
            for text in (record.tenant, record.bucket, record.key, record.node,
                         *record.metadata, *record.metadata.values()):
                text.encode("utf-8")
            if seal is None:
                if sealing is None:
                    raise TypeError("a clear version needs the store's sealing")
                seal = seal_for(sealing, record.tenant)
            stored = seal_version(record, seal, name_id, sent)
            body, clear = stored.body, record
        elif isinstance(record, SealedVersion):
            kind, body, stored = F.KIND_VERSION, record.body, record
        else:
            raise TypeError(f"not a store record: {type(record).__name__}")
        record.tenant.encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise InvalidRequest(f"record cannot be stored: {exc}") from None
    if len(body) > F.MAX_BODY_BYTES:
        raise InvalidRequest(f"record of {len(body)} bytes exceeds {F.MAX_BODY_BYTES}")
    return EncodedRecord(kind, body, F.digest(body), stored, clear)


_TAIL_BYTES = 64 << 10


def _chunk_with_tail(record: ChunkRecord) -> EncodedRecord:
    """The chunk record ``{t, c, p}`` as msgpack writes it, the payload as the tail."""
    n = len(record.payload)
    if n > F.MAX_BODY_BYTES:
        raise InvalidRequest(f"record of {n} bytes exceeds {F.MAX_BODY_BYTES}")
    # The map's header and entries in packb's order; the payload's bin header last.
    bin_head = (b"\xc5" + n.to_bytes(2, "big") if n < 0x10000
                else b"\xc6" + n.to_bytes(4, "big"))
    head = _chunk_fields(record.tenant, record.chunk_id) + bin_head
    if len(head) + n > F.MAX_BODY_BYTES:
        raise InvalidRequest(f"record of {len(head) + n} bytes exceeds {F.MAX_BODY_BYTES}")
    digest = xxhash.xxh3_64(head)
    digest.update(record.payload)
    return EncodedRecord(F.KIND_CHUNK, head, digest.intdigest(), record, None, record.payload)


_BIN_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _chunk_fields(tenant: str, chunk_id: bytes) -> bytes:
    """A chunk record's body up to its payload's bin header: the map ``{t, c, p}`` as packb
    writes it (the order :func:`_chunk_with_tail` writes and :func:`chunk_payload_view`
    expects)."""
    return b"".join((b"\x83", packb("t"), packb(tenant), packb("c"), packb(chunk_id),
                     packb("p")))


def chunk_payload_view(body: memoryview, tenant: str, chunk_id: bytes) -> memoryview | None:
    """The payload of the chunk record *body* as a view of it (not copied out: ``unpackb``
    copies a megabyte per chunk read), when *body* is chunk *chunk_id* of *tenant* encoded as
    hdsd writes it (the map's fields in packb's order, any bin header); None for anything
    else: another
    chunk, another tenant, another encoding, a malformed body (:func:`decode_record` then
    decodes it, checks it and words the refusal). *body* must be a checked frame's."""
    fields = _chunk_fields(tenant, chunk_id)
    at = len(fields)
    if len(body) <= at or body[:at] != fields:
        return None
    width = _BIN_WIDTH.get(body[at])  # bin 8, 16 or 32: the length's bytes
    if width is None:
        return None
    start = at + 1 + width
    if start > len(body) or int.from_bytes(body[at + 1:start], "big") != len(body) - start:
        return None
    return body[start:]


def decode_record(kind: int, body: bytes | memoryview) -> StoredRecord:
    """The record a verified frame carries (a version stays sealed: opening it needs the
    tenant's key); :class:`IntegrityError` if the body is malformed."""
    if kind == F.KIND_VERSION:
        return parse_sealed(body)
    try:
        wire = unpackb(body)
    except PackError as exc:
        raise IntegrityError(f"malformed record body: {exc}") from None
    if kind == F.KIND_CHUNK:
        try:
            tenant, chunk_id, payload = wire["t"], wire["c"], wire["p"]
            if not (isinstance(tenant, str) and isinstance(chunk_id, bytes)
                    and isinstance(payload, bytes)):
                raise TypeError("wrong field types")
            return ChunkRecord(tenant, chunk_id, payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed chunk record: {exc}") from None
    raise IntegrityError(f"record kind {kind} is not readable by this version of hdsd")
