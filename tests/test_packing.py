"""``hdsd._packing``: the kept per-thread packer gives msgpack's own bytes, in any thread at
once, after a refused object, and for an object larger than the buffer a thread keeps."""

from __future__ import annotations

import threading

import msgpack
import pytest

from hdsd import _packing
from hdsd._packing import PackError, packb, unpackb

OBJECTS = [None, True, 1, -5, 2**63, 1.5, "é", b"x", [1, (2, 3)], {"a": {"b": [b"c"]}},
           {"k": "v", "n": [None, False]}]


def _reference(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def test_packb_gives_msgpacks_bytes() -> None:
    for obj in OBJECTS:
        assert packb(obj) == _reference(obj)
        assert unpackb(packb(obj)) == unpackb(_reference(obj))


def test_a_refused_object_leaves_nothing_for_the_next() -> None:
    with pytest.raises(TypeError):
        packb([1, object()])
    assert packb([1, 2]) == _reference([1, 2])


def test_an_object_over_the_kept_buffer_drops_the_packer() -> None:
    big = {"b": b"y" * (_packing._KEEP_BUFFER + 1)}
    packb(1)
    kept = _packing._packers.packer
    assert packb(big) == _reference(big)
    assert getattr(_packing._packers, "packer", None) is None  # the grown buffer goes with it
    assert packb([3]) == _reference([3])
    assert _packing._packers.packer is not kept


def test_each_thread_packs_with_its_own_packer() -> None:
    # A packer is not shared while it packs: the worker threads (sealing, the log writer,
    # the audit writer) pack while the event loop's thread does.
    packb(1)
    mine = _packing._packers.packer
    theirs: list[object] = []
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(500):
            obj = {"thread": n, "i": i, "body": bytes([n]) * (i % 300)}
            if packb(obj) != _reference(obj):
                errors.append(f"thread {n} object {i}")
        theirs.append(_packing._packers.packer)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(p) for p in [mine, *theirs]}) == 4


def test_unpackb_still_refuses_what_packb_never_makes() -> None:
    with pytest.raises(PackError):
        unpackb(msgpack.packb(msgpack.ExtType(1, b"x")))
