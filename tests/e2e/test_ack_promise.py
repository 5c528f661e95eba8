"""What an acknowledgement promises, tried as a user would, on real processes.

* A refusal stays a refusal: with the other site dead, a put is refused, and so is its retry
  with the same request id, even though the first attempt may have stored a version on one
  replica; the live RPO counts every such version. When the site returns, the RPO drains to 0
  by itself (no ``hdsd repair``) and every version that exists is in both sites; the retry
  then stores nothing new.
* A request id names one request: reused for another key, other content, another bucket or
  a delete, it is refused with ``request_id_conflict`` and nothing is written.
* A retry that reaches the other site completes the first attempt: the first stored its
  version in one site only (the link to the other was cut one way), the client retries the
  same request id at the other site, which finds it there, copies it and acknowledges it as a
  replay — one version, in both sites, not two.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hdsd
from tests.helpers.cluster import hdsd as cli
from tests.helpers.grid import SITES, Grid

pytestmark = pytest.mark.e2e

BUCKET = "promise"


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[Grid]:
    # 2 x 2 with one replica per site: the coordinator is a replica of some keys and not of
    # others (placement is by key), the two cases a refused write must both handle.
    g = Grid(tmp_path / "c", nodes_per_site=2, write_timeout_s=3)
    try:
        g.start()
        yield g
    finally:
        g.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Grid]:
    g = Grid(tmp_path / "p", nodes_per_site=1, write_timeout_s=3)
    try:
        g.start()
        yield g
    finally:
        g.close()


def _ls_versions(grid: Grid, site: str) -> set[tuple[str, str, str, bool]]:
    """``hdsd ls BUCKET --versions --json`` on *site*: (key, version, hash, deleted)."""
    deadline = time.monotonic() + 120
    while True:  # exit 6 (unavailable): a link to a restarted node is still coming back
        proc = cli("--profile", str(grid.profile_path), "--site", site, "ls", BUCKET,
                   "--versions", "--json")
        if proc.returncode != 6 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stderr.decode()
    out = set()
    for line in proc.stdout.decode().splitlines():
        e = json.loads(line)
        out.add((e["key"], e["version"], e["content_hash"], e["deleted"]))
    return out


def _rpo(grid: Grid, names: list[str] | None = None) -> dict[str, Any]:
    """The live RPO of every node (or of *names*), each node asked directly (a node just
    restarted may not answer: its error code, asked again at the next poll)."""
    out: dict[str, Any] = {}
    for name in names or list(grid.nodes):
        try:
            with hdsd.Client(grid.pinned(name), timeout=10, retries=0) as c:
                out[name] = c.status()["rpo"]
        except hdsd.HdsdError as exc:
            out[name] = exc.code
    return out


def _rpo_zero(rpo: Any) -> bool:
    """Zero versions missing, and (where the node says) nothing in doubt either."""
    return isinstance(rpo, dict) and rpo["versions"] == 0 and bool(rpo.get("zero", True))


def test_a_retried_refusal_is_never_an_ack_and_the_rpo_drains_by_itself(grid: Grid) -> None:
    grid.kill(*grid.sites["dc2"])
    blobs = {f"k{i:02d}": os.urandom(100) for i in range(16)}
    rids = {key: os.urandom(16) for key in blobs}
    acked: list[str] = []
    with hdsd.Client(grid.profile, site="dc1", retries=0, timeout=30) as once, \
            hdsd.Client(grid.profile, site="dc1", retries=3, timeout=30) as retrying:
        for key, data in blobs.items():
            with pytest.raises(hdsd.Unavailable):  # QuorumNotReached, or unreachable
                once.put(BUCKET, key, data, request_id=rids[key])
            try:  # the same request again, with the client's own retries, as users do
                info = retrying.put(BUCKET, key, data, request_id=rids[key])
            except hdsd.Unavailable:
                continue
            acked.append(f"{key} {info.version} replayed={info.replayed}")
    assert not acked, f"retries of refused puts were acknowledged with dc2 dead: {acked}"
    # A refused put may have left its version on a dc1 replica: each such version is missing
    # from dc2, so the live RPO counts it (each at least once over the nodes of dc1).
    alone = _ls_versions(grid, "dc1")
    rpo = _rpo(grid, grid.sites["dc1"])
    counted = sum(v["versions"] for v in rpo.values() if isinstance(v, dict))
    assert counted >= len(alone), (f"the live RPO of dc1 counts {counted} versions ({rpo}) while "
                                   f"{len(alone)} exist in dc1 only: {sorted(alone)}")

    grid.start(*grid.sites["dc2"])
    # No `hdsd repair`: hint replay and reconciliation on reconnect must drain it.
    deadline = time.monotonic() + 120
    while True:
        rpo = _rpo(grid)
        if all(_rpo_zero(v) for v in rpo.values()):
            break
        assert time.monotonic() < deadline, f"no live RPO 0 on every node after 120 s: {rpo}"
        time.sleep(0.25)
    listed = {site: _ls_versions(grid, site) for site in SITES}
    assert listed["dc1"] == listed["dc2"], (
        f"RPO 0, yet only in dc1: {sorted(listed['dc1'] - listed['dc2'])}, "
        f"only in dc2: {sorted(listed['dc2'] - listed['dc1'])}")
    per_key = Counter(key for key, *_ in listed["dc1"])
    assert set(per_key) <= set(blobs)
    assert all(n == 1 for n in per_key.values()), f"retries stored second versions: {listed}"

    # The user's retry now succeeds, without a second version of a request already stored.
    with hdsd.Client(grid.profile, site="dc1", timeout=30) as c:
        for key, data in blobs.items():
            deadline = time.monotonic() + 60
            while True:  # links to the restarted site come back with backoff
                try:
                    info = c.put(BUCKET, key, data, request_id=rids[key])
                    break
                except hdsd.Unavailable:
                    assert time.monotonic() < deadline, key
                    time.sleep(0.5)
            assert [v.version for v in c.versions(BUCKET, key)] == [info.version]
    grid.kill(*grid.sites["dc1"])  # dc2 alone holds every acknowledged put
    with hdsd.Client(grid.profile, site="dc2", timeout=30) as c:
        for key, data in blobs.items():
            assert c.get(BUCKET, key) == data


def _conflict_error() -> type[hdsd.HdsdError]:
    cls = getattr(hdsd, "RequestIdConflict", None)
    assert cls is not None, "hdsd.RequestIdConflict (code request_id_conflict) does not exist"
    assert cls.code == "request_id_conflict"
    return cls  # type: ignore[no-any-return]


def test_a_request_id_reused_for_another_request_is_refused(profile: Path) -> None:
    conflict = _conflict_error()
    rid = os.urandom(16)
    with hdsd.Client(profile, timeout=30) as c:
        first = c.put(BUCKET, "a", b"first content", request_id=rid)
        # The same request again is a replay: the same version, nothing new.
        again = c.put(BUCKET, "a", b"first content", request_id=rid)
        assert again.version == first.version
        with pytest.raises(conflict):
            c.put(BUCKET, "b", b"first content", request_id=rid)  # another key
        with pytest.raises(conflict):
            c.put(BUCKET, "a", b"other content", request_id=rid)  # other content
        with pytest.raises(conflict):
            c.put(BUCKET + "-2", "a", b"first content", request_id=rid)  # another bucket
        with pytest.raises(conflict):
            c.delete(BUCKET, "a", request_id=rid)  # another operation
        # Nothing was written by the refused requests.
        with pytest.raises(hdsd.NotFound):
            c.get(BUCKET, "b")
        with pytest.raises(hdsd.NotFound):
            c.get(BUCKET + "-2", "a")
        assert [v.version for v in c.versions(BUCKET, "a")] == [first.version]
        assert c.get(BUCKET, "a") == b"first content"

        # A delete's request id is bound to that delete.
        drid = os.urandom(16)
        marker = c.delete(BUCKET, "a", request_id=drid)
        assert c.delete(BUCKET, "a", request_id=drid).version == marker.version
        with pytest.raises(conflict):
            c.put(BUCKET, "a", b"resurrected", request_id=drid)
        assert [v.version for v in c.versions(BUCKET, "a")] == [first.version, marker.version]

    # The CLI says so in one line, with a non-zero exit.
    proc = cli("--profile", str(profile), "put", f"{BUCKET}/c", "-", "--request-id", rid.hex(),
               input=b"cli content")
    err = proc.stderr.decode()
    assert proc.returncode not in (0, 1), (proc.returncode, err)
    assert err.startswith("hdsd: error:") and err.count("\n") == 1 and "request id" in err, err
    with hdsd.Client(profile, timeout=30) as c, pytest.raises(hdsd.NotFound):
        c.get(BUCKET, "c")


def test_a_retry_at_the_other_site_settles_the_first_attempt(pair: Grid) -> None:
    data = os.urandom(3000)
    put_id, delete_id = os.urandom(16), os.urandom(16)
    # dc1 can no longer reach dc2 (its link is cut), while dc2 still reaches dc1: dc1's
    # writes are stored in dc1 and refused; dc2 can still look at dc1.
    pair.link("blackhole", toward="dc2")
    with hdsd.Client(pair.profile, site="dc1", retries=0, timeout=30) as c:
        with pytest.raises(hdsd.Unavailable):
            c.put(BUCKET, "scan", data, request_id=put_id)
    with hdsd.Client(pair.profile, site="dc2", retries=0, timeout=30) as c:
        info = c.put(BUCKET, "scan", data, request_id=put_id, retry=True)
        assert info.replayed, "the retry at dc2 wrote a second version of the request"
        assert [v.version for v in c.versions(BUCKET, "scan")] == [info.version]
    with hdsd.Client(pair.profile, site="dc1", retries=0, timeout=30) as c:
        with pytest.raises(hdsd.Unavailable):
            c.delete(BUCKET, "scan", request_id=delete_id)
    with hdsd.Client(pair.profile, site="dc2", retries=0, timeout=30) as c:
        marker = c.delete(BUCKET, "scan", request_id=delete_id, retry=True)
        assert marker.replayed, "the delete's retry at dc2 wrote a second delete marker"
    pair.link("heal")
    # Each site alone now holds exactly the put's version and the delete's marker.
    pair.kill("dc1-n1")
    assert {(v, d) for _, v, _, d in _ls_versions(pair, "dc2")} == {
        (info.version, False), (marker.version, True)}
    pair.start("dc1-n1")
    pair.kill("dc2-n1")
    assert {(v, d) for _, v, _, d in _ls_versions(pair, "dc1")} == {
        (info.version, False), (marker.version, True)}
