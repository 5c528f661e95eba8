"""A data directory written before names were sealed (log format 1): the node refuses to start
with one line saying how to migrate; `hdsd store migrate` rewrites it (both sites) and seals
the catalog's retention locks and legal holds (a node whose catalog still has them in clear
seals it at start); the nodes then serve the same object and the same hold, and no name is
left in clear on disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

import hdsd
from hdsd._packing import packb
from hdsd.catalog import CATALOG_FILE, KEYRING_FILE, Catalog, Keyring, load_master_key
from hdsd.cluster import HybridClock
from hdsd.pipeline import ChunkCodec
from hdsd.store import Version
from hdsd.store import _format as F
from hdsd.store._log import frame_batch
from hdsd.store._records import EncodedRecord
from tests.helpers.cluster import NodeProcess, init_cluster, start_all
from tests.helpers.cluster import hdsd as run_cli

pytestmark = pytest.mark.e2e

BUCKET, KEY, NIR = "patient-808-roux", "cr/patient-808-roux.pdf", "2-61-08-75-042-007"


def _write_format1_store(data_dir: Path, version: Version) -> None:
    store = data_dir / "store"
    store.mkdir(mode=0o700)
    head = F.SEGMENT_HEADER.pack(F.SEGMENT_MAGIC, 1, 0, 0, 1, 0)[:24]
    body = packb(version.to_wire())  # format 1: the record in clear
    framed, _ = frame_batch([EncodedRecord(F.KIND_VERSION, body, F.digest(body),
                                           version)],  # type: ignore[arg-type]
                            F.SEGMENT_HEADER_SIZE)
    (store / F.segment_name(1)).write_bytes(head + F.U64.pack(F.digest(head)) + framed
                                            + bytes(4096))


def _write_clear_catalog(data_dir: Path) -> None:
    """A catalog of the release before: a retention lock and a legal hold, names in clear."""
    path = data_dir / CATALOG_FILE
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE buckets (tenant TEXT NOT NULL, name TEXT NOT NULL, retention_days "
               "INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (tenant, name))")
    db.execute("CREATE TABLE holds (tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT "
               "NULL, held INTEGER NOT NULL, by TEXT NOT NULL, hlc INTEGER NOT NULL, "
               "PRIMARY KEY (tenant, bucket, key))")
    hlc = HybridClock().now() - (1 << 63)
    db.execute("INSERT INTO buckets VALUES ('default', ?, 30, ?)", (BUCKET, hlc))
    db.execute("INSERT INTO holds VALUES ('default', ?, ?, 1, 'ops@ops', ?)", (BUCKET, KEY, hlc))
    db.commit()
    db.close()


async def _locks_and_holds(profile: Path, site: str
                           ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    with trio.fail_after(60):
        async with hdsd.AsyncClient(profile, site=site) as admin:
            return ([(b["bucket"], b["retention_days"]) for b in await admin.bucket_list(
                        "default")],
                    [(h["bucket"], h["key"]) for h in await admin.hold_list("default")])


def test_an_old_store_is_refused_then_migrated(tmp_path: Path) -> None:
    root = tmp_path / "c"
    init_cluster(root)
    keys = Keyring(root / "dc1-n1" / "data" / KEYRING_FILE,
                   load_master_key(root / "master.key")).get("default")
    assert keys is not None
    sealed = ChunkCodec(keys).seal(b"compte rendu")
    for node in ("dc1-n1", "dc2-n1"):
        v = Version(tenant="default", bucket=BUCKET, key=KEY, hlc=HybridClock().now(),
                    node=node, size=12, content_hash=sealed.chunk_id, chunks=(sealed.chunk_id,),
                    inline=sealed.payload, metadata={"nir": NIR})
        _write_format1_store(root / node / "data", v)

    _write_clear_catalog(root / "dc1-n1" / "data")  # sealed by the command
    refused = NodeProcess(root / "dc1-n1" / "node.toml")
    with pytest.raises(AssertionError, match="hdsd store migrate"):
        refused.start()
    for node in ("dc1-n1", "dc2-n1"):
        proc = run_cli("store", "migrate", "--config", str(root / node / "node.toml"))
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"store migrated" in proc.stdout and b"1 versions" in proc.stdout, proc.stdout
    assert b"catalog migrated, names sealed (1 retention locks, 1 legal holds" in proc.stdout \
        or node == "dc2-n1", proc.stdout
    again = run_cli("store", "migrate", "--config", str(root / "dc1-n1" / "node.toml"))
    assert again.returncode == 0 and b"nothing to do" in again.stdout
    assert b"catalog already has names sealed" in again.stdout, again.stdout
    _write_clear_catalog(root / "dc2-n1" / "data")  # sealed by the node at start

    nodes = start_all([root / n / "node.toml" for n in ("dc1-n1", "dc2-n1")])
    try:
        for site in ("dc1", "dc2"):
            with hdsd.Client(root / "client.toml", site=site) as c:
                assert c.get(BUCKET, KEY) == b"compte rendu"
                assert c.stat(BUCKET, KEY).metadata == {"nir": NIR}
            assert trio.run(_locks_and_holds, root / "client.toml", site) == (
                [(BUCKET, 30)], [(BUCKET, KEY)])
        assert any("event=catalog_names_sealed buckets=1 holds=1" in line
                   for line in nodes[1].stderr_lines), nodes[1].log()
    finally:
        for n in nodes:
            assert n.stop() == 0, n.log()
    for node in ("dc1-n1", "dc2-n1"):
        for path in (root / node / "data").rglob("*"):
            if path.is_file() and "audit" not in path.parts:
                data = path.read_bytes()
                assert b"patient-808" not in data and NIR.encode() not in data, path
