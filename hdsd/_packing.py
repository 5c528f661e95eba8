"""msgpack with the options hdsd fixes once, for the log and the wire alike.

* ``use_bin_type=True`` / ``raw=False``: bytes stay bytes, str stays str.
* ``strict_map_key=False`` is *not* set: map keys must be str or bytes, as our records use.
* Unpacking is bounded: hostile input cannot allocate more than the frame that carries it, and
  ``ext`` types and timestamps are refused (we never emit them).
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["PackError", "packb", "unpackb"]


class PackError(ValueError):
    """The bytes are not one well-formed msgpack object of the kinds hdsd uses."""


def packb(obj: Any) -> bytes:
    """Serialise *obj* (None, bool, int, float, str, bytes, list, tuple, dict)."""
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def _no_ext(code: int, data: bytes) -> Any:
    raise PackError(f"msgpack ext type {code} is not used by hdsd")


def unpackb(data: bytes | memoryview) -> Any:
    """Parse exactly one msgpack object from *data*; raise :class:`PackError` on anything else."""
    n = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2 + 1,
        )
    except PackError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            RecursionError) as exc:
        raise PackError(f"malformed msgpack: {exc}") from None
