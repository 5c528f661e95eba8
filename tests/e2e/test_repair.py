"""Anti-entropy, scrub and rebuild on real processes (two sites, one node each).

Hints are what normally heal a partition; these tests delete them, so only anti-entropy can
make the sites converge.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hdsd
from hdsd.catalog import KEYRING_FILE, Keyring, load_master_key
from hdsd.pipeline import NameSeal
from hdsd.store._format import segment_name
from tests.e2e.test_replication import Cluster
from tests.helpers.cluster import hdsd as cli

pytestmark = pytest.mark.e2e

BUCKET = "ae"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c", 1).start()
    try:
        yield c
    finally:
        c.kill()


def _ok(*args: str) -> Any:
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return json.loads(proc.stdout) if "--json" in args else proc.stdout.decode()


def _all_versions(profile: Path, site: str) -> dict[tuple[str, str], tuple[str, bool]]:
    with hdsd.Client(profile, site=site) as c:
        out: dict[tuple[str, str], tuple[str, bool]] = {}
        after = ""
        while True:
            page = c.list(BUCKET, after=after, versions=True)
            for e in page.entries:
                out[(e.key, e.version)] = (e.content_hash, e.deleted)
            if page.next is None:
                return out
            after = page.next


def _alone(cluster: Cluster, site: str, ops: list[tuple[str, bytes | None]]
           ) -> dict[tuple[str, str], tuple[str, bool]]:
    """Run *ops* on *site* while the other site is down, then lose that site's hints.
    Returns what the site lists at the end."""
    node = cluster.nodes[f"{site}-n1"]
    node.start()
    _ok("--profile", str(cluster.profile), "--site", site, "site", "degrade", site,
        "--reason", "partition test")
    with hdsd.Client(cluster.profile, site=site) as c:
        for key, data in ops:
            if data is None:
                try:
                    c.delete(BUCKET, key)
                except hdsd.NotFound:
                    pass
            else:
                c.put(BUCKET, key, data)
    listed = _all_versions(cluster.profile, site)
    node.stop()
    # The partition outlasted every queue: without hints only anti-entropy can converge.
    (node.config.parent / "data" / "hints.sqlite").unlink()
    return listed


def _random_ops(rng: random.Random, keys: list[str], n: int) -> list[tuple[str, bytes | None]]:
    ops: list[tuple[str, bytes | None]] = []
    for _ in range(n):
        key = rng.choice(keys)
        if rng.random() < 0.3:
            ops.append((key, None))
        else:
            size = rng.choice([0, 1, 100, 5000, 70_000, (1 << 20) + 3])
            ops.append((key, rng.randbytes(size)))
    return ops


def _repair(profile: Path) -> list[dict[str, Any]]:
    results = _ok("--profile", str(profile), "repair", "--wait", "--json")
    assert isinstance(results, list)
    return results


def _rounds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for r in results for p in r.get("peers", [])]


def test_partitioned_sites_converge_by_repair_and_deleted_keys_stay_deleted(
        cluster: Cluster) -> None:
    profile = cluster.profile
    rng = random.Random(5)
    keys = [f"k{i:03d}" for i in range(60)]
    with hdsd.Client(profile, site="dc1") as c:
        for key in keys[:40]:
            c.put(BUCKET, key, rng.randbytes(rng.choice([10, 3000, 40_000])))
    cluster.nodes["dc1-n1"].stop()
    cluster.nodes["dc2-n1"].stop()
    before = {"dc1": _alone(cluster, "dc1", _random_ops(rng, keys, 40)),
              "dc2": _alone(cluster, "dc2", _random_ops(rng, keys, 40))}
    assert before["dc1"] != before["dc2"]
    cluster.start()
    for site in ("dc1", "dc2"):
        _ok("--profile", str(profile), "--site", site, "site", "restore", site)
    # Without hints, only anti-entropy converges the sites: the reconciliation round that a
    # restored site (and an unclean restart) starts by itself, or the operator's repair.
    rounds = _rounds(_repair(profile))
    assert len(rounds) == 1 and rounds[0]["error"] is None, rounds

    after = {site: _all_versions(profile, site) for site in ("dc1", "dc2")}
    assert after["dc1"] == after["dc2"]
    assert set(after["dc1"]) == set(before["dc1"]) | set(before["dc2"])  # union, nothing lost
    # Every key reads the same on both sides; a key whose newest version is a tombstone is
    # gone on both (the deletion was not undone by the older versions on the other side).
    newest: dict[str, tuple[str, bool]] = {}
    for (key, version), (_h, deleted) in sorted(after["dc1"].items()):
        newest[key] = (version, deleted)
    gone = [k for k, (_v, deleted) in newest.items() if deleted]
    assert gone
    with hdsd.Client(profile, site="dc1") as c1, hdsd.Client(profile, site="dc2") as c2:
        for key, (version, deleted) in newest.items():
            if deleted:
                for c in (c1, c2):
                    with pytest.raises(hdsd.NotFound):
                        c.get(BUCKET, key)
            else:
                assert c1.stat(BUCKET, key).version == version == c2.stat(BUCKET, key).version
                assert c1.get(BUCKET, key) == c2.get(BUCKET, key)

    # Identical replicas now: a second repair exchanges the root hashes and nothing else.
    again = _rounds(_repair(profile))
    assert again[0]["leaves_differing"] == 0
    assert again[0]["versions_received"] == again[0]["versions_sent"] == 0
    assert again[0]["bytes_sent"] + again[0]["bytes_received"] < 200, again


def _chunk_location(data_dir: Path, chunk_id: bytes | None = None) -> tuple[bytes, int, int, int]:
    db = sqlite3.connect(f"file:{data_dir / 'store' / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT chunk_id, segment, offset, length FROM chunks"
            + (" WHERE chunk_id = ?" if chunk_id else " ORDER BY length DESC LIMIT 1"),
            (chunk_id,) if chunk_id else ()).fetchone()
    finally:
        db.close()
    assert row is not None
    return bytes(row[0]), row[1], row[2], row[3]


def test_scrub_heals_a_flipped_byte_from_the_other_site(cluster: Cluster) -> None:
    profile = cluster.profile
    blob = os.urandom((1 << 20) + 12_345)  # two chunks, incompressible, not inline
    with hdsd.Client(profile, site="dc1") as c:
        c.put(BUCKET, "scan", blob)
    data_dir = cluster.nodes["dc1-n1"].config.parent / "data"
    chunk_id, segment, offset, length = _chunk_location(data_dir)
    seg_file = data_dir / "store" / segment_name(segment)
    with open(seg_file, "r+b") as f:  # bit rot in the middle of the sealed payload
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    with hdsd.Client(profile, site="dc1") as c:
        assert c.get(BUCKET, "scan") == blob  # served from the other site meanwhile

    results = _ok("--profile", str(profile), "scrub", "--wait", "--json")
    by_node = {r["node"]: r for r in results}
    assert by_node["dc1-n1"]["corrupt"] == 1 and by_node["dc1-n1"]["repaired"] == 1
    assert by_node["dc2-n1"]["corrupt"] == 0 and by_node["dc1-n1"]["unrepaired"] == 0
    _, seg2, off2, _ = _chunk_location(data_dir, chunk_id)
    assert (seg2, off2) != (segment, offset)  # the good copy was written anew and indexed
    with hdsd.Client(profile, site="dc1") as c:
        assert c.get(BUCKET, "scan") == blob
        status = c.status()
    assert status["last_scrub"]["repaired"] == 1
    clean = {r["node"]: r for r in _ok("--profile", str(profile), "scrub", "--wait", "--json")}
    assert clean["dc1-n1"]["corrupt"] == 0 and clean["dc1-n1"]["chunks_checked"] >= 2


def test_a_node_with_an_emptied_store_rebuilds_from_the_other_site(cluster: Cluster) -> None:
    profile = cluster.profile
    rng = random.Random(9)
    written = {f"r{i}": rng.randbytes(rng.choice([0, 50, 20_000, (1 << 20) + 1]))
               for i in range(30)}
    with hdsd.Client(profile, site="dc1") as c:
        for key, data in written.items():
            c.put(BUCKET, key, data)
        c.delete(BUCKET, "r0")
    expected = _all_versions(profile, "dc1")
    node = cluster.nodes["dc2-n1"]
    node.stop()
    data_dir = node.config.parent / "data"
    shutil.rmtree(data_dir / "store")  # a replaced disk: same identity, keys and config
    for name in ("hints.sqlite", "merkle-trees.bin"):
        (data_dir / name).unlink(missing_ok=True)
    node.start()
    with hdsd.Client(profile, site="dc2") as c:  # served at once, by forwarding if needed
        assert c.get(BUCKET, "r5") == written["r5"]
    deadline = time.monotonic() + 120
    while True:
        with hdsd.Client(profile, site="dc2") as c:
            rebuild = c.status()["rebuild"]
        assert rebuild is not None
        if rebuild["state"] == "done":
            break
        assert time.monotonic() < deadline, rebuild
        time.sleep(0.2)
    assert rebuild["versions_received"] == len(expected)
    cluster.nodes["dc1-n1"].stop()  # dc2 now answers from its own disk only
    assert _all_versions(profile, "dc2") == expected
    with hdsd.Client(profile, site="dc2") as c:
        for key, data in written.items():
            if key == "r0":
                with pytest.raises(hdsd.NotFound):
                    c.get(BUCKET, key)
            else:
                assert c.get(BUCKET, key) == data


def test_a_damaged_log_range_found_at_start_is_set_aside_and_refetched(
        cluster: Cluster) -> None:
    profile = cluster.profile
    written = {f"d{i}": os.urandom(5000 + i) for i in range(20)}
    with hdsd.Client(profile, site="dc1") as c:
        for key, data in written.items():
            c.put(BUCKET, key, data)
    node = cluster.nodes["dc2-n1"]
    node.stop()
    store_dir = node.config.parent / "data" / "store"
    # The index keys rows by keyed name ids (names are sealed): d3's, with the tenant's key.
    root = profile.parent
    keys = Keyring(root / "dc2-n1" / "data" / KEYRING_FILE,
                   load_master_key(root / "master.key")).get("default")
    assert keys is not None
    db = sqlite3.connect(f"file:{store_dir / 'index.sqlite3'}?mode=ro", uri=True)
    segment, offset = db.execute("SELECT segment, offset FROM versions WHERE nid = ?",
                                 (NameSeal(keys).name_id(BUCKET, "d3"),)).fetchone()
    db.close()
    with open(store_dir / segment_name(segment), "r+b") as f:  # rot inside d3's record
        f.seek(offset + 40)
        byte = f.read(1)
        f.seek(offset + 40)
        f.write(bytes([byte[0] ^ 0x01]))
    for p in store_dir.glob("index.sqlite3*"):  # so that recovery replays across the damage
        p.unlink()
    node.start()  # does not stay down: sets the range aside, rebuilds from dc1
    deadline = time.monotonic() + 120
    while True:
        with hdsd.Client(profile, site="dc2") as c:
            st = c.status()
        if st["rebuild"] and st["rebuild"]["state"] == "done" and \
                st["maintenance"]["scrub"]["runs_completed"] >= 1:
            break
        assert time.monotonic() < deadline, st["rebuild"]
        time.sleep(0.2)
    assert "set aside" in st["rebuild"]["reason"] and st["store"]["salvaged"]
    assert st["rebuild"]["versions_received"] >= 1
    assert list(store_dir.glob(f"{segment_name(segment)}.damaged-*"))
    assert "event=log_damage_set_aside" in node.log()
    cluster.nodes["dc1-n1"].stop()
    with hdsd.Client(profile, site="dc2") as c:
        for key, data in written.items():
            assert c.get(BUCKET, key) == data


def test_repair_right_after_a_restart_waits_for_the_links(cluster: Cluster) -> None:
    """A node restarted a moment ago: the other node's link to it is in its reconnect backoff
    (status asked it while it was down). `repair --wait` waits for the link: exit 0."""
    profile = cluster.profile
    with hdsd.Client(profile, site="dc1") as c:
        c.put(BUCKET, "before", b"x")
    cluster.nodes["dc2-n1"].kill()
    starting = threading.Event()

    def ask_status() -> None:
        # dc1-n1 tries to reach dc2-n1 for every status: its reconnect backoff grows to its
        # 2 s cap and the last failure falls just before dc2-n1 listens again.
        with hdsd.Client(profile, site="dc1") as c:
            while not starting.is_set():
                c.status()

    asker = threading.Thread(target=ask_status)
    asker.start()
    try:
        time.sleep(4)
        cluster.nodes["dc2-n1"].start()
    finally:
        starting.set()
        asker.join()
    results = _repair(profile)
    rounds = _rounds(results)
    assert [r["peer"] for r in rounds] == ["dc2-n1"] and rounds[0]["error"] is None, results


def test_repair_names_a_peer_that_stays_unreachable(cluster: Cluster) -> None:
    cluster.nodes["dc2-n1"].kill()
    proc = cli("--profile", str(cluster.profile), "repair", "--wait")
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "dc1-n1 ↔ dc2-n1: FAILED unavailable: peer dc2-n1 still unreachable after waiting" \
        in out, out
    assert "unreachable" in out and proc.stderr.decode().count("\n") == 1
