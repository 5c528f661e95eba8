"""msgpack with the options hdsd fixes once, for the log and the wire alike.

* ``use_bin_type=True`` / ``raw=False``: bytes stay bytes, str stays str.
* ``strict_map_key=False`` is *not* set: map keys must be str or bytes, as our records use.
* Unpacking is bounded: hostile input cannot allocate more than the frame that carries it, and
  ``ext`` types and timestamps are refused (we never emit them).
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

__all__ = ["PackError", "packb", "unpackb"]


class PackError(ValueError):
    """The bytes are not one well-formed msgpack object of the kinds hdsd uses."""


#: Each thread's packer. ``msgpack.packb`` builds a ``Packer`` per call (its options parsed,
#: a 256 KiB buffer allocated): 1.8 us for a small object against 0.8 us for a kept one; a
#: small get packs four times on its node (two reply frames, its version's names' associated
#: data, its audit record). One per thread: a packer is not shared while it packs.
_packers = threading.local()

#: A packer whose buffer grew past this for one object is dropped after it (the next pack in
#: that thread makes a new one): a thread keeps at most about this much.
_KEEP_BUFFER = 256 << 10


def packb(obj: Any) -> bytes:
    """Serialise *obj* (None, bool, int, float, str, bytes, list, tuple, dict)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, datetime=False,
                                                  buf_size=16 << 10)
    out: bytes = packer.pack(obj)  # resets its buffer after each object, or a failed one
    if len(out) > _KEEP_BUFFER:
        del _packers.packer
    return out


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
