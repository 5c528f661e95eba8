"""Version records with their names sealed: what the log and the index hold of a version.

The store knows no tenant key. The node injects a :class:`Sealing` (one :class:`TenantSeal`
per tenant, from its keyring); the store uses it to turn a clear :class:`Version` into a
:class:`SealedVersion` on the caller's thread before the record reaches the log writer, and
back when a read returns it. Everything the store must do without the key — recovery
replaying the log into the index, compaction moving records, repair finding a key's leaf —
works on the clear parts of a sealed version: tenant, the keyed ids of its bucket and of its
(bucket, key), HLC, origin node, request id, tombstone flag, and a purge record's target
``(hlc, node)`` (the index must drop the target without the key).

Sealed part (``"e"`` in the record body): ``TenantSeal.seal(packb([bucket, key, metadata]),
aad)`` with ``aad = b"hdsd-version-names-v1\\0" || packb([tenant, bucket id, name id, hlc,
node])``: the record's identity, so sealed names cannot be moved to another version.

Replicated as sealed: the coordinator of a write seals its versions once and sends each to its
peers as the record body's map plus the clear names (:func:`sealed_wire`); a peer that finds
the sealed parts consistent with the clear version under its own key stores that body as it is
(:class:`ReplicatedVersion`, :func:`seal_version` with *sent*) instead of sealing the names
again — the two sites then hold the same bytes. A node that does not know these keys ignores
them (a version map is read by its keys) and seals the clear names itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .._errors import IntegrityError, PermissionDenied
from .._packing import PackError, packb, unpackb
from ._version import Version, _purge_target, _typed

__all__ = ["NAME_ID_BYTES", "ReplicatedVersion", "SealedVersion", "Sealing", "TenantSeal",
           "open_names", "open_version", "replicated_version", "seal_for", "seal_version",
           "sealed_wire"]

NAME_ID_BYTES = 16
_AAD = b"hdsd-version-names-v1\x00"
# What TenantSeal.seal adds to the plaintext in the node's sealing (hdsd.pipeline.NameSeal:
# a 24-byte nonce and a 16-byte tag). A seal of another format only loses the shortcut of
# ReplicatedVersion (its length check fails: the names are sealed here), never correctness.
_SEAL_OVERHEAD = 40
# The keys of a version map sent sealed (sealed_wire): the record body's (the clear version's
# less "b", "k", "d", plus "g", "y", "e") and the three clear names again; "p" or "q" add one.
_SENT_KEYS = 16


class TenantSeal(Protocol):
    """One tenant's name ids (keyed hashes) and name sealing (AEAD)."""

    def bucket_id(self, bucket: str) -> bytes: ...

    def name_id(self, bucket: str, key: str) -> bytes: ...

    def seal(self, plain: bytes, aad: bytes) -> bytes: ...

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext; :class:`IntegrityError` if it does not authenticate."""
        ...


class Sealing(Protocol):
    """What the node gives its store: a tenant's seal, or None (no key: unknown or shredded)."""

    def seal_for(self, tenant: str) -> TenantSeal | None: ...


def seal_for(sealing: Sealing, tenant: str) -> TenantSeal:
    seal = sealing.seal_for(tenant)
    if seal is None:
        raise PermissionDenied(f"tenant {tenant!r} has no key on this node (unknown or "
                               "shredded): its names cannot be sealed or opened")
    return seal


@dataclass(frozen=True, slots=True)
class SealedVersion:
    """A version as stored: clear identity fields, names and metadata sealed in *body*."""

    tenant: str
    bucket_id: bytes
    name_id: bytes
    hlc: int
    node: str
    request_id: bytes
    tombstone: bool
    body: bytes  # the msgpack record body, exactly as in the log
    purges: tuple[int, str] | None = None  # a purge record's target (hlc, node), clear
    retains: bool = False  # a retention record (clear: never a key's head)
    # The sealed names (the body's "e") when this node sealed them, to replicate the record
    # as sealed (see sealed_wire); empty for a record read back or received.
    names: bytes = field(default=b"", compare=False, repr=False)

    @property
    def order(self) -> tuple[int, str]:
        return (self.hlc, self.node)


def _aad(tenant: str, bucket_id: bytes, name_id: bytes, hlc: int, node: str) -> bytes:
    return _AAD + packb([tenant, bucket_id, name_id, hlc, node])


@dataclass(frozen=True, slots=True)
class ReplicatedVersion:
    """A version as a peer's ``Replicate`` carried it: *version* decoded from *wire*, the map
    itself, which holds the record its coordinator sealed (see :func:`sealed_wire`). Committed
    like a :class:`Version`; the store keeps the sealed record if it belongs to the version
    under this node's key, else seals the names itself."""

    version: Version
    wire: dict[str, Any]

    @property
    def hlc(self) -> int:
        return self.version.hlc


def replicated_version(wire: Any) -> Version | ReplicatedVersion:
    """The record a version map of a ``Replicate`` asks to store: a :class:`ReplicatedVersion`
    when it carries sealed names, else the clear :class:`Version` (an older coordinator, hint
    replay, repair). :class:`IntegrityError` if malformed."""
    v = Version.from_wire(wire)
    return ReplicatedVersion(v, wire) if "e" in wire else v


def sealed_wire(sealed: SealedVersion, clear: Version) -> dict[str, Any]:
    """The map that replicates *clear*, whose record this node sealed as *sealed*: the clear
    version's map with the record's ids and sealed names added (``"g"``, ``"y"``, ``"e"``),
    which every node reads as the version (:meth:`Version.from_wire` reads its keys by name)
    and a node that knows these keys stores as sealed. Less the clear names, it is the
    record's body, keys in the same order (see :func:`seal_version`): the replica's copy is
    byte for byte this node's."""
    wire = clear.to_wire()
    wire["g"], wire["y"], wire["e"] = sealed.bucket_id, sealed.name_id, sealed.names
    return wire


def _adopt(v: Version, sent: dict[str, Any], bid: bytes, nid: bytes) -> SealedVersion | None:
    """The record *sent* (a :func:`sealed_wire` map *v* was decoded from) holds, if it
    belongs to *v* here; None (seal the names here) otherwise.

    Every field of the record but the sealed names is *v*'s own, by construction: the body is
    the map less the clear names, and *v* was decoded from the same map (its types and
    invariants checked). The ids must be this node's, computed from *v*'s names under its own
    key: so the coordinator used the same tenant key and the index files the record under
    the names it carries in clear. The sealed names must have their plaintext's length; their
    content is not opened (that costs what sealing does): the AEAD binds them to the tenant,
    both ids, the HLC and the node, so names sealed for another record fail to open at the
    first read of their key and at :meth:`Store.check_record` (an :class:`IntegrityError`),
    and a coordinator seals both from one version (:func:`sealed_wire`)."""
    names = sent.get("e")
    if (type(names) is not bytes or sent.get("g") != bid or sent.get("y") != nid
            or len(sent) != _SENT_KEYS + (v.purges is not None) + (v.retains is not None)
            or len(names) != _SEAL_OVERHEAD + len(packb([v.bucket, v.key, v.metadata]))):
        return None
    wire = dict(sent)
    del wire["b"], wire["k"], wire["d"]
    return SealedVersion(v.tenant, bid, nid, v.hlc, v.node, v.request_id, v.tombstone,
                         packb(wire), v.purges, v.retains is not None)


def seal_version(v: Version, seal: TenantSeal, name_id: bytes | None = None,
                 sent: dict[str, Any] | None = None) -> SealedVersion:
    """*v* with bucket, key and metadata sealed (a fresh nonce each call); *name_id*: its
    name id if the caller computed it already; *sent*: the map a peer replicated *v* as,
    whose sealed record is kept if it belongs to *v* (see :func:`_adopt`)."""
    bid = seal.bucket_id(v.bucket)
    nid = name_id or seal.name_id(v.bucket, v.key)
    if sent is not None and (adopted := _adopt(v, sent, bid, nid)) is not None:
        return adopted
    wire = v.to_wire()
    names = packb([wire.pop("b"), wire.pop("k"), wire.pop("d")])
    wire["g"] = bid
    wire["y"] = nid
    wire["e"] = sealed = seal.seal(names, _aad(v.tenant, bid, nid, v.hlc, v.node))
    return SealedVersion(v.tenant, bid, nid, v.hlc, v.node, v.request_id, v.tombstone,
                         packb(wire), v.purges, v.retains is not None, sealed)


def parse_sealed(body: bytes | memoryview) -> SealedVersion:
    """The clear fields of a sealed version record body; :class:`IntegrityError` if
    malformed."""
    try:
        wire = unpackb(body)
        return SealedVersion(
            tenant=_typed(wire["t"], str), bucket_id=_id(wire["g"]), name_id=_id(wire["y"]),
            hlc=_typed(wire["h"], int), node=_typed(wire["n"], str),
            request_id=_typed(wire["r"], bytes), tombstone=_typed(wire["x"], bool),
            body=bytes(body),
            purges=None if wire.get("p") is None else _purge_target(wire["p"]),
            retains=wire.get("q") is not None)
    except (PackError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"malformed version record: {exc}") from None


def _id(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != NAME_ID_BYTES:
        raise TypeError("a name id is 16 bytes")
    return value


def open_version(body: bytes, seal: TenantSeal) -> Version:
    """The clear :class:`Version` of a sealed record body. The ids need no recomputing: they
    are in the associated data, so ids that do not belong to the sealed names fail to open
    (only a holder of the key could have sealed them together)."""
    try:
        wire = unpackb(body)
        bid, nid, sealed = wire["g"], wire["y"], wire.pop("e")
        tenant, hlc, origin = wire["t"], wire["h"], wire["n"]
        # Checked inline (every get opens its key's records): the helpers cost a call each.
        if not (type(bid) is bytes and len(bid) == NAME_ID_BYTES and type(nid) is bytes
                and len(nid) == NAME_ID_BYTES and type(sealed) is bytes
                and type(tenant) is str and type(hlc) is int and type(origin) is str):
            raise TypeError("ids, tenant, hlc, node or sealed names of the wrong type")
        plain = seal.open(sealed, _AAD + packb([tenant, bid, nid, hlc, origin]))
        bucket, key, metadata = unpackb(plain)
    except (PackError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"malformed sealed version record: {exc}") from None
    wire["b"], wire["k"], wire["d"] = bucket, key, metadata
    return Version.from_wire(wire)


def open_names(body: bytes, seal: TenantSeal) -> tuple[str, str]:
    """Only ``(bucket, key)`` of a sealed record body: what a listing cache needs (one AEAD
    open and no :class:`Version` built)."""
    try:
        wire = unpackb(body)
        plain = seal.open(_typed(wire["e"], bytes),
                          _aad(_typed(wire["t"], str), _id(wire["g"]), _id(wire["y"]),
                               _typed(wire["h"], int), _typed(wire["n"], str)))
        bucket, key, _metadata = unpackb(plain)
        return _typed(bucket, str), _typed(key, str)
    except (PackError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"malformed sealed version record: {exc}") from None
