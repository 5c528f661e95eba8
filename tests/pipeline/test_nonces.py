"""Nonces cut from a buffer of kernel randomness: never the same bytes twice — across refills,
threads, and a fork (the child must not hand out the parent's next nonces)."""

from __future__ import annotations

import os
import threading

from hdsd.pipeline._nonces import random_bytes


def test_nonces_never_repeat_across_refills() -> None:
    nonces = [random_bytes(24) for _ in range(2000)]  # ~12 refills of the 4 KiB buffer
    assert all(len(n) == 24 for n in nonces)
    assert len(set(nonces)) == len(nonces)
    assert len(random_bytes(10_000)) == 10_000  # larger than a refill: still served whole


def test_threads_draw_from_their_own_buffers() -> None:
    drawn: list[bytes] = []

    def draw() -> None:
        drawn.extend(random_bytes(24) for _ in range(300))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(drawn)) == len(drawn) == 1200


def test_a_forked_child_does_not_repeat_the_parents_nonces() -> None:
    random_bytes(24)  # the parent's buffer holds its next nonces now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next nonce, then leave without cleanup
        os.write(write, random_bytes(24))
        os._exit(0)
    os.close(write)
    child = os.read(read, 24)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 24 and child != random_bytes(24)
