"""Export and import carry the buckets' retention locks and the legal holds, and keep each
version's original write time as metadata (real processes: the source and target clusters of
conftest, a tenant of their own)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

import hdsd
from hdsd import LegalHold, RetentionLocked
from hdsd.client._archive import ORIGINAL_CREATED, iso_time
from tests.helpers.cluster import hdsd as run_hdsd

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def _issue(root: Path, client: str, tenant: str, role: str) -> Path:
    run_hdsd("cert", "issue", "--client", client, "--tenant", tenant, "--role", role,
             "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{client}.toml"


def _admin(profile: Path, call: Callable[[hdsd.AsyncClient], Awaitable[T]]) -> T:
    """One admin call (the blocking client has none)."""
    async def go() -> T:
        async with hdsd.AsyncClient(profile) as c:
            return await call(c)
    return trio.run(go)


def _header(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.jsonl")
        assert manifest is not None
        return json.loads(manifest.readline())  # type: ignore[no-any-return]


def test_retention_locks_holds_and_write_times_survive_export_and_import(
        source: Path, target_root: Path, tmp_path: Path) -> None:
    src_admin = _issue(source.parent, "gov-admin", "gov", "admin")
    src_writer = _issue(source.parent, "gov-writer", "gov", "writer")
    with hdsd.Client(src_admin) as a:
        a.put("worm", "a", b"v1", metadata={"service": "radiologie"})
        a.put("worm", "a", b"v2")
        a.put("worm", "b", b"only")
        _admin(src_admin, lambda c: c.bucket_create("gov", "worm", 30))
        a.put("docs", "held", b"draft")
        a.put("docs", "held", b"final")
        _admin(src_admin, lambda c: c.hold_set("gov", "docs", "held"))
        created = {(v.bucket, v.key, v.size, bytes(a.get(v.bucket, v.key, version=v.version))):
                   iso_time(v.hlc)
                   for b, k in (("worm", "a"), ("worm", "b"), ("docs", "held"))
                   for v in a.versions(b, k)}

    # A writer cannot read locks and holds: refused, unless told to leave them out.
    out = tmp_path / "gov.tar"
    proc = run_hdsd("--profile", str(src_writer), "export", "gov", str(out))
    assert proc.returncode != 0 and b"--without-retention" in proc.stderr, proc.stderr
    assert not out.exists()
    proc = run_hdsd("--profile", str(src_writer), "export", "gov", str(out),
                    "--without-retention")
    assert proc.returncode == 0, proc.stderr
    assert _header(out)["retention"] is None

    proc = run_hdsd("--profile", str(src_admin), "export", "gov", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["retention_locks"], summary["holds"]) == (1, 1)
    header = _header(out)
    assert header["format_version"] == 2
    assert header["retention"] == [{"bucket": "worm", "retention_days": 30}]
    holds = header["holds"]
    assert isinstance(holds, list) and [(h["bucket"], h["key"], h["by"]) for h in holds] == [
        ("docs", "held", "gov-admin@gov")]

    # The target: a writer may import the versions only; an admin imports everything.
    tgt_writer = _issue(target_root, "gov2-writer", "gov2", "writer")
    tgt_admin = _issue(target_root, "gov2-admin", "gov2", "admin")
    proc = run_hdsd("--profile", str(tgt_writer), "import", str(out))
    assert proc.returncode != 0 and b"--without-retention" in proc.stderr, proc.stderr
    with hdsd.Client(tgt_admin) as a:
        assert a.list_buckets() == []  # refused before anything was stored
    for _ in range(2):  # the second run stores nothing twice and sets the same lock and hold
        proc = run_hdsd("--profile", str(tgt_admin), "import", str(out), "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert (summary["retention_locks"], summary["holds"]) == (1, 1)
    assert summary["replayed"] == summary["objects"] == 5

    with hdsd.Client(tgt_admin) as a:
        buckets = {b["bucket"]: (b["retention_days"], b["holds"])
                   for b in _admin(tgt_admin, lambda c: c.bucket_list("gov2"))}
        assert buckets == {"worm": (30, [])}
        assert [h["key"] for h in _admin(tgt_admin, lambda c: c.hold_list("gov2", "docs"))
                ] == ["held"]
        got = {}
        for b, k in (("worm", "a"), ("worm", "b"), ("docs", "held")):
            for v in a.versions(b, k):
                data = bytes(a.get(b, k, version=v.version))
                got[(b, k, v.size, data)] = v.metadata[ORIGINAL_CREATED]
                assert iso_time(v.hlc) != v.metadata[ORIGINAL_CREATED]  # a new write time
        assert got == created  # every version, oldest first, keeps its original write time
        assert a.stat("worm", "a", version=a.versions("worm", "a")[0].version).metadata == {
            "service": "radiologie", ORIGINAL_CREATED: created[("worm", "a", 2, b"v1")]}
        with pytest.raises(RetentionLocked):
            a.put("worm", "a", b"v3")
        with pytest.raises(LegalHold):
            a.delete("docs", "held")
