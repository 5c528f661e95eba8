"""The version record: the unit of the data model.

tenant → bucket → key → versions. A version is immutable and identified, within its key, by
``(hlc, node)``: the hybrid-logical-clock timestamp it was stamped with and the node that
coordinated the write. The current version of a key is the greatest ``(hlc, node)``; replicas
merge by union of versions, so merging is commutative, idempotent and never loses a write.

Content lives either in chunks named by ``chunks`` (each a 32-byte keyed BLAKE3 id whose sealed
payload is a chunk record in the log) or, for small blobs, ``inline``: the sealed payload of the
single chunk ``chunks[0]`` carried inside the version record itself, so a small put is one log
record and one fsync.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import IntegrityError

__all__ = ["Version", "parse_version_id", "retained_until", "visible_versions"]


@dataclass(frozen=True, slots=True)
class Version:
    tenant: str
    bucket: str
    key: str
    hlc: int
    node: str
    size: int
    content_hash: bytes
    chunks: tuple[bytes, ...] = ()
    inline: bytes | None = None
    tombstone: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    # Client-chosen id of the request that wrote this version: a retried put is applied once.
    request_id: bytes = b""
    chunk_size: int = 0
    # A purge record: ``(hlc, node)`` of the version of this key it deletes for good (see
    # ``_index``: the target leaves every index that learns of this record, and is refused if
    # it arrives again). A purge record has no content and is never a key's current version.
    purges: tuple[int, str] | None = None
    # A retention record: ``(hlc, node, until_ms)`` — the version of this key it retains (no
    # purge before *until_ms*, Unix milliseconds) beyond its bucket's retention. Like a purge
    # record it has no content, is never current and never listed; the latest *until* wins.
    retains: tuple[int, str, int] | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.hlc < 1 << 64):
            raise ValueError("hlc must be an unsigned 64-bit integer")
        if self.size < 0:
            raise ValueError("size must be >= 0")
        if self.inline is not None and len(self.chunks) != 1:
            raise ValueError("an inline version names exactly one chunk")
        if self.tombstone and (self.chunks or self.inline is not None or self.size):
            raise ValueError("a tombstone carries no content")
        if self.control and (self.tombstone or self.chunks or self.size
                             or self.inline is not None):
            raise ValueError("a purge or retention record carries no content and is no "
                             "delete marker")
        if self.purges is not None and self.retains is not None:
            raise ValueError("a record purges or retains, not both")

    @property
    def control(self) -> bool:
        """A purge or retention record: about another version, never shown as one."""
        return self.purges is not None or self.retains is not None

    @property
    def version_id(self) -> str:
        """Stable printable id: 16 hex digits of the HLC, a dot, the origin node."""
        return f"{self.hlc:016x}.{self.node}"

    @property
    def order(self) -> tuple[int, str]:
        """Sort key: the current version is the greatest."""
        return (self.hlc, self.node)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly dict; the inverse of :meth:`from_wire`."""
        return {
            "t": self.tenant,
            "b": self.bucket,
            "k": self.key,
            "h": self.hlc,
            "n": self.node,
            "s": self.size,
            "c": self.content_hash,
            "m": list(self.chunks),
            "i": self.inline,
            "x": self.tombstone,
            "d": dict(self.metadata),
            "r": self.request_id,
            "z": self.chunk_size,
        } | ({} if self.purges is None else {"p": list(self.purges)}) | (
            {} if self.retains is None else {"q": list(self.retains)})

    @classmethod
    def from_wire(cls, d: Any) -> Version:
        try:
            return cls(
                tenant=_typed(d["t"], str),
                bucket=_typed(d["b"], str),
                key=_typed(d["k"], str),
                hlc=_typed(d["h"], int),
                node=_typed(d["n"], str),
                size=_typed(d["s"], int),
                content_hash=_typed(d["c"], bytes),
                chunks=tuple(_typed(c, bytes) for c in _typed(d["m"], list)),
                inline=None if d["i"] is None else _typed(d["i"], bytes),
                tombstone=_typed(d["x"], bool),
                metadata={_typed(k, str): _typed(v, str) for k, v in _typed(d["d"], dict).items()},
                request_id=_typed(d["r"], bytes),
                chunk_size=_typed(d["z"], int),
                purges=None if d.get("p") is None else _purge_target(d["p"]),
                retains=None if d.get("q") is None else _retain_target(d["q"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed version record: {exc}") from None

    def public_info(self) -> dict[str, Any]:
        """What a client is shown by stat/versions/list (no chunk ids, no inline payload)."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "version": self.version_id,
            "hlc": self.hlc,
            "node": self.node,
            "size": self.size,
            "content_hash": self.content_hash.hex(),
            "deleted": self.tombstone,
            "metadata": dict(self.metadata),
        }


def _purge_target(value: Any) -> tuple[int, str]:
    hlc, node = _typed(value, list)
    return _typed(hlc, int), _typed(node, str)


def _retain_target(value: Any) -> tuple[int, str, int]:
    hlc, node, until = _typed(value, list)
    return _typed(hlc, int), _typed(node, str), _typed(until, int)


def _typed(value: Any, kind: type) -> Any:
    if type(value) is kind:  # the usual case, in one comparison (a record has ~14 fields)
        return value
    # bool is an int subclass: keep the two apart so a flag never passes for a size.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_version_id(text: str) -> tuple[int, str]:
    """``"00000190a1b2c3d4.node"`` → ``(hlc, node)``; :class:`ValueError` if malformed."""
    hlc_hex, sep, node = text.partition(".")
    if not sep or len(hlc_hex) != 16 or not node:
        raise ValueError(f"not a version id: {text!r}")
    return int(hlc_hex, 16), node


def visible_versions(versions: Iterable[Version]) -> list[Version]:
    """*versions* (of any keys, in their order) less the purge and retention records and every
    version a purge record among them names: what a reader is shown. Replicas are merged
    before this, so a replica that has not yet learnt of a purge cannot show the purged
    version again while another replica's answer carries the purge record."""
    items = list(versions)
    gone = {(v.tenant, v.bucket, v.key, *v.purges) for v in items if v.purges is not None}
    return [v for v in items if not v.control
            and (not gone or (v.tenant, v.bucket, v.key, v.hlc, v.node) not in gone)]


def retained_until(versions: Iterable[Version], target: Version) -> int:
    """The latest retain-until (Unix ms) the retention records among *versions* give
    *target*; 0 if none does."""
    return max((v.retains[2] for v in versions if v.retains is not None
                and v.key == target.key and v.bucket == target.bucket
                and v.retains[:2] == (target.hlc, target.node)), default=0)
