"""The trio floor (bench/trio_floor.py) does the work it claims: over TLS with client
certificates, a put is sealed (the plaintext never reaches a disk), stored on both nodes (the
same record at the start of each ring) and read back whole."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
KIB, MIB = 1 << 10, 1 << 20


@pytest.mark.e2e
def test_floor_put_is_sealed_replicated_and_read_back(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import sync_latency
    import trio_floor

    bodies = {f"k{i}": os.urandom(size) for i, size in enumerate((4 * KIB, 64 * KIB, MIB))}
    with ExitStack() as stack:
        cluster = sync_latency.Cluster(tmp_path / "cluster", 0.0, stack)
        floor = sync_latency.TrioFloor(tmp_path / "floor", cluster.root, sync_latency.QUICK,
                                       stack)

        async def run() -> dict[str, bytes]:
            got = {}
            with trio.fail_after(120):
                async with trio_floor.FloorClient(floor.port, floor.ctx) as client:
                    async with trio.open_nursery() as nursery:
                        for key, body in bodies.items():
                            nursery.start_soon(client.put, key, body)
                    for key in bodies:
                        got[key] = await client.get(key)
            return got

        assert trio.run(run) == bodies
        floor.check()
        rings = {role: (tmp_path / "floor" / f"{role}.ring").read_bytes()
                 for role in ("coordinator", "replica")}
        floor.stop()
    stored = sum(len(b) + 24 + 32 + 16 for b in bodies.values())  # nonce, id, tag
    assert rings["coordinator"][:stored] == rings["replica"][:stored]
    assert rings["coordinator"][:stored].count(0) < stored // 2  # records, not the zero fill
    for body in bodies.values():
        for ring in rings.values():
            assert body[:64] not in ring
