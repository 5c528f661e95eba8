"""Random nonces without a system call each.

Every seal needs a fresh random 24-byte XChaCha20 nonce: a chunk, a version's names, a
request's audit names — three ``getrandom`` calls per small put, each a point where the trio
thread gives up the GIL and may wait to get it back behind the log writer. Nonces are cut in
order from a per-thread buffer of kernel randomness refilled 4 KiB at a time (one system call
per ~170 nonces). Nonces are public (stored beside the ciphertext): what matters is that none
repeats, which holds as each byte of the buffer is handed out once — per thread (no lock), and
a forked child starts with an empty buffer (it must not hand out its parent's next nonces).
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_bytes"]

_REFILL = 4096


class _Buffer(threading.local):
    data = b""
    pos = 0


_buffer = _Buffer()


def random_bytes(n: int) -> bytes:
    """*n* bytes of kernel randomness, never handed out twice in this process."""
    buf = _buffer
    pos = buf.pos
    if pos + n > len(buf.data):
        buf.data, pos = os.urandom(max(_REFILL, n)), 0
    buf.pos = pos + n
    return buf.data[pos:pos + n]


def _forget() -> None:
    _buffer.data, _buffer.pos = b"", 0


os.register_at_fork(after_in_child=_forget)
