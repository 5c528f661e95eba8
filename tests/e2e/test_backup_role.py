"""The backup role on real processes: one storage and one backup node per site.

A backup-plan tenant's writes go through a storage node to the backup nodes of both sites (and
nowhere else); restores read from a backup node directly; a backup node refuses client writes
with WrongRole; standard tenants never reach a backup node; repair converges backup copies.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hdsd import AsyncClient, InvalidRequest, QuorumNotReached, WrongRole
from hdsd.client import load_profile
from hdsd.node import load_node_config
from tests.helpers.cluster import NodeProcess, hdsd, init_cluster

T = 60  # seconds: generous bound around every I/O step
NODES = ("dc1-n1", "dc2-n1", "dc1-b1", "dc2-b1")
STORAGE, BACKUP = NODES[:2], NODES[2:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, dict[str, NodeProcess]]]:
    root = tmp_path_factory.mktemp("backup-role")
    init_cluster(root, backup_nodes_per_site=1)
    nodes = {n: NodeProcess(root / n / "node.toml").start() for n in NODES}
    try:
        yield root, nodes
    finally:
        for n in nodes.values():
            n.kill()


def _cli(root: Path, profile: Path | str, *args: str, input: bytes | None = None
         ) -> tuple[int, str]:
    proc = hdsd("--profile", str(root / profile), *args, input=input)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _issue(root: Path, client: str, tenant: str, role: str) -> Path:
    hdsd("cert", "issue", "--client", client, "--tenant", tenant, "--role", role,
         "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{client}.toml"


def _port(root: Path, node: str) -> int:
    return load_node_config(root / node / "node.toml").port


def _held(root: Path, node: str, tenant: str) -> tuple[int, int]:
    """(versions, chunks) of *tenant* in *node*'s store index, read raw."""
    path = root / node / "data" / "store" / "index.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (versions,) = db.execute("SELECT count(*) FROM versions WHERE tenant = ?",
                                 (tenant,)).fetchone()
        (chunks,) = db.execute("SELECT count(*) FROM chunks WHERE tenant = ?",
                               (tenant,)).fetchone()
        return versions, chunks
    finally:
        db.close()


async def _until_held(root: Path, node: str, tenant: str, versions: int) -> None:
    # The index follows the fsync by a moment (the ack waits for the fsync, not the index).
    with trio.fail_after(T):
        while _held(root, node, tenant)[0] < versions:
            await trio.sleep(0.05)


async def test_backup_plan_lives_on_backup_nodes_only(
        cluster: tuple[Path, dict[str, NodeProcess]]) -> None:
    root, nodes = cluster
    code, out = _cli(root, "client.toml", "tenant", "create", "vault", "--plan", "backup")
    assert code == 0 and "plan backup" in out, out
    code, out = _cli(root, "client.toml", "tenant", "create", "chu")
    assert code == 0 and "plan standard" in out, out
    code, out = _cli(root, "client.toml", "tenant", "create", "chu", "--plan", "backup")
    assert code == 2 and "never changes" in out and len(out.strip().splitlines()) == 1, out
    vault = _issue(root, "vault-w", "vault", "writer")
    chu = _issue(root, "chu-w", "chu", "writer")
    big = os.urandom(2_500_000)  # three chunks of 1 MiB
    small = b"backup of the PACS index"
    with trio.fail_after(T):
        async with AsyncClient(vault) as w, AsyncClient(chu) as c:
            await w.put("nightly", "pacs.tar", big)  # through dc1-n1, a storage node
            await w.put("nightly", "index", small)
            await c.put("records", "cr.pdf", b"a standard tenant's document")
            assert await w.get("nightly", "pacs.tar") == big  # forwarded by a storage node
            assert [e.key for e in (await w.list("nightly")).entries] == ["index", "pacs.tar"]
            assert await w.list_buckets() == ["nightly"]
        async with AsyncClient(vault, site="dc2") as w2:
            assert await w2.get("nightly", "index") == small
    for node in BACKUP:
        await _until_held(root, node, "vault", 2)
        assert _held(root, node, "vault") == (2, 3), node  # 3 chunks; the small one is inline
        assert _held(root, node, "chu") == (0, 0), node  # standard data never lands here
    for node in STORAGE:
        assert _held(root, node, "vault") == (0, 0), node  # coordinated, never stored
        await _until_held(root, node, "chu", 1)

    # A restore straight from a backup node, and its refusals.
    profile = load_profile(vault)
    for node, site in (("dc1-b1", "dc1"), ("dc2-b1", "dc2")):
        pinned = profile.pinned(site, "127.0.0.1", _port(root, node))
        with trio.fail_after(T):
            async with AsyncClient(pinned) as b:
                assert await b.get("nightly", "pacs.tar") == big
                assert (await b.stat("nightly", "index")).size == len(small)
                assert len(await b.versions("nightly", "index")) == 1
                with pytest.raises(WrongRole, match=f"storage node of site {site}"):
                    await b.put("nightly", "evil", b"ransom note")
                with pytest.raises(WrongRole):
                    await b.delete("nightly", "pacs.tar")
    operator = load_profile(root / "client.toml")
    with trio.fail_after(T):
        async with AsyncClient(operator.pinned("dc1", "127.0.0.1", _port(root, "dc1-b1"))) as op:
            with pytest.raises(WrongRole):
                await op.tenant_create("other")
            with pytest.raises(WrongRole):
                await op.bucket_create("vault", "nightly", 1)
            status = await op.status()
            assert status["role"] == "backup"
            assert {n["node"]: n["role"] for n in status["nodes"]} == {
                "dc1-n1": "storage", "dc2-n1": "storage", "dc1-b1": "backup",
                "dc2-b1": "backup"}
    # The CLI: one line, the class's exit code.
    to_backup = root / "clients" / "vault-to-backup.toml"
    to_backup.write_text(re.sub(r"(?m)^endpoints = \[.*\]$",
                                f'endpoints = ["127.0.0.1:{_port(root, "dc1-b1")}"]',
                                vault.read_text(), count=1))
    code, out = _cli(root, to_backup, "put", "nightly/evil", "-", input=b"x")
    assert code == 4 and "backup node" in out and len(out.strip().splitlines()) == 1, out
    code, out = _cli(root, to_backup, "get", "nightly/index")
    assert code == 0 and small.decode() in out, out
    assert all(n.alive for n in nodes.values())
    assert _held(root, "dc1-b1", "vault")[0] == 2  # nothing written by the refused requests


async def test_acks_need_both_backup_nodes_and_repair_converges_them(
        cluster: tuple[Path, dict[str, NodeProcess]]) -> None:
    root, nodes = cluster
    assert _cli(root, "client.toml", "tenant", "create", "vault2", "--plan", "backup")[0] == 0
    vault = _issue(root, "vault2-w", "vault2", "writer")
    nodes["dc2-b1"].kill()  # dc2's storage node is up, but holds no backup-plan key
    with trio.fail_after(T):
        async with AsyncClient(vault, retries=0) as w:
            with pytest.raises(QuorumNotReached, match="dc2-b1"):
                await w.put("nightly", "a", b"not acknowledged: dc2 has no copy")
        async with AsyncClient(root / "client.toml") as op:
            await op.set_site_mode("dc1", "degraded", "dc2 backup node down (test)")
        async with AsyncClient(vault) as w:
            await w.put("nightly", "b", b"acknowledged by dc1-b1 alone")
    # Lose the hint that would bring dc2-b1 up to date: only anti-entropy can now (the
    # reconciliation round after dc1-n1's unclean restart, or the operator's repair below).
    nodes["dc1-n1"].kill()
    for f in (root / "dc1-n1" / "data").glob("hints.sqlite*"):
        f.unlink()
    nodes["dc1-n1"].start()
    nodes["dc2-b1"].start()
    with trio.fail_after(T):
        async with AsyncClient(root / "client.toml") as op:
            await op.set_site_mode("dc1", "normal")
    code, out = _cli(root, "client.toml", "repair", "--wait", "--json")
    assert code == 0, out
    reports = {r["node"]: r for r in json.loads(out)}
    assert set(reports) == set(NODES)  # backup nodes repaired too (backup_endpoints)
    await _until_held(root, "dc2-b1", "vault2", _held(root, "dc1-b1", "vault2")[0])
    with trio.fail_after(T):
        pinned = load_profile(vault).pinned("dc2", "127.0.0.1", _port(root, "dc2-b1"))
        async with AsyncClient(pinned) as b:
            assert await b.get("nightly", "b") == b"acknowledged by dc1-b1 alone"
    for node in STORAGE:
        assert _held(root, node, "vault2") == (0, 0), node  # repair did not spread it


def test_plan_needs_backup_nodes_in_both_sites() -> None:
    from hdsd.cluster import Layout, NodeInfo
    from hdsd.node._roles import check_plan_possible

    layout = Layout(sites=("a", "b"), nodes=(
        NodeInfo("a-n", "a", "h", 1), NodeInfo("b-n", "b", "h", 2),
        NodeInfo("a-b", "a", "h", 3, role="backup")))
    check_plan_possible(layout, "standard")
    with pytest.raises(InvalidRequest, match="b has none"):
        check_plan_possible(layout, "backup")
