"""The typed messages of the wire protocol (the registry mapping frame type codes to them is
:mod:`._registry`).

Every message is a frozen, slotted dataclass whose constructor validates every field (type,
range, length) and raises :class:`~hdsd.InvalidRequest` naming the bad field, so a message
that exists is well-formed — whether a caller built it or the decoder did. Its body on the
wire is a msgpack array of its fields in declaration order.

A message that opens a request derives from :class:`Request`, parameterised by the body of its
success reply (a ``TypedDict`` of :mod:`._replies`). Adding a message type is one dataclass here
plus one line in ``_registry.MESSAGE_TYPES``; its
:class:`Kind` tells the connection state machine how it moves a request along, so the state
tables need no change as long as the new message behaves like an existing kind.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Self, TypeVar, get_args, get_origin

from .._errors import HdsdError, InvalidRequest
from . import _constants as C
from . import _fields as F
from ._replies import (
    BucketsPage,
    Deleted,
    GetInfo,
    GotMany,
    ListPage,
    NodeStatus,
    VersionInfo,
    Versions,
    decode_reply,
)

__all__ = [
    "UNSENT",
    "Cancel",
    "Credit",
    "Data",
    "DeleteRequest",
    "End",
    "ErrorReply",
    "GetMany",
    "GetRequest",
    "GetStart",
    "Goodbye",
    "Hello",
    "Kind",
    "ListBucketsRequest",
    "ListRequest",
    "Message",
    "PutStart",
    "Reply",
    "Request",
    "StatRequest",
    "StatusRequest",
    "VersionsRequest",
]


class Kind(enum.Enum):
    """What a message does to the connection; the state machine's tables are keyed on it."""

    # Members compare by identity, so the identity hash is consistent and a C slot: Enum's own
    # __hash__ is Python code, and every frame looks up a few (state, kind) pairs (~25 hashes
    # per small put on each side).
    __hash__ = object.__hash__

    HELLO = "hello"  # either side, first frame, once
    GOODBYE = "goodbye"  # either side, last frame
    REQUEST = "request"  # client: opens a rid; the server answers Reply or ErrorReply
    UPLOAD = "upload"  # client: opens a rid and a client→server body stream
    DOWNLOAD = "download"  # client: opens a rid; the server answers BODY_START…END or ErrorReply
    BODY_START = "body_start"  # server: opens the server→client body stream of a DOWNLOAD
    DATA = "data"  # body bytes on the open stream of a rid
    END = "end"  # end of the body stream of a rid
    CREDIT = "credit"  # the receiver of a body stream grants more bytes
    CANCEL = "cancel"  # either side abandons a rid
    REPLY = "reply"  # server: final success
    ERROR_REPLY = "error_reply"  # server: final request-level failure


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every wire message."""


R = TypeVar("R")

#: The ``rid`` of a request built but not sent yet: the session that sends it stamps a fresh
#: one (:meth:`Request.with_rid`, called by ``WireSession.open_request`` and ``open_call``
#: — the one place request ids are allocated and stamped).
UNSENT: Final = 0


@dataclass(frozen=True, slots=True)
class Request(Message, Generic[R]):
    """A message that opens a request. ``R`` is the body of its success answer (``Reply.body``;
    ``GetStart.info`` for a get), one of the types of :mod:`._replies`."""

    rid: int

    def with_rid(self, rid: int) -> Self:
        """This request under *rid* (its other fields were checked when it was built): a copy
        of its fields, not a new build — ``dataclasses.replace`` would run the request's whole
        validation again, on every request sent (a client's put, a coordinator's
        ``Replicate``), for fields that did not change."""
        F.check_rid(rid)
        try:
            copy = _COPIERS[type(self)]
        except KeyError:
            copy = _COPIERS[type(self)] = _copier(type(self))
        return copy(self, rid)  # type: ignore[no-any-return]

    def decode_reply(self, body: dict[str, Any]) -> R:
        """*body*, the answer to this request, checked against its reply type
        (:class:`~hdsd.ProtocolError` naming the field if malformed)."""
        return decode_reply(reply_type(type(self)), body, type(self).__name__)  # type: ignore[no-any-return, arg-type]


_COPIERS: dict[type[Message], Callable[[Any, int], Any]] = {}


def _copier(cls: type[Message]) -> Callable[[Any, int], Any]:
    """The function that copies a *cls* under another rid, built once per class as dataclasses
    builds ``__init__``: a store per field in straight-line code — a loop over the field
    names with a ``getattr`` and a store each was ~10 calls per request sent."""
    stores = "".join(f"    _set(new, {f.name!r}, self.{f.name})\n"
                     for f in dataclasses.fields(cls) if f.name != "rid")
    code = ("def copy(self, rid):\n    new = _new(_cls)\n    _set(new, 'rid', rid)\n"
            f"{stores}    return new\n")
    namespace: dict[str, Any] = {"_new": object.__new__, "_set": object.__setattr__, "_cls": cls}
    exec(code, namespace)  # the text above, from the class's own field names
    return namespace["copy"]  # type: ignore[no-any-return]


@functools.cache
def reply_type(cls: type[Request[Any]]) -> Any:
    """The reply body type a request class declares (its ``Request[...]`` parameter)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if get_origin(base) is Request:
                return get_args(base)[0]
    raise TypeError(f"{cls.__name__} declares no reply type")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame of each side. ``window`` is the body credit every stream *towards the
    sender of this Hello* starts with."""

    protocol_version: int
    cluster_id: str
    peer: str
    window: int
    # Added after the first release (optional, so left off the frame while empty): the wire
    # features its sender speaks beyond protocol version 1. Accepted from this release on, sent
    # from the next: the nodes in service before it refuse a five-field Hello, so a feature
    # can only be announced once no such node is left in a rolling upgrade (docs/wire.md).
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        F.check_int("protocol_version", self.protocol_version, 0, 0xFFFF)
        F.check_str("cluster_id", self.cluster_id, max_bytes=C.MAX_NAME_BYTES)
        F.check_str("peer", self.peer, max_bytes=C.MAX_NAME_BYTES)
        F.check_int("window", self.window, 0, C.MAX_WINDOW)
        features: object = self.features
        if type(features) is not tuple:  # msgpack gives a list
            if not isinstance(features, list):
                raise InvalidRequest("features: must be an array of strings")
            features = tuple(features)
            object.__setattr__(self, "features", features)
        if len(features) > C.MAX_FEATURES:
            raise InvalidRequest(f"features: more than {C.MAX_FEATURES}")
        for name in features:
            F.check_str("features", name, max_chars=C.MAX_CODE_CHARS, allow_empty=False)


def _truncated_text(text: str) -> str:
    raw = text.encode("utf-8", "replace")[: C.MAX_TEXT_BYTES]
    return raw.decode("utf-8", "ignore")


def _error_code(exc: BaseException) -> str:
    code = exc.code if isinstance(exc, HdsdError) else HdsdError.code
    return code[: C.MAX_CODE_CHARS] or HdsdError.code


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Connection-level error or close notice; the sender closes after it."""

    code: str
    message: str

    def __post_init__(self) -> None:
        F.check_str("code", self.code, max_chars=C.MAX_CODE_CHARS, allow_empty=False)
        F.check_str("message", self.message, max_bytes=C.MAX_TEXT_BYTES)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Goodbye:
        """The Goodbye that reports *exc* (its ``code`` if an HdsdError), text truncated."""
        return cls(_error_code(exc), _truncated_text(str(exc)))


@dataclass(frozen=True, slots=True)
class PutStart(Request[VersionInfo]):
    """Opens a put and its client→server body stream (Data… End). ``size`` is None when the
    client streams without knowing the length."""

    rid: int
    request_id: bytes
    bucket: str
    key: str
    size: int | None
    metadata: dict[str, str]
    # Reserved: checked, then ignored (the node's write policy applies to every put). Kept so
    # the frame's field count, hence compatibility with existing clients, does not change.
    policy: str | None
    # The client is sending this request id again (its earlier attempt's outcome is unknown):
    # the node then looks for that attempt on every replica of both sites, not only its own
    # site's, so a retry reaching the other site settles the first attempt instead of writing
    # a second version. Optional on the wire: a first attempt's frame is unchanged.
    retry: bool = False

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_request_id(self.request_id)
        F.check_bucket(self.bucket)
        F.check_key(self.key)
        F.check_optional_int("size", self.size, 0, C.MAX_U63)
        F.check_metadata(self.metadata)
        F.check_optional_str("policy", self.policy, max_chars=C.MAX_POLICY_CHARS, allow_empty=False)
        F.check_bool("retry", self.retry)


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Body bytes of the open stream of ``rid`` (either direction)."""

    rid: int
    data: bytes

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bytes("data", self.data)


@dataclass(frozen=True, slots=True)
class End(Message):
    """End of the body stream of ``rid``: put body complete, or all of a get's Data sent."""

    rid: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)


@dataclass(frozen=True, slots=True)
class Credit(Message):
    """The receiver of the body stream of ``rid`` grants its sender ``amount`` more bytes."""

    rid: int
    amount: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_int("amount", self.amount, 1, C.MAX_CREDIT_GRANT)


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Abandons ``rid``: sent by the client to abort a request, by the server as its final
    answer when it drops one."""

    rid: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)


@dataclass(frozen=True, slots=True)
class GetRequest(Request[GetInfo]):
    """Read a key (its current version, or ``version``), optionally the byte range
    ``[start, end)`` (``end`` exclusive; either bound may be None)."""

    rid: int
    bucket: str
    key: str
    version: str | None
    start: int | None
    end: int | None

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bucket(self.bucket)
        F.check_key(self.key)
        F.check_optional_str("version", self.version, max_bytes=C.MAX_VERSION_ID_BYTES,
                             allow_empty=False)
        F.check_optional_int("start", self.start, 0, C.MAX_U63)
        F.check_optional_int("end", self.end, 0, C.MAX_U63)
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidRequest(f"range: start {self.start} is after end {self.end}")


@dataclass(frozen=True, slots=True)
class GetMany(Request[GotMany]):
    """Read many versions in one request (a restore): ``items`` is a list of ``[bucket, key,
    version]`` (``version`` nil: the current one), 1 to :data:`MAX_GET_MANY` of them. Answered
    like a get: ``GetStart`` whose ``items`` say, per item served, its version and size (or
    why it was refused), then the served versions' bytes back to back as Data frames, then
    ``End``. The node may serve a prefix of the items (the client asks again for the rest).
    Each item is authorised and audited as a get of its own."""

    rid: int
    items: list[Any]
    # Answer each served item's SHA-256 (``"sha256"`` in its entry) instead of its bytes: no
    # body follows. What an export's first pass needs (its manifest comes before the
    # objects), without moving every byte twice. Optional on the wire (default false).
    sha256: bool = False

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bool("sha256", self.sha256)
        if type(self.items) is not list or not 1 <= len(self.items) <= C.MAX_GET_MANY:
            raise InvalidRequest(f"items: a list of 1 to {C.MAX_GET_MANY} items")
        for item in self.items:
            if type(item) is not list or len(item) != 3:
                raise InvalidRequest("items: each item must be [bucket, key, version]")
            F.check_bucket(item[0])
            F.check_key(item[1])
            F.check_optional_str("version", item[2], max_bytes=C.MAX_VERSION_ID_BYTES,
                                 allow_empty=False)


@dataclass(frozen=True, slots=True)
class GetStart(Message):
    """Reply header of a get, before its Data frames (``info``: version, size, metadata...)."""

    rid: int
    info: dict[str, Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_map("info", self.info)


@dataclass(frozen=True, slots=True)
class StatRequest(Request[VersionInfo]):
    rid: int
    bucket: str
    key: str
    version: str | None

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bucket(self.bucket)
        F.check_key(self.key)
        F.check_optional_str("version", self.version, max_bytes=C.MAX_VERSION_ID_BYTES,
                             allow_empty=False)


@dataclass(frozen=True, slots=True)
class ListRequest(Request[ListPage]):
    """Keys of ``bucket`` starting with ``prefix``, strictly after ``after`` ("" = from the
    start), at most ``limit`` and about 1 MiB of entries; every version of each key if
    ``versions``. Reply body ``{"entries": [...], "next": str | None}``: pass ``next`` back as
    ``after`` until it is None (a page may be short, even empty, before the end)."""

    rid: int
    bucket: str
    prefix: str
    after: str
    limit: int
    versions: bool

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bucket(self.bucket)
        F.check_key(self.prefix, "prefix", allow_empty=True)
        F.check_str("after", self.after, max_bytes=C.MAX_LIST_CURSOR_BYTES)
        F.check_int("limit", self.limit, 1, C.MAX_LIST_LIMIT)
        F.check_bool("versions", self.versions)


@dataclass(frozen=True, slots=True)
class DeleteRequest(Request[Deleted]):
    """Write a delete marker on a key; or, with ``version``, delete that one version (a
    version or a delete marker) for good: a purge."""

    rid: int
    request_id: bytes
    bucket: str
    key: str
    retry: bool = False  # as in PutStart
    version: str | None = None  # a version id: purge that version for good

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_request_id(self.request_id)
        F.check_bucket(self.bucket)
        F.check_key(self.key)
        F.check_bool("retry", self.retry)
        F.check_optional_str("version", self.version, max_bytes=C.MAX_VERSION_ID_BYTES,
                             allow_empty=False)


@dataclass(frozen=True, slots=True)
class VersionsRequest(Request[Versions]):
    rid: int
    bucket: str
    key: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_bucket(self.bucket)
        F.check_key(self.key)


@dataclass(frozen=True, slots=True)
class StatusRequest(Request[NodeStatus]):
    rid: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """Final success of a request (put, stat, list, delete, versions, status)."""

    rid: int
    body: dict[str, Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_map("body", self.body)


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Final failure of one request; the connection stays usable. ``code`` is an
    :class:`~hdsd.HdsdError` code (see :func:`hdsd._errors.error_class_for_code`)."""

    rid: int
    code: str
    message: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("code", self.code, max_chars=C.MAX_CODE_CHARS, allow_empty=False)
        F.check_str("message", self.message, max_bytes=C.MAX_TEXT_BYTES)

    @classmethod
    def from_exception(cls, rid: int, exc: BaseException) -> ErrorReply:
        """The ErrorReply that reports *exc* (its ``code`` if an HdsdError), text truncated."""
        return cls(rid, _error_code(exc), _truncated_text(str(exc)))


@dataclass(frozen=True, slots=True)
class ListBucketsRequest(Request[BucketsPage]):
    """The buckets holding at least one version (delete markers count) of the caller's tenant,
    merged across every node of the site, ascending, those after ``after`` ("" = from the
    start); Reply body ``{"tenant": str, "buckets": [str], "next": str | None}``: a page of at
    most about 1 MiB of names; pass ``next`` back as ``after`` until it is None."""

    rid: int
    after: str = ""

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("after", self.after, max_chars=C.MAX_BUCKET_CHARS, allow_empty=True)
