"""Field checks shared by the message constructors.

Each check raises :class:`~hdsd.InvalidRequest` naming the field, so a client building a bad
request learns which argument is wrong; the decoder turns the same error into a
:class:`~hdsd.ProtocolError` (a peer that sends a malformed message broke the protocol).
"""

from __future__ import annotations

from typing import Any

from .._errors import InvalidRequest
from . import _constants as C


def _fail(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {why}")


def check_int(field: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass: keep the two apart so a flag never passes for a size.
    if type(value) is not int:
        raise _fail(field, f"expected int, got {type(value).__name__}")
    if not low <= value <= high:
        raise _fail(field, f"{value} is outside [{low}, {high}]")


def check_optional_int(field: str, value: object, low: int, high: int) -> None:
    if value is not None:
        check_int(field, value, low, high)


def check_bool(field: str, value: object) -> None:
    if type(value) is not bool:
        raise _fail(field, f"expected bool, got {type(value).__name__}")


def check_rid(value: object) -> None:
    # Every message but two has a rid, checked on every frame built or read: a good one is
    # seen here, check_int (a call more) only words a refusal.
    if type(value) is not int or not 0 <= value <= C.MAX_RID:
        check_int("rid", value, 0, C.MAX_RID)


def utf8_len(field: str, value: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _fail(field, "not encodable as UTF-8 (lone surrogate)") from None


def check_str(
    field: str,
    value: object,
    *,
    max_chars: int | None = None,
    max_bytes: int | None = None,
    allow_empty: bool = True,
) -> None:
    if type(value) is not str:
        raise _fail(field, f"expected str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise _fail(field, "must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise _fail(field, f"longer than {max_chars} characters")
    n = utf8_len(field, value)
    if max_bytes is not None and n > max_bytes:
        raise _fail(field, f"longer than {max_bytes} UTF-8 bytes")


def check_optional_str(field: str, value: object, **limits: Any) -> None:
    if value is not None:
        check_str(field, value, **limits)


def check_bytes(field: str, value: object, *, exact: int | None = None) -> None:
    if type(value) is not bytes:
        raise _fail(field, f"expected bytes, got {type(value).__name__}")
    if exact is not None and len(value) != exact:
        raise _fail(field, f"must be exactly {exact} bytes, got {len(value)}")


def check_bucket(value: object) -> None:
    check_str("bucket", value, max_chars=C.MAX_BUCKET_CHARS, allow_empty=False)


def check_key(value: object, field: str = "key", *, allow_empty: bool = False) -> None:
    check_str(field, value, max_bytes=C.MAX_KEY_BYTES, allow_empty=allow_empty)


def check_request_id(value: object) -> None:
    check_bytes("request_id", value, exact=C.REQUEST_ID_SIZE)


def check_metadata(value: object) -> None:
    if type(value) is not dict:
        raise _fail("metadata", f"expected dict, got {type(value).__name__}")
    total = 0
    for k, v in value.items():
        check_str("metadata key", k, allow_empty=False)
        check_str(f"metadata[{k!r}]", v)
        total += utf8_len("metadata", k) + utf8_len("metadata", v)
    if total > C.MAX_METADATA_BYTES:
        raise _fail("metadata", f"{total} UTF-8 bytes in keys and values, over "
                                f"{C.MAX_METADATA_BYTES}")


def check_map(field: str, value: object) -> None:
    """A free-form map: str keys at the top level; contents bounded by the frame size only."""
    if type(value) is not dict:
        raise _fail(field, f"expected dict, got {type(value).__name__}")
    for k in value:
        if type(k) is not str:
            raise _fail(field, f"keys must be str, got {type(k).__name__}")
