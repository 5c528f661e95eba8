"""The node-wide body budget on real processes: many concurrent 1 MiB puts and gets at both
sites of an each-site cluster, with a budget of a few MiB, all succeed, and each node's peak of
body bytes in flight (its own count, in status) stays within the budget while requests did
wait for it; a body larger than the whole budget goes through alone; one connection
multiplexing many puts never waits for good."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hdsd
from tests.helpers.cluster import NodeProcess, init_cluster

pytestmark = pytest.mark.e2e

MiB = 1 << 20
BUDGET_MIB = 6  # peers' share: a quarter (1.5 MiB, one replicated 1 MiB chunk); clients 4.5
CLIENTS = 12  # per site
PUTS = 3  # each


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cluster")
    init_cluster(root)
    for config in root.glob("*/node.toml"):
        config.write_text(config.read_text().replace(
            "[tls]", f"[limits]\nmax_body_mib_in_flight = {BUDGET_MIB}\n\n[tls]", 1))
    dc2 = NodeProcess(root / "dc2-n1" / "node.toml").start()
    dc1 = NodeProcess(root / "dc1-n1" / "node.toml").start()
    try:
        yield root
    finally:
        dc1.kill()
        dc2.kill()


def _body(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def _budget(profile: Path, site: str) -> dict[str, Any]:
    async with hdsd.AsyncClient(profile, site=site) as c:
        status = await c.status()
    budget: dict[str, Any] = status["limits"]["body_budget"]
    return budget


async def _many(profile: Path, op: str) -> None:
    async def client(n: int) -> None:
        site = "dc1" if n % 2 == 0 else "dc2"
        async with hdsd.AsyncClient(profile, site=site) as c:
            for i in range(PUTS):
                key = f"c{n}/{i}"
                if op == "put":
                    await c.put("budget", key, _body(key, MiB))
                else:
                    assert await c.get("budget", key) == _body(key, MiB)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for n in range(2 * CLIENTS):
                nursery.start_soon(client, n)


def test_concurrent_puts_and_gets_stay_within_the_budget(cluster_dir: Path) -> None:
    profile = cluster_dir / "client.toml"

    async def main() -> None:
        await _many(profile, "put")
        after_puts = {s: await _budget(profile, s) for s in ("dc1", "dc2")}
        await _many(profile, "get")
        after_gets = {s: await _budget(profile, s) for s in ("dc1", "dc2")}
        print(f"\n[{2 * CLIENTS} clients x {PUTS} puts then gets of 1 MiB, budget "
              f"{BUDGET_MIB} MiB] {after_gets}")
        for site in ("dc1", "dc2"):
            b, p = after_gets[site], after_puts[site]
            assert b["capacity"] == BUDGET_MIB * MiB
            # The node's peak of body bytes in flight: within the budget, and it bound (12
            # clients of 1 MiB against 4.5 MiB): puts and then gets waited for room ...
            assert 0 < b["peak"] <= BUDGET_MIB * MiB, b
            assert p["waited"] > 0 and b["waited"] > p["waited"], (p, b)
            # ... none went over it, and every grant was given back.
            assert b["over"] == 0 and b["in_use"] == 0 and b["waiting"] == 0, b

    trio.run(main)


def test_a_body_larger_than_the_budget_goes_through(cluster_dir: Path) -> None:
    profile = cluster_dir / "client.toml"
    big = _body("big", 3 * BUDGET_MIB * MiB)

    async def main() -> None:
        async def small(n: int) -> None:
            async with hdsd.AsyncClient(profile) as c:
                for i in range(4):
                    await c.put("budget", f"small{n}/{i}", _body(f"s{n}{i}", 256 << 10))

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(small, n)
                async with hdsd.AsyncClient(profile) as c:
                    await c.put("budget", "big", big)
                    assert await c.get("budget", "big") == big
        b = await _budget(profile, "dc1")
        assert b["in_use"] == 0 and b["over"] == 0, b

    trio.run(main)


def test_many_requests_on_one_connection_never_wait_for_good(cluster_dir: Path) -> None:
    """One client multiplexing 16 puts of 1 MiB on its one connection, against a budget of
    4.5 MiB for clients: a put that waits for room stops the node reading that connection, and
    the frames behind it may be what the connection's other puts wait for — so such a put waits
    a second at most, then goes on over the budget (counted). All succeed, none is refused."""
    profile = cluster_dir / "client.toml"

    async def main() -> None:
        before = await _budget(profile, "dc1")
        async with hdsd.AsyncClient(profile, site="dc1") as c:
            async def put(i: int) -> None:
                await c.put("budget", f"mux/{i}", _body(f"mux/{i}", MiB))

            with trio.fail_after(600):
                async with trio.open_nursery() as nursery:
                    for i in range(16):
                        nursery.start_soon(put, i)
            for i in range(16):
                assert await c.get("budget", f"mux/{i}") == _body(f"mux/{i}", MiB)
        after = await _budget(profile, "dc1")
        print(f"\n[one connection, 16 puts of 1 MiB] {after} (before: {before})")
        assert after["in_use"] == 0 and after["waiting"] == 0, after
        assert after["waited"] > before["waited"], after  # the budget did bind

    trio.run(main)
