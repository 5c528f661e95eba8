"""Tenants, WORM, holds, quotas and crypto-shredding on a real two-site cluster (processes)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hdsd import (
    AsyncClient,
    LegalHold,
    PermissionDenied,
    QuotaExceeded,
    RetentionLocked,
    TenantShredded,
)
from hdsd.catalog._keys import unwrap_keys
from tests.helpers.cluster import NodeProcess, hdsd, init_cluster, start_all

T = 60  # seconds: generous bound around every I/O step


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[NodeProcess]]]:
    root = tmp_path_factory.mktemp("tenants")
    init_cluster(root)
    for config in root.glob("*/node.toml"):  # a quick sync for the test that restarts a node
        text = config.read_text()
        config.write_text(text.replace("# catalog_sync_s = 5", "catalog_sync_s = 0.5"))
    nodes = start_all([root / n / "node.toml" for n in ("dc1-n1", "dc2-n1")])
    try:
        yield root, nodes
    finally:
        for n in nodes:
            n.kill()


def _cli(root: Path, profile: str, *args: str) -> tuple[int, str]:
    proc = hdsd("--profile", str(root / profile), *args)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _issue(root: Path, client: str, tenant: str, role: str) -> Path:
    hdsd("cert", "issue", "--client", client, "--tenant", tenant, "--role", role,
         "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{client}.toml"


async def test_admin_refusals_retention_holds_and_quota(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    code, out = _cli(root, "client.toml", "tenant", "create", "chu", "--quota", "200000")
    assert code == 0, out
    assert "created" in out and "not yet" not in out  # pushed to both nodes at once
    admin = _issue(root, "chu-admin", "chu", "admin")
    writer = _issue(root, "chu-writer", "chu", "writer")
    with trio.fail_after(T):
        async with AsyncClient(admin) as a, AsyncClient(writer, site="dc2") as w, \
                AsyncClient(root / "client.toml") as op:
            # who may do what
            with pytest.raises(PermissionDenied):
                await w.bucket_create("chu", "scans", 1)  # writer: not an admin
            with pytest.raises(PermissionDenied):
                await a.tenant_create("other")  # tenant admin: not the operator
            with pytest.raises(PermissionDenied):
                await a.hold_set("default", "docs", "x")  # another tenant
            with pytest.raises(PermissionDenied):
                await w.tenant_list()

            # retention lock (created on dc1, enforced by a writer on dc2)
            reply = await a.bucket_create("chu", "worm", 30)
            assert reply["applied_on"] == ["dc1-n1", "dc2-n1"]
            await w.put("worm", "backup.tar", b"v1")
            with pytest.raises(RetentionLocked):
                await w.put("worm", "backup.tar", b"v2")
            with pytest.raises(RetentionLocked):
                await a.delete("worm", "backup.tar")
            with pytest.raises(RetentionLocked):
                await op.bucket_create("chu", "worm", 7)  # shortening, even by the operator
            assert (await a.bucket_create("chu", "worm", 60))["retention_days"] == 60
            assert await w.get("worm", "backup.tar") == b"v1"

            # legal hold: blocks delete and overwrite until cleared
            await w.put("docs", "cr.pdf", b"report")
            await a.hold_set("chu", "docs", "cr.pdf")
            # Listed, though "docs" is no `bucket create` bucket yet, by the tenant's admin
            # (from the other site too) and the operator; not by a writer.
            held = [{k: h[k] for k in ("tenant", "bucket", "key", "by")}
                    for h in await a.hold_list("chu")]
            assert held == [{"tenant": "chu", "bucket": "docs", "key": "cr.pdf",
                             "by": "chu-admin@chu"}]
            assert [h["key"] for h in await op.hold_list()] == ["cr.pdf"]
            assert await op.hold_list("chu", "worm") == []
            with pytest.raises(PermissionDenied):
                await w.hold_list("chu")
            with pytest.raises(PermissionDenied):
                await a.hold_list()  # every tenant's: the operator only
            proc = await trio.to_thread.run_sync(lambda: hdsd(
                "--profile", str(root / "clients/chu-admin.toml"), "--site", "dc2", "hold",
                "ls", "chu/docs"))
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.decode().splitlines()
            assert len(lines) == 2 and lines[1].split()[1:] == ["chu-admin@chu", "chu/docs/cr.pdf"]
            with pytest.raises(LegalHold):
                await w.delete("docs", "cr.pdf")
            with pytest.raises(LegalHold):
                await w.put("docs", "cr.pdf", b"edited")
            await a.bucket_create("chu", "docs")
            buckets = await a.bucket_list("chu")
            assert {b["bucket"]: (b["retention_days"], b["holds"]) for b in buckets} == {
                "worm": (60, []), "docs": (0, ["cr.pdf"])}
            await a.hold_set("chu", "docs", "cr.pdf", held=False)
            assert await a.hold_list("chu") == []  # a cleared hold is not listed
            await w.delete("docs", "cr.pdf")

            # quota: 200000 bytes of current versions
            await w.put("big", "one", os.urandom(150_000))
            with pytest.raises(QuotaExceeded):
                await w.put("big", "two", os.urandom(80_000))
            await w.put("big", "one", os.urandom(140_000))  # an overwrite frees what it replaces
            rows = {r["tenant"]: r for r in await op.tenant_list()}
            assert rows["chu"]["quota_bytes"] == 200_000
            assert 140_000 <= rows["chu"]["usage_bytes"] <= 200_000
            # Buckets with data count as much as created ones: worm (both), docs (created;
            # a delete marker is still a version), big (put only, never `bucket create`).
            assert (rows["chu"]["buckets"], rows["chu"]["buckets_incomplete"]) == (3, False)
    # the CLI says the same, one line, with the class's exit code
    proc = hdsd("--profile", str(root / "clients/chu-writer.toml"), "put", "big/three", "-",
                input=os.urandom(100_000))
    assert proc.returncode == 8 and b"quota" in proc.stderr, proc.stderr
    code, out = _cli(root, "clients/chu-admin.toml", "bucket", "create", "chu/worm",
                     "--retention-days", "1")
    assert code == 4 and "never shortened" in out, out
    code, out = _cli(root, "client.toml", "tenant", "ls", "--json")
    assert code == 0 and '"tenant": "chu"' in out, out
    code, out = _cli(root, "client.toml", "tenant", "ls")
    chu = [line.split() for line in out.splitlines() if line.startswith("chu ")]
    assert code == 0 and len(chu) == 1 and chu[0][5] == "3", out  # the BUCKETS column


def _scan(dirs: list[Path], needles: dict[str, bytes]) -> list[str]:
    found = []
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{what} in {path}" for what, needle in needles.items()
                          if needle in data]
    return found


async def test_shred_makes_data_unreadable_everywhere(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    assert _cli(root, "client.toml", "tenant", "create", "clinic")[0] == 0
    writer = _issue(root, "clinic-w", "clinic", "writer")
    text = b"PATIENT-DUPONT-JEAN-1957 compte rendu operatoire " * 2000  # compressible
    noise = os.urandom(300_000)  # incompressible
    small = b"INLINE-SECRET-" + os.urandom(32).hex().encode()  # rides in the version record
    with trio.fail_after(T):
        async with AsyncClient(writer) as w:
            await w.put("notes", "text", text)
            await w.put("notes", "noise", noise)
            await w.put("notes", "small", small)
            assert await w.get("notes", "noise") == noise
    data_dirs = [root / n / "data" for n in ("dc1-n1", "dc2-n1")]
    db = sqlite3.connect(f"file:{data_dirs[1] / 'catalog.sqlite'}?mode=ro", uri=True)
    (wrapped,) = db.execute("SELECT wrapped FROM tenants WHERE name = 'clinic'").fetchone()
    db.close()
    keys = unwrap_keys((root / "master.key").read_bytes(), "clinic", wrapped)

    code, out = _cli(root, "client.toml", "tenant", "shred", "clinic", "--confirm", "clinic")
    assert code == 0 and "dc1-n1, dc2-n1" in out, out
    for site in ("dc1", "dc2"):
        code, out = _cli(root, "clients/clinic-w.toml", "--site", site, "get", "notes/text")
        assert code == 4 and "shredded" in out, (site, out)
    with trio.fail_after(T):
        async with AsyncClient(writer, site="dc2") as w:
            with pytest.raises(TenantShredded):
                await w.get("notes", "small")
            with pytest.raises(TenantShredded):
                await w.put("notes", "again", b"x")
    # Each node then reclaims the tenant's log space in the background (compaction drops its
    # index rows now; sealed segments holding its records are rewritten without them).
    for site in ("dc1", "dc2"):
        with trio.fail_after(T):
            async with AsyncClient(root / "client.toml", site=site) as admin:
                while True:
                    compaction = (await admin.status())["maintenance"]["compaction"]
                    if compaction["runs_completed"] >= 1:
                        break
                    await trio.sleep(0.1)
        last = compaction["last"]
        assert last["dead_tenants"] == ["clinic"] and last["index_rows_forgotten"] >= 3, last

    for n in nodes:
        assert n.stop() == 0, n.log()
    try:
        leaks = _scan(data_dirs, {
            "plaintext": text[:64], "incompressible plaintext": noise[1000:1064],
            "inline plaintext": small, "wrapped keys": wrapped,
            "data key": keys.data_key, "dedup key": keys.dedup_key,
            "data key (hex)": keys.data_key.hex().encode(),
        })
        assert leaks == []
    finally:
        for n in nodes:
            n.start()


async def test_a_node_down_during_a_shred_learns_it_before_serving(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    assert _cli(root, "client.toml", "tenant", "create", "lab")[0] == 0
    writer = _issue(root, "lab-w", "lab", "writer")
    with trio.fail_after(T):
        async with AsyncClient(writer, site="dc2") as w:
            await w.put("results", "r1", b"hemoglobin 14.1")
    nodes[1].kill()  # dc2 is down while the operator shreds on dc1
    code, out = _cli(root, "client.toml", "tenant", "shred", "lab", "--confirm", "lab")
    assert code == 0 and "not yet on dc2-n1" in out, out
    nodes[1].start()  # its start-up sync learns the shred before it listens
    code, out = _cli(root, "clients/lab-w.toml", "--site", "dc2", "get", "results/r1")
    assert code == 4 and "shredded" in out, out
    assert b"lab" not in (root / "dc2-n1" / "data" / "keyring.hdsd").read_bytes()
