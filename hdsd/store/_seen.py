"""Which request ids this store may hold: a Bloom filter, so a first attempt (the usual put)
skips the index lookup.

Every put and delete asks the store for the version its request id already wrote
(``Store.find_request``). Almost always there is none, and the index lookup that says so cost
the event loop 30 us a put once the index had just been committed (SQLite re-reads its pages
after another connection's commit) — a per-request SQLite query for a question whose answer
is nearly always no.

The filter answers "certainly not" or "maybe" for (tenant, request id); only "maybe" goes to
the index, whose answer stands. It can never say "certainly not" for an id the store holds:

* it exists before the log writer accepts its first commit, and the writer adds every
  committed version's id to it before acknowledging the commit (``LogWriter._process``);
* everything indexed before it existed (all that recovery found) is added by a scan of the
  index in a background thread; until that scan is complete the filter is not *ready* and
  every lookup goes to the index, as it did without it.

Ids are never removed (a purged or shredded version's id stays "maybe": the index then says
no). Sized at open for twice the store's records (at least a million) at 16 bits each, 64 MiB
at most; a store that grows far beyond that gets more false "maybe"s (index lookups), never a
wrong answer, and is sized again at the next start. Adds take a lock (setting a bit is a
read-modify-write); lookups do not (a bit being set concurrently belongs to a commit not yet
acknowledged).
"""

from __future__ import annotations

import hashlib
import struct
import threading

__all__ = ["SeenRequests"]

# 16 bits and 4 probes per id: ~0.24 % false "maybe" at the planned size. Four probes are the
# four 64-bit words of one BLAKE2b digest, read at once (this is on every put's path).
_BITS_PER_ID = 16
_MIN_IDS = 1 << 20
# At most 64 MiB of bits (~33 M ids at 16 bits): a store of 100 M versions would otherwise take
# 400 MiB of RAM for a shortcut. Past the cap the filter says "maybe" more often (an index
# lookup, as without it: ~1 % at 50 M ids, ~15 % at 130 M), never a wrong "no".
_MAX_BITS = 1 << 29
_WORDS = struct.Struct("<4Q").unpack


def _probes(tenant: str, request_id: bytes) -> tuple[int, int, int, int]:
    t = tenant.encode("utf-8")
    return _WORDS(hashlib.blake2b(len(t).to_bytes(4, "big") + t + request_id).digest()[:32])


class SeenRequests:
    def __init__(self, expected: int) -> None:
        bits = min(_MAX_BITS, max(_MIN_IDS, 2 * expected) * _BITS_PER_ID)
        self._mask = (1 << (bits - 1).bit_length()) - 1  # a power of two: index by masking
        self._bits = bytearray((self._mask + 1) // 8)
        self._lock = threading.Lock()
        self.ready = False  # set once every id indexed before this filter existed is in it

    def add(self, tenant: str, request_id: bytes) -> None:
        bits, mask = self._bits, self._mask
        with self._lock:
            for h in _probes(tenant, request_id):
                at = h & mask
                bits[at >> 3] |= 1 << (at & 7)

    def may_hold(self, tenant: str, request_id: bytes) -> bool:
        """False only if no version with this id was committed here (when :attr:`ready`)."""
        if not self.ready:
            return True
        bits, mask = self._bits, self._mask
        a, b, c, d = _probes(tenant, request_id)
        a, b, c, d = a & mask, b & mask, c & mask, d & mask
        return bool(bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1
                    and bits[c >> 3] >> (c & 7) & 1 and bits[d >> 3] >> (d & 7) & 1)
