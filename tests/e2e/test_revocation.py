"""Revocable certificates on a real two-site cluster (processes): refused at both sites, also by
a node that was down when it happened; open sessions cut; re-issue and renew; restarts; node
certificates refused by their peers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hdsd import AsyncClient, CertificateRevoked, PermissionDenied
from hdsd.transport import read_certificate
from tests.helpers.cluster import NodeProcess, hdsd, init_cluster, start_all

T = 60  # seconds: generous bound around every I/O step and every poll


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[NodeProcess]]]:
    root = tmp_path_factory.mktemp("revoke")
    init_cluster(root)
    for config in root.glob("*/node.toml"):  # refused connections: audited every second
        config.write_text(config.read_text() + "\n[audit]\nrefusals_interval_s = 1\n")
    nodes = start_all([root / n / "node.toml" for n in ("dc1-n1", "dc2-n1")])
    try:
        assert hdsd("--profile", str(root / "client.toml"), "tenant", "create",
                    "chu").returncode == 0
        yield root, nodes
    finally:
        for n in nodes:
            n.kill()


def _cli(root: Path, *args: str, profile: str = "client.toml") -> tuple[int, str]:
    proc = hdsd("--profile", str(root / profile), *args)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _issue(root: Path, client: str, role: str = "writer", *extra: str) -> tuple[int, str]:
    return _cli(root, "cert", "issue", "--client", client, "--tenant", "chu", "--role", role,
                "--cluster-dir", str(root), *extra)


def _serial(root: Path, client: str) -> str:
    return read_certificate((root / "clients" / f"client-{client}@chu.crt").read_bytes()).serial


async def _until_refused(client: AsyncClient) -> None:
    """Poll until a request fails with CertificateRevoked (the caller bounds the wait)."""
    while True:
        try:
            await client.put("poll", "k", b"x")
        except CertificateRevoked:
            return
        await trio.sleep(0.1)


def _audit(root: Path, node: str, tenant: str) -> list[dict[str, object]]:
    """The tenant's records, once a signed checkpoint covers them (every 10 s): [] until then."""
    proc = hdsd("audit", "export", "--data-dir", str(root / node / "data"), "--tenant", tenant)
    if proc.returncode != 0:
        assert b"missing checkpoint" in proc.stderr, proc.stderr
        return []
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


async def test_revoked_client_is_refused_at_both_sites_and_its_sessions_cut(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    code, out = _issue(root, "pacs")
    assert code == 0, out
    profile = root / "clients" / "pacs.toml"
    serial = _serial(root, "pacs")
    with trio.fail_after(T):
        async with AsyncClient(profile) as one, AsyncClient(profile, site="dc2") as two:
            await one.put("scans", "a", b"before")  # both sessions open and working
            assert await two.get("scans", "a") == b"before"
            code, out = _cli(root, "cert", "revoke", "--client", "pacs", "--tenant", "chu",
                             "--reason", "laptop stolen", "--cluster-dir", str(root))
            assert code == 0 and f"revoked {serial}" in out and "not yet" not in out, out
            # the open sessions are cut: each client's next request fails (once the cut lands)
            await _until_refused(one)
            await _until_refused(two)
        for site in ("dc1", "dc2"):  # and a new connection is refused at both sites
            async with AsyncClient(profile, site=site) as fresh:
                with pytest.raises(CertificateRevoked):
                    await fresh.get("scans", "a")
    code, out = _cli(root, "get", "scans/a", profile="clients/pacs.toml")
    assert code == 4 and "revoked" in out, out
    # listed as revoked, with who and why
    code, out = _cli(root, "cert", "ls", "--tenant", "chu", "--json", "--cluster-dir", str(root))
    rows = {r["serial"]: r for r in map(json.loads, out.splitlines())}
    assert rows[serial]["state"] == "revoked" and rows[serial]["reason"] == "laptop stolen"
    # the trail: the revocation (by the operator), the cut sessions and the refused handshakes
    with trio.fail_after(T):
        while True:
            ops = {(r["op"], r["outcome"]) for r in _audit(root, "dc1-n1", "chu")}
            admin = [r for r in _audit(root, "dc1-n1", "default") if r["op"] == "CertRevoke"]
            if {("disconnect", "certificate_revoked"),
                    ("connect", "certificate_revoked")} <= ops and admin:
                break
            await trio.sleep(0.5)
    assert admin[-1]["key"] == f"serial:{serial}" and admin[-1]["outcome"] == "ok"


async def test_a_node_that_was_down_learns_the_revocation_before_serving(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    assert _issue(root, "lab")[0] == 0
    profile = root / "clients" / "lab.toml"
    with trio.fail_after(T):
        async with AsyncClient(profile, site="dc2") as c:
            await c.list_buckets()  # it works before
    nodes[1].stop()
    code, out = _cli(root, "cert", "revoke", "--client", "lab", "--cluster-dir", str(root))
    assert code == 0 and "not yet on dc2-n1" in out, out
    nodes[1].start()  # "listening" is printed after its start-up catalog sync
    with trio.fail_after(T):
        async with AsyncClient(profile, site="dc2") as c:
            with pytest.raises(CertificateRevoked):
                await c.list_buckets()


async def test_renewed_works_and_revocation_survives_restarts(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    assert _issue(root, "ris")[0] == 0
    old = _serial(root, "ris")
    assert _cli(root, "cert", "revoke", "--serial", old, "--cluster-dir", str(root))[0] == 0
    code, out = _cli(root, "cert", "renew", "--client", "ris", "--cluster-dir", str(root))
    assert code == 0 and "tenant chu, role writer" in out, out  # the same identity
    new = _serial(root, "ris")
    assert new != old
    for n in nodes:  # both sites restart: the catalog on disk still refuses the old serial
        n.stop()
        n.start()
    profile = root / "clients" / "ris.toml"
    with trio.fail_after(T):
        for site in ("dc1", "dc2"):
            async with AsyncClient(profile, site=site) as c:  # the renewed one works
                await c.put("notes", f"from-{site}", b"ok")
    rows = {r["serial"]: r["state"] for r in map(json.loads, _cli(
        root, "cert", "ls", "--json", "--cluster-dir", str(root))[1].splitlines())}
    assert rows[old] == "revoked" and rows[new] == "valid"


async def test_reissue_revokes_the_previous_unless_kept(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    assert _issue(root, "ward")[0] == 0
    first = _serial(root, "ward")
    profile = root / "clients" / "ward.toml"
    with trio.fail_after(T):
        async with AsyncClient(profile) as holder:  # holds the first certificate
            await holder.put("w", "k", b"1")
            code, out = _issue(root, "ward", "reader")
            assert code == 2 and "already exists" in out, out  # replacing is explicit
            code, out = _issue(root, "ward", "reader", "--force")  # (another role even)
            assert code == 0 and f"revoked {first}" in out, out
            await _until_refused(holder)
        second = _serial(root, "ward")
        async with AsyncClient(profile) as c:  # the profile now holds the new one
            assert await c.get("w", "k") == b"1"
            code, out = _issue(root, "ward", "reader", "--force", "--keep-previous")
            assert code == 0 and f"kept {second}" in out, out
            assert await c.get("w", "k") == b"1"  # its session and certificate still work
        async with AsyncClient(profile) as c:
            assert await c.get("w", "k") == b"1"


async def test_who_may_revoke(cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    assert _issue(root, "boss", "admin")[0] == 0
    assert _issue(root, "victim")[0] == 0
    victim = root / "clients" / "client-victim@chu.crt"
    node_cert = root / "dc1-n1" / "node-dc1-n1.crt"
    operator_cert = root / "clients" / "client-admin@default.crt"
    boss = "clients/boss.toml"
    # a tenant admin: not a node's, not another tenant's, not a bare serial
    for args in (["--cert", str(node_cert)], ["--cert", str(operator_cert)],
                 ["--serial", "abc123"]):
        code, out = _cli(root, "cert", "revoke", *args, "--cluster-dir", str(root / "nowhere"),
                         profile=boss)
        assert code == 4 and "operator" in out, (args, out)
    # a writer: nothing at all
    code, out = _cli(root, "cert", "revoke", "--cert", str(victim), profile="clients/victim.toml")
    assert code == 4, out
    # its own tenant's client, proven by the certificate file: yes
    code, out = _cli(root, "cert", "revoke", "--cert", str(victim), profile=boss)
    assert code == 0 and "revoked" in out, out
    # `cert ls` as a tenant admin: its own tenant's certificates (not the nodes', the operator's)
    code, out = _cli(root, "cert", "ls", "--json", "--cluster-dir", str(root), profile=boss)
    rows = {r["serial"]: r for r in map(json.loads, out.splitlines())}
    assert code == 0 and {r["tenant"] for r in rows.values()} == {"chu"}, out
    assert rows[read_certificate(victim.read_bytes()).serial]["state"] == "revoked"
    with trio.fail_after(T):
        async with AsyncClient(root / "clients" / "boss.toml") as c:
            listed = await c.cert_revoked("chu")
            assert read_certificate(victim.read_bytes()).serial in {r["serial"] for r in listed}
            with pytest.raises(PermissionDenied):
                await c.cert_revoked("")  # every tenant's: the operator only


def _status_of_peer(root: Path, node: str) -> dict[str, object]:
    proc = hdsd("--profile", str(root / "client.toml"), "status", "--json")
    # (its exit code says whether every node is up: not the point here)
    return json.loads(proc.stdout.decode().splitlines()[0])["peers"][node]  # type: ignore[no-any-return]


async def test_a_revoked_node_certificate_is_refused_by_its_peers(
        tmp_path: Path) -> None:
    root = tmp_path / "nodes"
    init_cluster(root)
    nodes = start_all([root / n / "node.toml" for n in ("dc1-n1", "dc2-n1")])
    try:
        with trio.fail_after(T):
            async with AsyncClient(root / "client.toml") as c:
                await c.put("b", "k", b"replicated")  # each-site: dc2-n1 took it
        code, out = _cli(root, "cert", "revoke", "--node", "dc2-n1", "--reason", "disk stolen",
                         "--cluster-dir", str(root))
        assert code == 0 and "node dc2-n1" in out, out
        with trio.fail_after(T):
            while True:  # dc1-n1 no longer talks to it, either way
                peer = _status_of_peer(root, "dc2-n1")
                log = nodes[0].log()
                if not peer["reachable"] and "revoked" in str(peer["last_error"]) and \
                        "identity=dc2-n1 reason=certificate_revoked" in log:
                    break
                await trio.sleep(0.5)
        # a new certificate for the (replacement) node: accepted again once it runs on it
        code, out = _cli(root, "cert", "renew", "--node", "dc2-n1", "--cluster-dir", str(root))
        assert code == 0, out
        nodes[1].start()
        with trio.fail_after(T):
            async with AsyncClient(root / "client.toml", site="dc2") as c:
                while True:
                    if _status_of_peer(root, "dc2-n1")["reachable"]:
                        break
                    await trio.sleep(0.5)
                await c.put("b", "k2", b"after renewal")  # replicated to dc1 again
                assert await c.get("b", "k") == b"replicated"
    finally:
        for n in nodes:
            n.kill()
