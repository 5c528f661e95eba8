"""The audit log's on-disk format: records, frames, segments, checkpoints — in one place.

A node's log is a directory of *segments* named ``seg-<first seq, 20 digits>.audit``. A segment
is a fixed header followed by frames::

    header  magic "HDSDAUD1" (8) | first seq u64 BE (8) | previous hash (32)
    frame   body length u32 BE (4) | body (msgpack array) | chain hash (32)

``chain hash = BLAKE3(previous chain hash || body)`` (keyless): each record's hash covers every
record before it. The previous hash of the first segment ever written is 32 zero bytes; the header
of every later segment holds the hash of the last record before it, so a retention cut that
deletes whole old segments leaves the rest verifiable.

A body is one msgpack array (canonical: fixed field order, :mod:`hdsd._packing` options)::

    request     [1, seq, time_ns, "request", node, identity, role, tenant, op, bucket, key,
                 version, bytes_in, bytes_out, outcome, peer]
    checkpoint  [1, seq, time_ns, "checkpoint", node, covers_seq, covers_hash, signature]

A checkpoint signs (Ed25519, the node's audit key) ``checkpoint_message(node, covers_seq,
covers_hash, time_ns)``: the chain hash of record ``covers_seq = seq - 1`` commits to every record
up to it. The checkpoint is itself a chained record.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import blake3

from .._packing import PackError, packb, unpackb

__all__ = [
    "FORMAT",
    "GENESIS",
    "HASH_SIZE",
    "HEADER",
    "MAGIC",
    "AuditRecord",
    "SegmentHeader",
    "chain_hash",
    "checkpoint_message",
    "decode_body",
    "frame",
    "segment_name",
    "segment_seq",
]

FORMAT: Final = 1
MAGIC: Final = b"HDSDAUD1"
HASH_SIZE: Final = 32
HEADER: Final = struct.Struct(">8sQ32s")
LENGTH: Final = struct.Struct(">I")
GENESIS: Final = bytes(HASH_SIZE)
MAX_BODY: Final = 1 << 20  # a record is a few hundred bytes; anything huge is damage
_SEGMENT_PREFIX, _SEGMENT_SUFFIX = "seg-", ".audit"
_CHECKPOINT_DOMAIN: Final = "hdsd-audit-checkpoint-v1"
assert HEADER.size == 48


def segment_name(first_seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{first_seq:020d}{_SEGMENT_SUFFIX}"


def segment_seq(name: str) -> int | None:
    """The first seq a segment file name announces, or None if *name* is not a segment."""
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX):-len(_SEGMENT_SUFFIX)]
    return int(digits) if len(digits) == 20 and digits.isdigit() else None


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    first_seq: int
    prev_hash: bytes

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, self.first_seq, self.prev_hash)

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        """Raise :class:`ValueError` if *data* does not start with a valid header."""
        if len(data) < HEADER.size:
            raise ValueError("segment shorter than its header")
        magic, first, prev = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("bad segment magic")
        return cls(first, prev)


def chain_hash(prev: bytes, body: bytes) -> bytes:
    return blake3.blake3(prev + body).digest()


def frame(body: bytes, digest: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body + digest


def checkpoint_message(node: str, covers_seq: int, covers_hash: bytes, time_ns: int) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers (domain-separated)."""
    return packb([_CHECKPOINT_DOMAIN, node, covers_seq, covers_hash, time_ns])


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record. ``kind`` is ``request`` (a client request, an admin action or a refused
    connection) or ``checkpoint`` (then only ``covers_*`` and ``signature`` are meaningful)."""

    seq: int
    time_ns: int
    kind: str
    node: str
    identity: str = ""
    role: str = ""
    tenant: str = ""
    op: str = ""
    bucket: str = ""
    key: str = ""
    version: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = ""
    peer: str = ""
    covers_seq: int = 0
    covers_hash: bytes = b""
    signature: bytes = b""

    def body(self) -> bytes:
        """The canonical encoding (what the chain hash covers)."""
        if self.kind == "checkpoint":
            return packb([FORMAT, self.seq, self.time_ns, self.kind, self.node, self.covers_seq,
                          self.covers_hash, self.signature])
        return packb([FORMAT, self.seq, self.time_ns, self.kind, self.node, self.identity,
                      self.role, self.tenant, self.op, self.bucket, self.key, self.version,
                      self.bytes_in, self.bytes_out, self.outcome, self.peer])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (times in UTC ISO 8601 and ns; hashes in hex)."""
        out: dict[str, Any] = {"seq": self.seq, "time_ns": self.time_ns, "kind": self.kind,
                               "node": self.node}
        if self.kind == "checkpoint":
            out.update(covers_seq=self.covers_seq, covers_hash=self.covers_hash.hex(),
                       signature=self.signature.hex())
        else:
            out.update(identity=self.identity, role=self.role, tenant=self.tenant, op=self.op,
                       bucket=self.bucket, key=self.key, version=self.version,
                       bytes_in=self.bytes_in, bytes_out=self.bytes_out, outcome=self.outcome,
                       peer=self.peer)
        return out


_STR = str
_REQUEST_TYPES = (int, int, int, _STR, _STR, _STR, _STR, _STR, _STR, _STR, _STR, _STR, int, int,
                  _STR, _STR)
_CHECKPOINT_TYPES = (int, int, int, _STR, _STR, int, bytes, bytes)


def decode_body(body: bytes) -> AuditRecord:
    """Parse one record body; :class:`ValueError` if it is not a well-formed record."""
    try:
        fields = unpackb(body)
    except PackError as exc:
        raise ValueError(str(exc)) from None
    if type(fields) is not list or len(fields) < 4 or fields[0] != FORMAT:
        raise ValueError("not an audit record of format 1")
    kind = fields[3]
    types = _CHECKPOINT_TYPES if kind == "checkpoint" else _REQUEST_TYPES
    if kind not in ("checkpoint", "request") or len(fields) != len(types) or not all(
            type(v) is t for v, t in zip(fields, types, strict=True)):
        raise ValueError("audit record fields have the wrong shape")
    if kind == "checkpoint":
        _, seq, t, _, node, covers_seq, covers_hash, sig = fields
        return AuditRecord(seq=seq, time_ns=t, kind=kind, node=node, covers_seq=covers_seq,
                           covers_hash=covers_hash, signature=sig)
    (_, seq, t, _, node, identity, role, tenant, op, bucket, key, version, b_in, b_out,
     outcome, peer) = fields
    return AuditRecord(seq=seq, time_ns=t, kind=kind, node=node, identity=identity, role=role,
                       tenant=tenant, op=op, bucket=bucket, key=key, version=version,
                       bytes_in=b_in, bytes_out=b_out, outcome=outcome, peer=peer)
