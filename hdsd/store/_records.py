"""Record bodies: what each kind of log record carries, and their msgpack encoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import IntegrityError, InvalidRequest
from .._packing import PackError, packb, unpackb
from . import _format as F
from ._version import Version

__all__ = ["ChunkRecord", "EncodedRecord", "decode_record", "encode_record"]

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


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready to frame: its kind, msgpack body and the xxh3-64 of the body.

    Encoding happens on the caller's thread, so a record that cannot be encoded is refused
    before it reaches the log writer and cannot fail anyone else's batch.
    """

    kind: int
    body: bytes
    body_digest: int
    record: ChunkRecord | Version


def encode_record(record: ChunkRecord | Version) -> EncodedRecord:
    """Encode *record*; :class:`InvalidRequest` if it cannot be stored (e.g. a lone surrogate)."""
    wire: dict[str, Any]
    if isinstance(record, ChunkRecord):
        kind = F.KIND_CHUNK
        wire = {"t": record.tenant, "c": record.chunk_id, "p": record.payload}
    elif isinstance(record, Version):
        kind = F.KIND_VERSION
        wire = record.to_wire()
    else:
        raise TypeError(f"not a store record: {type(record).__name__}")
    try:
        body = packb(wire)
        # The index stores these as SQLite TEXT (UTF-8): refuse what cannot round-trip.
        for text in _texts(record):
            text.encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"record cannot be stored: {exc}") from None
    if len(body) > F.MAX_BODY_BYTES:
        raise InvalidRequest(f"record of {len(body)} bytes exceeds {F.MAX_BODY_BYTES}")
    return EncodedRecord(kind, body, F.digest(body), record)


def _texts(record: ChunkRecord | Version) -> tuple[str, ...]:
    if isinstance(record, ChunkRecord):
        return (record.tenant,)
    return (record.tenant, record.bucket, record.key, record.node)


def decode_record(kind: int, body: bytes | memoryview) -> ChunkRecord | Version:
    """The record a verified frame carries; :class:`IntegrityError` if the body is malformed."""
    try:
        wire = unpackb(body)
    except PackError as exc:
        raise IntegrityError(f"malformed record body: {exc}") from None
    if kind == F.KIND_VERSION:
        return Version.from_wire(wire)
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
