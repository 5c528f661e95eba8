"""The export archive format (``docs/export-format.md`` is its user-facing description).

An export is a POSIX (pax) tar stream whose members come in this order::

    manifest.jsonl                     header line, then one line per version, in archive order
    SHA256SUMS                         "<sha256>  <path>" per object, as sha256sum -c reads it
    objects/<bucket>/<key…>/@versions/<version-id>    the original bytes, one per version

The manifest comes first and is exact (counts, sizes and SHA-256 of every object): the
exporter has every object hashed in a first pass (by the nodes, which send only the digests, or
by itself through a spool) and streams them in a second, checking each against its digest. That
costs the nodes a second read of the data, and buys an importer that checks each object against
the manifest *before* it commits it, even when the archive arrives on a pipe.

Object paths: the key is split on ``/`` and each segment is percent-encoded (UTF-8), keeping
only ``A-Z a-z 0-9 - _ . ~`` as they are, except that a leading ``.`` is encoded too (no
segment is ``.``, ``..`` or hidden). ``@`` is always encoded, so the names ``@versions`` (the
directory of a key's versions) and ``@empty`` (an empty segment, as in ``a//b``) can never be
a segment of a key: two keys never share a path, whatever their names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any, Final

from .._errors import ArchiveError
from ..cluster import HybridClock

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ORIGINAL_CREATED",
    "SUMS_NAME",
    "decode_key_path",
    "encode_key_path",
    "entry_request_id",
    "holds_of",
    "iso_time",
    "object_path",
    "parse_line",
    "retention_of",
]

FORMAT: Final = "hdsd-export"
# 2: the header carries the buckets' retention locks and the legal holds.
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = frozenset({1, 2})
# Metadata an import adds to each version: when the version was first written (ISO 8601 UTC).
ORIGINAL_CREATED: Final = "hdsd-original-created"
MANIFEST_NAME: Final = "manifest.jsonl"
SUMS_NAME: Final = "SHA256SUMS"
OBJECTS_DIR: Final = "objects"
VERSIONS_DIR: Final = "@versions"
EMPTY_SEGMENT: Final = "@empty"

_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


# A segment made of safe characters only, not starting with ".": kept as it is (most keys and
# every version id; the loop below costs ~10 µs a segment, four segments an object).
_PLAIN: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")


def _encode_segment(segment: str) -> str:
    if _PLAIN.fullmatch(segment):
        return segment
    if not segment:
        return EMPTY_SEGMENT
    raw = segment.encode("utf-8")
    out = []
    for i, byte in enumerate(raw):
        if byte in _SAFE and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _decode_segment(text: str) -> str:
    if text == EMPTY_SEGMENT:
        return ""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            try:
                raw.append(int(text[i + 1:i + 3], 16))
            except ValueError:
                raise ValueError(f"bad escape in path segment {text!r}") from None
            if len(text[i + 1:i + 3]) != 2:
                raise ValueError(f"bad escape in path segment {text!r}")
            i += 3
        else:
            raw += text[i].encode("ascii")
            i += 1
    return raw.decode("utf-8")


def encode_key_path(key: str) -> str:
    """The archive path segments of *key* (``/``-joined), reversible by :func:`decode_key_path`."""
    return "/".join(_encode_segment(s) for s in key.split("/"))


def decode_key_path(path: str) -> str:
    return "/".join(_decode_segment(s) for s in path.split("/"))


def object_path(bucket: str, key: str, version: str) -> str:
    """Where the bytes of one version live in the archive."""
    return "/".join((OBJECTS_DIR, _encode_segment(bucket), encode_key_path(key), VERSIONS_DIR,
                     _encode_segment(version)))


def iso_time(hlc: int) -> str:
    """The wall-clock time of an HLC timestamp, ISO 8601 UTC with milliseconds."""
    ms = HybridClock.wall_ms(hlc)
    when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def entry_request_id(header: dict[str, Any], entry: dict[str, Any]) -> bytes:
    """The request id an import uses for *entry*: derived from the source cluster, tenant and
    version, so a retried import stores each version once, and two different exports imported
    into one tenant never collide."""
    ident = [header["cluster"], header["tenant"], entry["bucket"], entry["key"], entry["version"],
             entry["sha256"]]
    text = json.dumps(ident, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(b"hdsd-import-v1\x00" + text).digest()[:16]


def dump_line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")) \
        .encode("utf-8") + b"\n"


_ENTRY_FIELDS: Final = {"bucket": str, "key": str, "version": str, "created": str, "hlc": int,
                        "size": int, "deleted": bool, "metadata": dict, "content_id": str}


def parse_line(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{MANIFEST_NAME}: {what} is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise ArchiveError(f"{MANIFEST_NAME}: {what} is not a JSON object")
    return doc


def check_header(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("format") != FORMAT:
        raise ArchiveError(f"not an hdsd export: {MANIFEST_NAME} header has format "
                           f"{doc.get('format')!r}")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise ArchiveError(f"export format version {doc.get('format_version')!r} is not "
                           f"supported (this hdsd reads versions "
                           f"{', '.join(map(str, sorted(READABLE_VERSIONS)))})")
    for field, kind in (("tenant", str), ("cluster", str), ("versions", int),
                        ("objects", int), ("total_bytes", int)):
        if type(doc.get(field)) is not kind:
            raise ArchiveError(f"{MANIFEST_NAME} header: {field} missing or not {kind.__name__}")
    if doc["format_version"] >= 2:
        _check_governance(doc)
    return doc


def retention_of(header: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"bucket", "retention_days"}]`` of an export (none before format 2, or when it was
    written without them)."""
    return list(header.get("retention") or [])


def holds_of(header: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"bucket", "key", "by", "set"}]``: the legal holds in force at export time."""
    return list(header.get("holds") or [])


def _check_governance(doc: dict[str, Any]) -> None:
    if doc.get("retention") is None and doc.get("holds") is None:
        return  # exported without them (--without-retention)
    for i, r in enumerate(doc.get("retention") or ()):
        if (type(r) is not dict or type(r.get("bucket")) is not str
                or type(r.get("retention_days")) is not int or r["retention_days"] < 0):
            raise ArchiveError(f"{MANIFEST_NAME} header: retention entry {i} is malformed")
    for i, h in enumerate(doc.get("holds") or ()):
        if type(h) is not dict or type(h.get("bucket")) is not str or \
                type(h.get("key")) is not str:
            raise ArchiveError(f"{MANIFEST_NAME} header: hold entry {i} is malformed")


def check_entry(doc: dict[str, Any], line: int) -> dict[str, Any]:
    for field, kind in _ENTRY_FIELDS.items():
        if type(doc.get(field)) is not kind:
            raise ArchiveError(f"{MANIFEST_NAME} line {line}: {field} missing or not "
                               f"{kind.__name__}")
    if doc["deleted"]:
        if doc.get("path") is not None or doc.get("sha256") is not None:
            raise ArchiveError(f"{MANIFEST_NAME} line {line}: a delete marker has no object")
    else:
        expected = object_path(doc["bucket"], doc["key"], doc["version"])
        if doc.get("path") != expected:
            raise ArchiveError(f"{MANIFEST_NAME} line {line}: path {doc.get('path')!r} is not "
                               f"{expected!r}")
        sha = doc.get("sha256")
        if type(sha) is not str or len(sha) != 64:
            raise ArchiveError(f"{MANIFEST_NAME} line {line}: sha256 missing or malformed")
    if doc["size"] < 0:
        raise ArchiveError(f"{MANIFEST_NAME} line {line}: negative size")
    return doc
