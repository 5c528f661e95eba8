"""GetMany against real nodes: bytes in order, refusals in place, tenant isolation, one audit
record per object read, a cancel mid-stream, and the fallback to gets with an older node."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

import hdsd
from tests.helpers.cluster import NodeProcess
from tests.helpers.cluster import hdsd as cli

pytestmark = pytest.mark.e2e

BIG = 2 * (1 << 20) + 12345  # three chunks of the default 1 MiB


@pytest.fixture(scope="module")
def nodes(cluster_dir: Path) -> Iterator[list[NodeProcess]]:
    procs = [NodeProcess(cluster_dir / f"{s}-n1" / "node.toml").start() for s in ("dc1", "dc2")]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def _profile(root: Path, tenant: str, role: str, name: str | None = None) -> Path:
    name = name or f"{tenant}-{role}"
    cli("cert", "issue", "--client", name, "--tenant", tenant, "--role", role,
        "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{name}.toml"


def _audit(root: Path, tenant: str) -> list[dict[str, object]]:
    node = root / "dc1-n1"
    proc = cli("audit", "export", "--data-dir", str(node / "data"), "--tenant", tenant,
               "--config", str(node / "node.toml"), check=True)
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def _reads(root: Path, tenant: str, count: int) -> list[dict[str, object]]:
    """The per-object GetMany (and GetManySha256) records of *tenant* at dc1, waiting for
    the writer thread."""
    deadline = time.monotonic() + 60  # bounds a hang only
    while True:
        found = [r for r in _audit(root, tenant)
                 if str(r.get("op")).startswith("GetMany") and r.get("key")]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stored(cluster_dir: Path, nodes: list[NodeProcess]) -> dict[str, object]:
    """Tenant ``bulka``'s objects: small, empty, multi-chunk; two versions of one key."""
    profile = _profile(cluster_dir, "bulka", "writer")
    contents = {"s1": b"one", "empty": b"", "big": os.urandom(BIG), "s2": b"two" * 1000}

    async def put() -> dict[str, str]:
        versions = {}
        async with hdsd.AsyncClient(profile) as c:
            old = await c.put("docs", "twice", b"first")
            versions["twice@old"] = old.version
            for key, data in contents.items():
                versions[key] = (await c.put("docs", key, data)).version
            versions["twice"] = (await c.put("docs", "twice", b"second")).version
        return versions

    return {"profile": profile, "contents": contents, "versions": trio.run(put)}


async def _all(client: hdsd.AsyncClient, items: list[tuple[str, str, str | None]]
               ) -> list[hdsd.Fetched]:
    async with aclosing(client.get_many(items)) as fetched:
        return [f async for f in fetched]


async def test_many_versions_in_order_with_refusals_in_place(stored: dict[str, object]) -> None:
    contents, versions = stored["contents"], stored["versions"]
    assert isinstance(contents, dict) and isinstance(versions, dict)
    items: list[tuple[str, str, str | None]] = [
        ("docs", "big", versions["big"]), ("docs", "missing", None), ("docs", "s1", None),
        ("docs", "twice", versions["twice@old"]), ("docs", "empty", None),
        ("docs", "twice", None), ("nobucket", "s1", None), ("docs", "s2", versions["s2"])]
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        got = await _all(c, items)
        assert c.bulk_reads  # the node speaks GetMany: no fallback happened
    assert [g.index for g in got] == list(range(len(items)))
    assert [g.data for g in got] == [contents["big"], b"", b"one", b"first", b"", b"second",
                                     b"", contents["s2"]]
    assert [type(g.error) for g in got] == [type(None), hdsd.NotFound, type(None),
                                           type(None), type(None), type(None), hdsd.NotFound,
                                           type(None)]
    assert got[3].version == versions["twice@old"] and got[5].version == versions["twice"]
    assert got[0].size == BIG and got[0].key == "big"


async def test_digests_instead_of_bytes(cluster_dir: Path, stored: dict[str, object]) -> None:
    contents, versions = stored["contents"], stored["versions"]
    assert isinstance(contents, dict) and isinstance(versions, dict)
    items: list[tuple[str, str, str | None]] = [
        ("docs", "big", None), ("docs", "missing", None), ("docs", "empty", None),
        ("docs", "twice", versions["twice@old"])]
    before = len(_reads(cluster_dir, "bulka", 0))
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        async with aclosing(c.get_many(items, sha256=True)) as fetched:
            got = [f async for f in fetched]
    assert [g.sha256 for g in got] == [hashlib.sha256(contents["big"]).hexdigest(), "",
                                       hashlib.sha256(b"").hexdigest(),
                                       hashlib.sha256(b"first").hexdigest()]
    assert all(g.data == b"" for g in got) and isinstance(got[1].error, hdsd.NotFound)
    assert [g.size for g in got] == [BIG, 0, 0, 5]
    # The node read them to hash them: audited as such, with no byte sent.
    new = _reads(cluster_dir, "bulka", before + 4)[before:]
    assert sorted((r["op"], r["key"], r["outcome"], r["bytes_out"]) for r in new) == [
        ("GetManySha256", "big", "ok", 0), ("GetManySha256", "empty", "ok", 0),
        ("GetManySha256", "missing", "not_found", 0), ("GetManySha256", "twice", "ok", 0)]


async def test_more_items_than_one_request_holds(stored: dict[str, object]) -> None:
    # 2,500 items: three GetMany requests (at most 1,000 each), in order.
    items: list[tuple[str, str, str | None]] = [("docs", "s1" if i % 2 else "s2", None)
                                               for i in range(2500)]
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        got = await _all(c, items)
    assert [g.index for g in got] == list(range(2500))
    assert all(g.data == (b"one" if g.index % 2 else b"two" * 1000) for g in got)


async def test_another_tenants_keys_are_not_found_and_every_read_is_audited(
        cluster_dir: Path, stored: dict[str, object]) -> None:
    versions = stored["versions"]
    assert isinstance(versions, dict)
    other = _profile(cluster_dir, "bulkb", "reader")
    items: list[tuple[str, str, str | None]] = [
        ("docs", "big", versions["big"]), ("docs", "s1", None), ("docs", "twice", None)]
    async with hdsd.AsyncClient(other) as c:
        got = await _all(c, items)
    # Tenant bulkb names bulka's exact bucket, keys and version ids: nothing of them is read.
    assert all(isinstance(g.error, hdsd.NotFound) and g.data == b"" for g in got)
    async with hdsd.AsyncClient(other) as c:
        digests = [f async for f in c.get_many(items, sha256=True)]
    assert all(isinstance(g.error, hdsd.NotFound) and g.sha256 == "" for g in digests)
    refused = _reads(cluster_dir, "bulkb", 6)
    assert sorted((r["op"], r["key"]) for r in refused) == sorted(
        (op, k) for op in ("GetMany", "GetManySha256") for k in ("big", "s1", "twice"))
    refused = [r for r in refused if r["op"] == "GetMany"]
    assert sorted((r["key"], r["outcome"], r["bytes_out"]) for r in refused) == [
        ("big", "not_found", 0), ("s1", "not_found", 0), ("twice", "not_found", 0)]
    assert all(r["identity"] == "bulkb-reader" for r in refused)

    # The owner reads them: one record per object, with its version and bytes.
    before = len(_reads(cluster_dir, "bulka", 0))
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        mine = await _all(c, items)
    assert all(g.error is None for g in mine)
    read = _reads(cluster_dir, "bulka", before + 3)[before:]
    assert sorted((r["key"], r["version"], r["bytes_out"], r["outcome"]) for r in read) == \
        sorted((g.key, g.version, g.size, "ok") for g in mine)
    assert all(r["identity"] == "bulka-writer" for r in read)


async def test_a_role_that_may_not_get_is_refused(cluster_dir: Path,
                                                  stored: dict[str, object]) -> None:
    auditor = _profile(cluster_dir, "bulka", "auditor")
    async with hdsd.AsyncClient(auditor) as c:
        with pytest.raises(hdsd.PermissionDenied):
            await _all(c, [("docs", "s1", None)])


async def test_a_cancel_mid_stream_leaves_the_node_serving(stored: dict[str, object],
                                                           nodes: list[NodeProcess]) -> None:
    contents = stored["contents"]
    assert isinstance(contents, dict)
    items: list[tuple[str, str, str | None]] = [("docs", "big", None)] * 40
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        async with aclosing(c.get_many(items)) as fetched:
            first = await anext(fetched)
            assert first.data == contents["big"]
        # Left after one of 40 (~80 MiB asked): the node was told to stop; the session and
        # the node go on serving.
        with trio.fail_after(60):
            assert await c.get("docs", "s1") == b"one"
            again = await _all(c, items[:3])
    assert [g.data for g in again] == [contents["big"]] * 3
    assert all(n.alive for n in nodes)


async def test_a_prefix_restored_into_a_directory(
        cluster_dir: Path, stored: dict[str, object], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hdsd.client import _bulk

    big = os.urandom(3 << 20)
    async with hdsd.AsyncClient(stored["profile"]) as c:  # type: ignore[arg-type]
        await c.put("scans", "2026/ct-1.dcm", b"ct1")
        await c.put("scans", "2026/mr/mr-1.dcm", big)
        await c.put("scans", "2026/gone.dcm", b"x")
        await c.delete("scans", "2026/gone.dcm")
        await c.put("scans", "2025/old.dcm", b"old")
        await c.put("scans", "evil/../escape", b"no")
        # Objects over 1 KiB take the streamed path here (the 3 MiB one would be held).
        monkeypatch.setattr(_bulk, "_HOLD_MAX", 1024)
        assert await c.get_to_dir("scans", "2026/", tmp_path / "out") == (2, 3 + len(big))
        with pytest.raises(hdsd.InvalidArgument, match=r"'\.\.'"):
            await c.get_to_dir("scans", "evil", tmp_path / "evil")
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")
                   if p.is_file())
    assert files == ["2026/ct-1.dcm", "2026/mr/mr-1.dcm"]
    assert (tmp_path / "out/2026/mr/mr-1.dcm").read_bytes() == big
    assert not (tmp_path / "escape").exists() and not (tmp_path / "evil").exists()

    # The CLI: the whole bucket, into another directory.
    proc = cli("--profile", str(stored["profile"]), "get", "scans", "--to-dir",
               str(tmp_path / "cli"), check=False)
    assert proc.returncode == 4 or proc.returncode == 2, proc.stderr  # the evil key
    assert b"'..'" in proc.stderr and b"Traceback" not in proc.stderr
    proc = cli("--profile", str(stored["profile"]), "get", "scans/2025", "--to-dir",
               str(tmp_path / "cli"), check=True)
    assert (tmp_path / "cli/2025/old.dcm").read_bytes() == b"old"
    assert b"1 objects, 3 bytes" in proc.stderr


# -- a node that predates GetMany ---------------------------------------------------------------
# The same node, but its registry without 0x70: it answers GetMany the way an older version
# does, a Goodbye "protocol: unknown frame type 0x70", and closes the connection.
_OLD_NODE = """
import runpy, sys
from hdsd.wire import _registry
del _registry._BY_CODE[0x70]
sys.argv = ["hdsd", *sys.argv[1:]]
runpy.run_module("hdsd", run_name="__main__")
"""


class _OldNode(NodeProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", _OLD_NODE]


async def test_an_older_node_is_read_one_get_per_object(
        cluster_dir: Path, stored: dict[str, object], nodes: list[NodeProcess]) -> None:
    contents, versions = stored["contents"], stored["versions"]
    assert isinstance(contents, dict) and isinstance(versions, dict)
    nodes[0].kill()
    old = _OldNode(cluster_dir / "dc1-n1" / "node.toml").start()
    try:
        items: list[tuple[str, str, str | None]] = [
            ("docs", "big", None), ("docs", "missing", None), ("docs", "twice",
                                                                versions["twice@old"])]
        async with hdsd.AsyncClient(stored["profile"], site="dc1") as c:  # type: ignore[arg-type]
            with trio.fail_after(120):
                got = await _all(c, items)
            assert not c.bulk_reads  # it fell back, and stays so for this client
            assert [g.data for g in got] == [contents["big"], b"", b"first"]
            digests = [f async for f in c.get_many(items, sha256=True)]
            assert [g.sha256 for g in digests] == [
                hashlib.sha256(contents["big"]).hexdigest(), "",
                hashlib.sha256(b"first").hexdigest()]
            assert isinstance(got[1].error, hdsd.NotFound)
            # An export through the older node: the same archive as through a current one.
            buf = io.BytesIO()
            with trio.fail_after(300):
                summary = await hdsd.export_tenant(c, buf, retention=False)
    finally:
        old.kill()
        nodes[0].start()
    async with hdsd.AsyncClient(stored["profile"], site="dc1") as c:  # type: ignore[arg-type]
        current = io.BytesIO()
        with trio.fail_after(300):
            await hdsd.export_tenant(c, current, retention=False)
        assert c.bulk_reads
    members = _members(buf)
    assert members == _members(current)
    objects = [data for name, data in members.items() if name.startswith("objects/")]
    assert summary.objects == len(objects) >= 6
    assert summary.total_bytes == sum(len(data) for data in objects)


def _members(buf: io.BytesIO) -> dict[str, bytes]:
    import tarfile

    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
    # The header line holds the export's own time: compare the rest.
    out["manifest.jsonl"] = out["manifest.jsonl"].split(b"\n", 1)[1]
    return out
