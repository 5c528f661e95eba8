"""Every number the wire format fixes, in one place, checked at import.

A frame is ``length | type | checksum | body``::

    offset  size  field
    0       4     length of the body in bytes, unsigned, big-endian
    4       1     frame type code (see the registry in ``_messages``)
    5       8     xxh3_64 of the body, unsigned, big-endian
    13      n     body: one msgpack array holding the message's fields in order

Changing any of these values is a protocol version bump (:data:`PROTOCOL_VERSION`).
"""

from __future__ import annotations

import struct
from typing import Final

PROTOCOL_VERSION: Final = 1
#: Versions this implementation speaks; a Hello announcing another is a ProtocolError.
SUPPORTED_VERSIONS: Final = frozenset({PROTOCOL_VERSION})

HEADER: Final = struct.Struct(">IBQ")
HEADER_SIZE: Final = 13

#: Largest body a connection accepts by default: a 4 MiB payload plus room for its envelope.
MAX_FRAME: Final = 4 * 1024 * 1024 + 64 * 1024
#: Below this a Hello or an ErrorReply might not fit; a smaller per-connection limit is refused.
MIN_MAX_FRAME: Final = 64 * 1024
#: The length field is a u32.
MAX_FRAME_LIMIT: Final = (1 << 32) - 1

#: Body bytes of credit each stream starts with (announced by the receiver in its Hello).
DEFAULT_WINDOW: Final = 8 * 1024 * 1024
MAX_WINDOW: Final = (1 << 32) - 1
#: Largest single Credit grant.
MAX_CREDIT_GRANT: Final = (1 << 32) - 1
#: Outstanding credit on one stream beyond this is refused: a peer cannot make us keep
#: ever-growing integers by granting forever.
MAX_OUTSTANDING_CREDIT: Final = 1 << 48

MAX_RID: Final = (1 << 32) - 1
REQUEST_ID_SIZE: Final = 16
MAX_U63: Final = (1 << 63) - 1

# Field limits. Lengths of names are in characters where the brief says characters (bucket,
# policy, codes), in UTF-8 bytes where the bytes matter to storage (keys, metadata, texts).
MAX_BUCKET_CHARS: Final = 63
MAX_KEY_BYTES: Final = 1024
MAX_METADATA_BYTES: Final = 8 * 1024
MAX_POLICY_CHARS: Final = 63
MAX_NAME_BYTES: Final = 255  # cluster id, peer name
MAX_VERSION_ID_BYTES: Final = 320  # 16 hex digits, a dot, a node name
MAX_CODE_CHARS: Final = 64  # error codes, Goodbye codes
MAX_FEATURES: Final = 64  # names in a Hello's features (each at most MAX_CODE_CHARS)
MAX_TEXT_BYTES: Final = 16 * 1024  # human-readable error messages
MAX_LIST_LIMIT: Final = 10_000
#: A listing's ``after``: a key, or for ``versions`` listings ``key NUL version-id``.
MAX_LIST_CURSOR_BYTES: Final = MAX_KEY_BYTES + 1 + MAX_VERSION_ID_BYTES

# Frame type codes. 0x00 is never valid (a zeroed header is a bug, not a message);
# 0x80-0xFF are reserved for peer (replication) messages.
T_HELLO: Final = 0x01
T_GOODBYE: Final = 0x02
T_PUT_START: Final = 0x10
T_GET_REQUEST: Final = 0x11
T_STAT_REQUEST: Final = 0x12
T_LIST_REQUEST: Final = 0x13
T_DELETE_REQUEST: Final = 0x14
T_VERSIONS_REQUEST: Final = 0x15
T_STATUS_REQUEST: Final = 0x16
T_LIST_BUCKETS: Final = 0x17
T_DATA: Final = 0x20
T_END: Final = 0x21
T_CREDIT: Final = 0x22
T_CANCEL: Final = 0x23
T_GET_START: Final = 0x30
T_REPLY: Final = 0x31
T_ERROR_REPLY: Final = 0x32
# node ↔ node replication and admin requests
T_REPLICATE: Final = 0x80
T_FETCH_VERSIONS: Final = 0x81
T_FETCH_CHUNK: Final = 0x82
T_PEER_STATUS: Final = 0x83
T_SITE_MODE: Final = 0x84
T_LIST_PEER: Final = 0x85
T_TREE_LEVEL: Final = 0x90
T_LEAF_DIFF: Final = 0x91
T_MAINTENANCE: Final = 0x92
T_FETCH_CHUNKS: Final = 0x93  # chunks as the Data frames of a download (a rebuild's bulk)
#: Most chunks one FetchChunks asks for.
MAX_FETCH_CHUNKS: Final = 4096
T_AUDIT_SHIP: Final = 0x86  # 0x87 is also allocated to the audit log, unused so far
#: Most audit records one AuditShip carries.
MAX_AUDIT_BATCH: Final = 4096
T_LIST_BUCKETS_PEER: Final = 0x8B
T_LAYOUT_PUSH: Final = 0x8C  # a layout version (operator or node)
# tenant administration (client) and catalog replication (peer)
T_TENANT_CREATE: Final = 0x18
T_TENANT_LIST: Final = 0x19
T_TENANT_SHRED: Final = 0x1A
T_BUCKET_CREATE: Final = 0x1B
T_BUCKET_LIST: Final = 0x1C
T_HOLD_SET: Final = 0x1D
T_HOLD_LIST: Final = 0x1E
T_TENANT_CONFIRM: Final = 0x40  # 0x40-0x4F: tenant lifecycle (0x1E, 0x1F are taken)
T_TENANT_ABANDON: Final = 0x41
# 0x50-0x5F: certificate administration (client)
T_CERT_REVOKE: Final = 0x50
T_CERT_LIST: Final = 0x51
# 0x60-0x6F: S3 access keys (client)
T_S3_KEY_CREATE: Final = 0x60
T_S3_KEY_LIST: Final = 0x61
T_S3_KEY_REVOKE: Final = 0x62
# 0x70-0x7F: bulk reads (client)
T_GET_MANY: Final = 0x70  # many versions' bodies as one download (a restore, an export)
#: Most items one GetMany asks for.
MAX_GET_MANY: Final = 1000
T_CATALOG_PUSH: Final = 0x88
T_CATALOG_SYNC: Final = 0x89
T_TENANT_VOTE: Final = 0x8E

assert HEADER.size == HEADER_SIZE
assert MIN_MAX_FRAME <= MAX_FRAME <= MAX_FRAME_LIMIT
assert 0 < DEFAULT_WINDOW <= MAX_WINDOW
assert MAX_WINDOW <= MAX_OUTSTANDING_CREDIT and MAX_CREDIT_GRANT <= MAX_OUTSTANDING_CREDIT
assert PROTOCOL_VERSION in SUPPORTED_VERSIONS
_CODES = [v for k, v in dict(globals()).items() if k.startswith("T_")]
assert len(set(_CODES)) == len(_CODES), "frame type codes must be distinct"
assert all(0 < c <= 0xFF for c in _CODES)
del _CODES
