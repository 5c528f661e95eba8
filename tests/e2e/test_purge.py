"""Purging one version on real processes (two sites, one node each): gone at both sites,
applied once per request id, refused under retention or a legal hold, its data reclaimed by
compaction; and a site that was down during the purge does not bring the version back —
neither through the hints nor, with the hints lost, through anti-entropy."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hdsd
from tests.helpers.cluster import Cluster
from tests.helpers.cluster import hdsd as cli

pytestmark = pytest.mark.e2e

BUCKET = "p"
CHUNK = 1 << 20


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c", 1)
    for config in (tmp_path / "c").glob("*/node.toml"):  # reclaim at the next compaction
        text = config.read_text()
        if re.search(r"^\[repair\]", text, flags=re.M):
            text = re.sub(r"^\[repair\]\n", "[repair]\npurge_grace_h = 0\n", text, flags=re.M)
        else:
            text += "\n[repair]\npurge_grace_h = 0\n"
        config.write_text(text)
    c.start()
    try:
        yield c
    finally:
        c.kill()


def _cli(profile: Path, *args: str) -> tuple[int, str, str]:
    proc = cli("--profile", str(profile), *args)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _ok(profile: Path, *args: str) -> Any:
    code, out, err = _cli(profile, *args)
    assert code == 0, err + out
    return json.loads(out) if "--json" in args else out


def _versions(profile: Path, site: str, key: str) -> list[str]:
    """The versions of *key* at *site* (its only node: what that node's store holds)."""
    with hdsd.Client(profile, site=site) as c:
        try:
            return [v.version for v in c.versions(BUCKET, key)]
        except hdsd.NotFound:
            return []


def _chunk_rows(node_dir: Path) -> int:
    db = sqlite3.connect(f"file:{node_dir / 'data' / 'store' / 'index.sqlite3'}?mode=ro",
                         uri=True)
    try:
        (n,) = db.execute("SELECT count(*) FROM chunks").fetchone()
        return int(n)
    finally:
        db.close()


def _settled_chunk_rows(node_dir: Path) -> int:
    """The chunk rows once the index stopped moving: a node indexes an acknowledged write a
    moment after the acknowledgement (its reply goes out first), so a count read right after
    the puts can be one write short."""
    last, deadline = _chunk_rows(node_dir), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _chunk_rows(node_dir)
        if now == last:
            return now
        last = now
    return last


def test_a_purge_is_gone_at_both_sites_applied_once_and_reclaimed(cluster: Cluster) -> None:
    profile = cluster.profile
    big = os.urandom(3 * CHUNK)  # three chunks, incompressible
    with hdsd.Client(profile, site="dc1") as c:
        v1 = c.put(BUCKET, "k", big).version
        v2 = c.put(BUCKET, "k", b"second").version
        for i in range(3):  # seal the segment holding v1: compaction rewrites sealed ones
            c.put(BUCKET, f"fill{i}", os.urandom(3 * CHUNK))
    dirs = {n: node.config.parent for n, node in cluster.nodes.items()}
    chunks_before = {n: _settled_chunk_rows(d) for n, d in dirs.items()}

    rid = os.urandom(16)
    with hdsd.Client(profile, site="dc1") as c:
        info = c.delete(BUCKET, "k", version=v1, request_id=rid)
        assert info.version == v1 and info.size == len(big) and not info.replayed
        again = c.delete(BUCKET, "k", version=v1, request_id=rid)  # a retry: applied once
        assert again.version == v1 and again.replayed
        with pytest.raises(hdsd.RequestIdConflict):  # the id names that purge, not another
            c.delete(BUCKET, "k", version=v2, request_id=rid)
        with pytest.raises(hdsd.RequestIdConflict):
            c.delete(BUCKET, "k", request_id=rid)
    for site in ("dc1", "dc2"):
        assert _versions(profile, site, "k") == [v2]
        with hdsd.Client(profile, site=site) as c:
            with pytest.raises(hdsd.NotFound):
                c.get(BUCKET, "k", version=v1)
            assert c.get(BUCKET, "k") == b"second"
            listed = c.list(BUCKET, prefix="k", versions=True).entries
            assert [e.version for e in listed] == [v2]

    # The CLI: a version already purged is not found (one line, exit 3); the last version
    # purged leaves no trace of the key.
    code, out, err = _cli(profile, "rm", f"{BUCKET}/k", "--version-id", v1)
    assert code == 3 and "not found" in err and "Traceback" not in err + out
    done = _ok(profile, "rm", f"{BUCKET}/k", "--version-id", v2, "--json")
    assert done["version"] == v2 and not done["deleted"]
    code, _, err = _cli(profile, "rm", f"{BUCKET}/k", "--version-id", "nonsense")
    assert code == 2 and "Traceback" not in err
    for site in ("dc1", "dc2"):
        assert _versions(profile, site, "k") == []

    # Compaction reclaims the purged version's chunks on both nodes.
    reports = {r["node"]: r for r in _ok(profile, "compact", "--wait", "--json")}
    for name, d in dirs.items():
        assert reports[name]["chunks_released"] == 3, reports[name]
        assert reports[name]["segments_removed"] >= 1, reports[name]
        assert _chunk_rows(d) == chunks_before[name] - 3
    with hdsd.Client(profile, site="dc2") as c:
        for i in range(3):
            assert len(c.get(BUCKET, f"fill{i}")) == 3 * CHUNK  # live data untouched


def test_a_purge_is_refused_under_retention_or_a_legal_hold(cluster: Cluster) -> None:
    profile = cluster.profile
    _ok(profile, "bucket", "create", "default/locked", "--retention-days", "30")
    with hdsd.Client(profile, site="dc1") as c:
        kept = c.put("locked", "scan", b"retained").version
        held = c.put(BUCKET, "evidence", b"held").version
        marker = c.delete(BUCKET, "evidence").version
    code, out, err = _cli(profile, "rm", "locked/scan", "--version-id", kept)
    assert code == 4 and "retained" in err and "Traceback" not in err + out
    _ok(profile, "hold", "set", f"default/{BUCKET}/evidence")
    for version in (held, marker):  # a delete marker is protected by the hold too
        code, _, err = _cli(profile, "--site", "dc2", "rm", f"{BUCKET}/evidence",
                            "--version-id", version)
        assert code == 4 and "legal hold" in err
    with hdsd.Client(profile, site="dc2") as c:
        assert c.get("locked", "scan", version=kept) == b"retained"
        assert [v.version for v in c.versions(BUCKET, "evidence")] == [held, marker]
    _ok(profile, "hold", "clear", f"default/{BUCKET}/evidence")
    purged = _ok(profile, "rm", f"{BUCKET}/evidence", "--version-id", marker, "--json")
    assert purged["deleted"]  # it was the delete marker: the held version is current again
    with hdsd.Client(profile, site="dc2") as c:
        assert c.get(BUCKET, "evidence") == b"held"
    # Every request is audited: the refused purge and the purge name the version targeted.
    data_dir = cluster.nodes["dc1-n1"].config.parent / "data"

    def audited() -> set[tuple[str, str, str]]:
        _, out, _ = _cli(profile, "audit", "export", "--data-dir", str(data_dir),
                            "--tenant", "default")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {(r["op"], r["version"], r["outcome"]) for r in rows}
    _wait(lambda: {("DeleteRequest", kept, "retention_locked"),
                   ("DeleteRequest", marker, "ok")} <= audited(), "the purges' audit records")


def _wait(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_a_site_down_during_the_purge_does_not_bring_the_version_back(
        cluster: Cluster) -> None:
    profile = cluster.profile
    dc1, dc2 = cluster.nodes["dc1-n1"], cluster.nodes["dc2-n1"]
    with hdsd.Client(profile, site="dc1") as c:
        a1 = c.put(BUCKET, "a", os.urandom(CHUNK + 5)).version
        a2 = c.put(BUCKET, "a", b"a2").version
        b1 = c.put(BUCKET, "b", os.urandom(CHUNK + 7)).version
        b2 = c.put(BUCKET, "b", b"b2").version
    assert _versions(profile, "dc2", "a") == [a1, a2]
    assert _versions(profile, "dc2", "b") == [b1, b2]

    # 1. dc2 down: under each-site the purge is not acknowledged. Like a put's, the failed
    #    attempt may be durable at dc1 already (an ambiguous failure): retried with its
    #    request id it is completed, never applied twice.
    dc2.stop()
    rid = os.urandom(16)
    with hdsd.Client(profile, site="dc1", retries=0, timeout=30) as c:
        with pytest.raises(hdsd.QuorumNotReached):
            c.delete(BUCKET, "a", version=a1, request_id=rid)
    # 2. dc1 degraded (the operator's choice): the retry is acknowledged with a hint for
    #    dc2, which gets it when it returns; its copy of the version goes.
    _ok(profile, "site", "degrade", "dc1", "--reason", "dc2 down")
    with hdsd.Client(profile, site="dc1") as c:
        assert c.delete(BUCKET, "a", version=a1, request_id=rid).replayed
    assert _versions(profile, "dc1", "a") == [a2]
    dc2.start()
    _ok(profile, "site", "restore", "dc1")
    _wait(lambda: _versions(profile, "dc2", "a") == [a2], "the purge's hint reached dc2")

    # 3. The same with the hints lost (the partition outlasted them): only anti-entropy can
    #    carry the purge, and it must not carry the version back to dc1 instead.
    dc2.stop()
    _ok(profile, "site", "degrade", "dc1", "--reason", "dc2 down again")
    with hdsd.Client(profile, site="dc1") as c:
        c.delete(BUCKET, "b", version=b1)
    dc1.stop()
    (dc1.config.parent / "data" / "hints.sqlite").unlink()
    dc1.start()
    dc2.start()
    # (Restored, dc1 starts a reconciliation round by itself; the operator's repair below
    # makes sure one ran.)
    _ok(profile, "site", "restore", "dc1")
    results = _ok(profile, "repair", "--wait", "--json")
    rounds = [p for r in results for p in r.get("peers", [])]
    assert rounds and all(p["error"] is None for p in rounds), rounds
    for site in ("dc1", "dc2"):
        assert _versions(profile, site, "b") == [b2]
        assert _versions(profile, site, "a") == [a2]
        with hdsd.Client(profile, site=site) as c:
            with pytest.raises(hdsd.NotFound):
                c.get(BUCKET, "b", version=b1)
    again = [p for r in _ok(profile, "repair", "--wait", "--json") for p in r.get("peers", [])]
    assert all(p["versions_received"] == 0 and p["versions_sent"] == 0 for p in again), again
