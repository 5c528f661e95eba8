"""Every on-disk constant of the log, in one place (the format itself is specified in ``_log``).

Changing any value here changes the format: bump :data:`FORMAT_VERSION` and keep a reader for
the old one. The asserts at the bottom pin the sizes so an accidental edit fails at import.
"""

from __future__ import annotations

import struct
from typing import Final

import xxhash

# --- segment files --------------------------------------------------------------------------
SEGMENT_MAGIC: Final = b"HDSDLOG\x00"
FORMAT_VERSION: Final = 2  # 2: version records carry names and metadata sealed
MIGRATABLE_VERSIONS: Final = frozenset({1})  # refused at open; `hdsd store migrate` reads them
SEGMENT_SUFFIX: Final = ".seg"
SEGMENT_TMP_SUFFIX: Final = ".seg.tmp"  # a segment being created; never holds durable data
TORN_INFIX: Final = ".torn-"  # `<segment>.torn-<offset>`: bytes cut off a torn tail
DAMAGED_INFIX: Final = ".damaged-"  # `<segment>.damaged-<offset>`: a range skipped by salvage
# magic, format version, flags (0), reserved (0), segment number, xxh3-64 of the 24 bytes before
SEGMENT_HEADER: Final = struct.Struct("<8sHHIQQ")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size

# --- record frames --------------------------------------------------------------------------
# Every frame starts with FRAME_SYNC so a reader can resynchronise past damage with bytes.find.
FRAME_SYNC: Final = b"\xc3REC"
# sync, body length, kind, flags, reserved (0), batch start offset, xxh3-64 checksum
FRAME_HEADER: Final = struct.Struct("<4sIBBHIQ")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size
# The checksum covers header bytes [4:16) (length, kind, flags, reserved, batch start) followed
# by the 8-byte little-endian xxh3-64 of the body: corruption of either changes it.
CHECKSUMMED_HEADER: Final = slice(4, 16)
MAX_BODY_BYTES: Final = 64 << 20  # a longer length field is damage, not a record
MAX_SEGMENT_BYTES: Final = (1 << 32) - 1  # batch start offsets are u32

# Frame flags.
FLAG_COMMIT: Final = 0x01  # last frame of a batch: the batch is complete up to here

# Record kinds. 0 is never valid so zero-filled (preallocated) space never parses as a record.
KIND_CHUNK: Final = 1
KIND_VERSION: Final = 2
# Reserved for later, so old readers refuse them loudly instead of misreading them:
KIND_HINT: Final = 3
KIND_TENANT_KEY: Final = 4
KIND_AUDIT: Final = 5
KIND_DEAD_CHUNK: Final = 6  # GC marker: a chunk id no longer referenced
KNOWN_KINDS: Final = frozenset({KIND_CHUNK, KIND_VERSION})
RESERVED_KINDS: Final = frozenset({KIND_HINT, KIND_TENANT_KEY, KIND_AUDIT, KIND_DEAD_CHUNK})

U64: Final = struct.Struct("<Q")


def digest(data: bytes | memoryview) -> int:
    """The xxh3-64 of *data* (the body digest of a frame)."""
    return xxhash.xxh3_64_intdigest(data)


def frame_checksum(header_fields: bytes | memoryview, body_digest: int) -> int:
    """Checksum of a frame from its header bytes [4:16) and its body digest."""
    return xxhash.xxh3_64_intdigest(bytes(header_fields) + U64.pack(body_digest))


def segment_header(number: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, 0, number, 0)[:24]
    return head + U64.pack(digest(head))


def segment_name(number: int) -> str:
    return f"{number:016d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The segment number of a file name, or None if it is not a segment file."""
    stem = name[: -len(SEGMENT_SUFFIX)]
    if not name.endswith(SEGMENT_SUFFIX) or len(stem) != 16 or not stem.isdigit():
        return None
    return int(stem)


assert len(SEGMENT_MAGIC) == 8
assert SEGMENT_HEADER_SIZE == 32
assert FRAME_HEADER_SIZE == 24
assert len(FRAME_SYNC) == 4 and FRAME_SYNC != b"\0" * 4
assert 0 not in KNOWN_KINDS | RESERVED_KINDS
assert not KNOWN_KINDS & RESERVED_KINDS
assert all(0 < k < 256 for k in KNOWN_KINDS | RESERVED_KINDS)
assert len(segment_header(1)) == SEGMENT_HEADER_SIZE
assert parse_segment_name(segment_name(7)) == 7
