"""Listings as real processes: pages bounded by bytes whatever the key and metadata sizes,
after a degraded-mode outage, and from a site with one node down."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hdsd
from tests.helpers.cluster import Cluster
from tests.helpers.cluster import hdsd as cli

pytestmark = pytest.mark.e2e

KEY_BYTES = 1024
META_BYTES = 8 * 1024


@pytest.fixture
def two_by_two(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "c", 2, replicas_per_site=1).start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def two_by_two_r2(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "c", 2, replicas_per_site=2).start()
    try:
        yield cluster
    finally:
        cluster.kill()


def _big_key(i: int) -> str:
    head = f"big/{i:05d}/"
    return head + "k" * (KEY_BYTES - len(head))


def _big_meta(i: int) -> dict[str, str]:
    # Eight entries of ~1 KiB: keys and values together exactly the 8 KiB limit.
    meta = {f"m{j}": chr(ord("a") + j) * 1022 for j in range(8)}
    meta["m0"] = f"{i:05d}" + "a" * (1022 - 5)
    assert sum(len(k) + len(v) for k, v in meta.items()) == META_BYTES
    return meta


async def _put_all(profile: Path, site: str, items: dict[str, bytes],
                   meta: dict[str, dict[str, str]] | None = None, bucket: str = "lst") -> None:
    async with hdsd.AsyncClient(profile, site=site, timeout=60) as c:
        send, receive = trio.open_memory_channel[str](0)

        async def worker() -> None:
            async for key in receive:
                await c.put(bucket, key, items[key],
                            metadata=(meta or {}).get(key))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(worker)
            async with send:
                for key in items:
                    await send.send(key)


def _ls_json(profile: Path, site: str, target: str, *extra: str) -> list[dict[str, Any]]:
    proc = cli("--profile", str(profile), "--site", site, "ls", target, "--json", *extra,
               timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_two_thousand_large_keys_with_large_metadata(two_by_two: Cluster) -> None:
    """2,000 keys of 1 KiB with 8 KiB of metadata each (~19 MiB of listing): every key listed
    exactly once with its metadata intact, from both sites, by the library and by `hdsd ls`."""
    n = 2000
    items = {_big_key(i): f"v{i}".encode() for i in range(n)}
    meta = {_big_key(i): _big_meta(i) for i in range(n)}
    trio.run(_put_all, two_by_two.profile, "dc1", items, meta)
    for site in ("dc1", "dc2"):
        with hdsd.Client(two_by_two.profile, site=site, timeout=60) as c:
            listed = []
            after, pages = "", 0
            while True:
                page = c.list("lst", "big/", after=after)
                listed.extend(page.entries)
                pages += 1
                if page.next is None:
                    break
                after = page.next
            assert [e.key for e in listed] == sorted(items)  # each once, in order
            assert all(e.metadata == meta[e.key] and e.size == len(items[e.key])
                       for e in listed)
            assert pages > 2000 * 9 * 1024 // (4 << 20)  # it did page by bytes
            versions = [e.key for e in c.list_all("lst", "big/", versions=True)]
            assert versions == sorted(items)
            assert c.list_buckets() == ["lst"]
        shown = _ls_json(two_by_two.profile, site, "lst/big/")
        assert [e["key"] for e in shown] == sorted(items)
        assert all(e["metadata"] == meta[e["key"]] for e in shown)
        assert len(_ls_json(two_by_two.profile, site, "lst", "--versions")) == n


def _wait_rpo_zero(profile: Path, site: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = cli("--profile", str(profile), "--site", site, "status", "--json")
        if proc.returncode == 0:
            st = json.loads(proc.stdout)
            if st["mode"]["mode"] == "normal" and st["rpo"]["versions"] == 0:
                return
        assert time.monotonic() < deadline, proc.stdout.decode() + proc.stderr.decode()
        time.sleep(0.5)


def test_degraded_writes_list_and_export_from_both_sites(two_by_two_r2: Cluster,
                                                         tmp_path: Path) -> None:
    """1,100 objects of 4 KiB (inline in their version records) written while dc2 was down;
    with two replicas per site every node holds them all. Listing from dc2 failed with a
    peer part over the frame limit; now both sites list them, and export from dc2 works."""
    cluster, profile = two_by_two_r2, two_by_two_r2.profile
    for name in ("dc2-n1", "dc2-n2"):
        cluster.nodes[name].kill()
    proc = cli("--profile", str(profile), "site", "degrade", "dc1", "--reason", "dc2 down")
    assert proc.returncode == 0, proc.stderr.decode()
    items = {f"deg/{i:05d}": os.urandom(4096) for i in range(1100)}
    trio.run(_put_all, profile, "dc1", items)
    for name in ("dc2-n1", "dc2-n2"):
        cluster.nodes[name].start()
    proc = cli("--profile", str(profile), "site", "restore", "dc1")
    assert proc.returncode == 0, proc.stderr.decode()
    _wait_rpo_zero(profile, "dc1")
    for site in ("dc1", "dc2"):
        with hdsd.Client(profile, site=site, timeout=60) as c:
            assert [e.key for e in c.list_all("lst", "deg/")] == sorted(items)
            assert [e.key for e in c.list_all("lst", "deg/", versions=True)] == sorted(items)
        assert len(_ls_json(profile, site, "lst/deg/")) == len(items)
    out = tmp_path / "export.tar"
    proc = cli("--profile", str(profile), "--site", "dc2", "export", "default", str(out),
               "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout.decode().splitlines()[-1])
    assert summary["keys"] == len(items) and summary["objects"] == len(items)
    # One node of dc1 down: with two replicas per site, the other one holds every key.
    cluster.nodes["dc1-n2"].kill()
    with hdsd.Client(profile, site="dc1", timeout=60) as c:
        assert [e.key for e in c.list_all("lst", "deg/")] == sorted(items)
        assert c.list_buckets() == ["lst"]
    assert len(_ls_json(profile, "dc1", "lst/deg/")) == len(items)


def test_one_node_down_with_one_replica_per_site_says_so(two_by_two: Cluster) -> None:
    items = {f"one/{i:03d}": b"x" * 10 for i in range(40)}
    trio.run(_put_all, two_by_two.profile, "dc1", items)
    two_by_two.nodes["dc1-n2"].kill()
    with hdsd.Client(two_by_two.profile, site="dc1", timeout=60, retries=0) as c:
        with pytest.raises(hdsd.Unavailable) as info:
            c.list("lst", "one/")
        assert "dc1-n2" in str(info.value) and "--site dc2" in str(info.value)
        with pytest.raises(hdsd.Unavailable) as info:
            c.list_buckets()
        assert "dc1-n2" in str(info.value)
    proc = cli("--profile", str(two_by_two.profile), "--site", "dc1", "ls", "lst/one/")
    assert proc.returncode == 6, proc.stderr.decode()
    message = proc.stderr.decode()
    assert message.count("\n") == 1 and "dc1-n2" in message and "--site dc2" in message
    # The other site has every key.
    assert [e["key"] for e in _ls_json(two_by_two.profile, "dc2", "lst/one/")] == sorted(items)
