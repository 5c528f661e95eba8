"""Tenant creations confirmed by both sites, on real processes whose inter-site link goes
through a fault proxy: concurrent creations of one name during a partition, writes refused
until confirmed, exactly one key set after the heal; abandon and create again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_link_faults import ProxiedCluster
from tests.helpers.cluster import hdsd

pytestmark = pytest.mark.e2e

T = 120  # seconds: generous bound around every step


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProxiedCluster]:
    c = ProxiedCluster(tmp_path / "c")
    for node in (c.dc1, c.dc2):  # a quick catalog sync: the heal is seen within a second
        text = node.config.read_text()
        node.config.write_text(text.replace("# catalog_sync_s = 5", "catalog_sync_s = 0.5"))
    c.dc2.start()
    c.dc1.start()
    try:
        yield c
    finally:
        c.close()


def _cli(profile: Path, *args: str, site: str = "dc1",
         input: bytes | None = None) -> tuple[int, str, str]:
    proc = hdsd("--profile", str(profile), "--site", site, *args, input=input, timeout=T)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _spawn(profile: Path, *args: str, site: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hdsd", "--profile", str(profile), "--site",
                             site, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _tenants(profile: Path, site: str) -> dict[str, dict[str, object]]:
    code, out, err = _cli(profile, "tenant", "ls", "--json", site=site)
    assert code == 0, err
    return {row["tenant"]: row for row in map(json.loads, out.splitlines())}


def _wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + T
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _writer(root: Path, tenant: str) -> Path:
    hdsd("cert", "issue", "--client", f"{tenant}-w", "--tenant", tenant, "--role", "writer",
         "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{tenant}-w.toml"


def test_concurrent_creations_in_a_partition_end_with_one_key_set(
        cluster: ProxiedCluster) -> None:
    op = cluster.profile
    root = op.parent
    cluster.link("reset")  # the sites cannot see each other
    creators = {site: _spawn(op, "tenant", "create", "chu", "--wait", str(T), site=site)
                for site in ("dc1", "dc2")}
    # each site stages its own creation of chu, and neither can confirm it
    _wait_for("a pending creation on each site", lambda: all(
        _tenants(op, s).get("chu", {}).get("state") == "pending" for s in ("dc1", "dc2")))
    ids = {s: _tenants(op, s)["chu"]["creation"] for s in ("dc1", "dc2")}
    assert ids["dc1"] != ids["dc2"]  # two key sets exist, one per site
    writer = _writer(root, "chu")
    for site in ("dc1", "dc2"):
        code, _, err = _cli(writer, "put", "scans/ct-1", "-", site=site, input=b"during")
        assert code == 12 and "not confirmed" in err and err.count("\n") == 1, (site, err)
        assert "hdsd tenant abandon chu" in err  # says what is pending and how to end it
    assert all(p.poll() is None for p in creators.values())  # waiting, not succeeded

    cluster.link("heal")
    results = {}
    for site, proc in creators.items():
        raw_out, raw_err = proc.communicate(timeout=T)
        results[site] = (proc.returncode, raw_out.decode(), raw_err.decode())
    winners = [s for s, (code, _, _) in results.items() if code == 0]
    losers = [s for s, (code, _, _) in results.items() if code != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    code, _, lost = results[losers[0]]
    assert code == 12 and "lost to" in lost and lost.count("\n") == 1, lost
    assert "tenant chu created" in results[winners[0]][1]

    # exactly one creation, the winner's, confirmed in both sites
    _wait_for("the confirmation in both sites", lambda: all(
        _tenants(op, s)["chu"]["state"] == "live" for s in ("dc1", "dc2")))
    assert {_tenants(op, s)["chu"]["creation"] for s in ("dc1", "dc2")} == {ids[winners[0]]}
    # writes work at both sites and read back at both
    for site in ("dc1", "dc2"):
        code, _, err = _cli(writer, "put", f"scans/{site}", "-", site=site,
                            input=f"written at {site}".encode())
        assert code == 0, err
    for site in ("dc1", "dc2"):
        for written in ("dc1", "dc2"):
            code, out, err = _cli(writer, "get", f"scans/{written}", site=site)
            assert code == 0 and out == f"written at {written}", (site, written, err)


def test_an_unconfirmed_creation_is_resumed_or_abandoned_explicitly(
        cluster: ProxiedCluster) -> None:
    op = cluster.profile
    cluster.link("reset")
    code, _, err = _cli(op, "tenant", "create", "ward", "--wait", "1")
    assert code == 12 and "not confirmed after" in err and "dc2-n1" in err, err
    assert err.count("\n") == 1, err
    code, _, err = _cli(op, "tenant", "create", "ward", "--wait", "0")
    assert code == 12 and "--resume" in err, err  # no second creation of a pending name
    # abandoning needs every node too: dc2 is unreachable, so it waits (and blocks the name)
    code, _, err = _cli(op, "tenant", "abandon", "ward", "--confirm", "ward")
    assert code == 6 and "dc2-n1" in err, err
    assert _tenants(op, "dc1")["ward"]["state"] == "abandoning"

    cluster.link("heal")
    deadline = time.monotonic() + T
    while (result := _cli(op, "tenant", "abandon", "ward", "--confirm", "ward"))[0] != 0:
        assert result[0] == 6 and time.monotonic() < deadline, result  # peers reconnecting
        time.sleep(0.5)
    assert "abandoned" in result[1]
    _wait_for("the abandonment in both sites", lambda: all(
        "ward" not in _tenants(op, s) for s in ("dc1", "dc2")))
    # the name is free again: a new creation (a new epoch) is confirmed by both sites at once
    code, out, err = _cli(op, "tenant", "create", "ward", site="dc2")
    assert code == 0 and "created" in out, err
    writer = _writer(op.parent, "ward")
    assert _cli(writer, "put", "notes/n1", "-", input=b"after", site="dc1")[0] == 0
    assert _cli(writer, "get", "notes/n1", site="dc2")[1] == "after"
    # a confirmed tenant cannot be abandoned: that is shredding
    code, _, err = _cli(op, "tenant", "abandon", "ward", "--confirm", "ward")
    assert code == 12 and "shred" in err, err
    # resuming a confirmed creation just says so
    code, out, err = _cli(op, "tenant", "create", "--resume", "ward")
    assert code == 0 and "confirmed" in out, err
