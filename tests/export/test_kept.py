"""Small objects are read once by an export: the first pass fetches their bytes and keeps them
for the second, within a memory budget; the archive is the same as ever.

Real processes (the 1 x 1 target cluster of conftest, a tenant of its own per test). What the
nodes read is counted from their audit logs: every object read is audited, so an object read
twice has two records (``GetManySha256`` when a node hashed it, ``GetMany`` when it sent it).
"""

from __future__ import annotations

import collections
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import hdsd
from hdsd.client import _export as E
from tests.export.conftest import new_tenant
from tests.helpers.cluster import hdsd as run_hdsd

pytestmark = pytest.mark.e2e

SMALL = 30  # 4 KiB objects
BIG = 2 * (1 << 20) + 777  # multi-chunk: hashed by the node, read again (never kept)
MIDDLE = 70_000  # above _KEEP_MAX: hashed by the node, read again


def _fill(profile: Path) -> dict[str, bytes]:
    """The tenant's objects: small ones, two above the keep threshold, an empty one, a key
    with two versions and one deleted. Returns each current key's bytes."""
    contents: dict[str, bytes] = {}
    with hdsd.Client(profile) as c:
        for i in range(SMALL):
            contents[f"small/{i:03d}"] = bytes([i]) * 4096
        contents["big"] = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
        contents["middle"] = b"m" * MIDDLE
        contents["empty"] = b""
        c.put("docs", "twice", b"first")
        contents["twice"] = b"second"
        for key, data in contents.items():
            c.put("docs", key, data)
        c.put("docs", "gone", b"bye")
        c.delete("docs", "gone")
    return contents


def _audit_reads(root: Path, tenant: str, count: int) -> list[tuple[str, str]]:
    """``(op, key)`` of every per-object GetMany record of *tenant* at both nodes, waiting
    (bounded) until there are *count* of them: the audit writer thread may lag."""
    deadline = time.monotonic() + 60
    while True:
        found: list[tuple[str, str]] = []
        for node in sorted(root.glob("*/node.toml")):
            proc = run_hdsd("audit", "export", "--data-dir", str(node.parent / "data"),
                            "--tenant", tenant, "--config", str(node), check=True)
            for line in proc.stdout.decode().splitlines():
                record = json.loads(line) if line.strip() else {}
                if str(record.get("op", "")).startswith("GetMany") and record.get("key"):
                    found.append((str(record["op"]), str(record["key"])))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


async def _export(profile: Path) -> bytes:
    buf = io.BytesIO()
    async with hdsd.AsyncClient(profile) as c:
        with trio.fail_after(120):
            await hdsd.export_tenant(c, buf, retention=False)
    return buf.getvalue()


def _reference(archive: bytes, contents: dict[str, bytes], profile: Path) -> bytes:
    """The archive as the standard library's ``tarfile`` writes it from the objects
    themselves (each read back with a get), with the export's manifest, checksums and
    times: what an export must be, byte for byte."""
    src = tarfile.open(fileobj=io.BytesIO(archive))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as ref, \
            hdsd.Client(profile) as c:
        members = src.getmembers()
        manifest = src.extractfile(members[0])
        assert manifest is not None
        entries = [json.loads(line) for line in manifest.read().splitlines()[1:]]
        objects = iter([e for e in entries if not e["deleted"]])
        for member in members:
            if member.name in ("manifest.jsonl", "SHA256SUMS"):
                body = src.extractfile(member)
                assert body is not None
                data = body.read()
            else:
                entry = next(objects)
                assert member.name == entry["path"]
                data = c.get("docs", entry["key"], version=entry["version"])
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode, info.type = (len(data), member.mtime, 0o644,
                                                           tarfile.REGTYPE)
            ref.addfile(info, io.BytesIO(data))
    assert {e["key"] for e in entries if not e["deleted"]} == set(contents) | {"gone"}
    return out.getvalue()


def _without_time(archive: bytes) -> tuple[list[Any], list[bytes]]:
    """Each member's name, size and bytes; the manifest without its export time."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        bodies = []
        for m in members:
            f = tar.extractfile(m)
            assert f is not None
            bodies.append(f.read())
    head = json.loads(bodies[0].split(b"\n", 1)[0])
    head.pop("exported_at")
    bodies[0] = json.dumps(head).encode() + bodies[0].split(b"\n", 1)[1]
    return [(m.name, m.size) for m in members], bodies


def test_small_objects_are_read_and_audited_once_and_the_archive_is_unchanged(
        target_root: Path) -> None:
    profile = new_tenant(target_root)
    contents = _fill(profile)
    archive = trio.run(_export, profile)
    # Byte for byte what tarfile writes from the objects read back one by one.
    assert archive == _reference(archive, contents, profile)

    # Objects: SMALL small, empty, two versions of twice, gone's before its delete marker
    # (kept: one GetMany each); big and middle (hashed, then sent: two records each).
    kept = SMALL + 1 + 2 + 1
    reads = collections.Counter(_audit_reads(target_root, profile.stem, kept + 4))
    small_keys = [k for k in contents if k.startswith("small/")] + ["empty", "gone"]
    for key in small_keys:
        assert reads[("GetMany", key)] == 1, key
        assert reads[("GetManySha256", key)] == 0, key
    assert reads[("GetMany", "twice")] == 2 and reads[("GetManySha256", "twice")] == 0
    for key in ("big", "middle"):
        assert reads[("GetManySha256", key)] == 1 and reads[("GetMany", key)] == 1, key
    assert sum(reads.values()) == kept + 4  # nothing else read (the delete marker: nothing)


def test_small_objects_past_the_budget_are_hashed_by_the_nodes_and_read_again(
        target_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = new_tenant(target_root)
    contents = _fill(profile)
    # Room for 10 small objects (4 KiB each and their overhead), counted in listing order.
    budget = 10 * (4096 + E._KEEP_OVERHEAD)
    monkeypatch.setattr(E, "_KEEP_BUDGET", budget)
    held: list[int] = []
    write_pass = E._write_pass

    async def measured(*args: Any) -> None:
        kept = args[-1]
        assert isinstance(kept, E._Kept)
        # The first pass is over: every kept body is held now (the peak).
        held.append(sum(len(b) + E._KEEP_OVERHEAD for _, b in kept.bodies))
        await write_pass(*args)

    monkeypatch.setattr(E, "_write_pass", measured)
    archive = trio.run(_export, profile)
    assert held and 0 < held[0] <= budget
    assert archive == _reference(archive, contents, profile)

    # Listing order (key, then version): big, empty, gone, middle, small/000..., twice (x2).
    # "empty" and "gone" fit (their overhead and 3 bytes), then 9 small ones; the 10th does
    # not, nor any small one after it, but the two few-byte versions of "twice" still do.
    fits = ["empty", "gone"] + [f"small/{i:03d}" for i in range(9)]
    again = [f"small/{i:03d}" for i in range(9, SMALL)] + ["big", "middle"]
    reads = collections.Counter(_audit_reads(target_root, profile.stem,
                                             len(fits) + 2 + 2 * len(again)))
    for key in fits:
        assert (reads[("GetMany", key)], reads[("GetManySha256", key)]) == (1, 0), key
    for key in again:
        assert (reads[("GetMany", key)], reads[("GetManySha256", key)]) == (1, 1), key
    assert (reads[("GetMany", "twice")], reads[("GetManySha256", "twice")]) == (2, 0)
    assert sum(reads.values()) == len(fits) + 2 + 2 * len(again)

    # Without any budget: the old two passes exactly; the same archive but for its time.
    monkeypatch.setattr(E, "_KEEP_BUDGET", 0)
    assert _without_time(trio.run(_export, profile)) == _without_time(archive)
