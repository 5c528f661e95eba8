"""Export a tenant from one cluster, import it into another: byte-identical, every version.

Real processes: a 2 x 2 source cluster and a 1 x 1 target, the real CLI for export and import.
The archive is also checked with the standard library only (tarfile + hashlib), as a hospital
without hdsd would.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

import hdsd
from hdsd.client._archive import ORIGINAL_CREATED
from tests.helpers.cluster import hdsd as run_hdsd

pytestmark = pytest.mark.e2e

MIB = 1 << 20
ODD_KEYS = ["a/b c/é.dcm", "/lead", "trail/", "a//b", "..", ".hidden", "日本語/ファイル",
            "100% sûr", "@versions", "x" * 300, "a", "a/b", "sp ace/ tab\t", "emoji 🩺/ok"]


@dataclass
class Model:
    """What was written to the source tenant: per key, its operations oldest first."""

    history: dict[tuple[str, str], list[tuple[bytes, dict[str, str]] | None]] = \
        field(default_factory=dict)  # None = a delete

    @property
    def buckets(self) -> list[str]:
        return sorted({b for b, _ in self.history})


@pytest.fixture(scope="module")
def model(source: Path) -> Model:
    rng = random.Random(20261129)
    m = Model()
    big_left = 2  # multi-chunk objects (chunks are 1 MiB)
    with hdsd.Client(source) as c:
        for bucket in ["scans", "docs", "b-3", "x.y", "z9", "backups"]:
            for key in rng.sample(ODD_KEYS, rng.randint(1, 3)):
                ops: list[tuple[bytes, dict[str, str]] | None] = []
                for _ in range(rng.randint(1, 4)):
                    if ops and ops[-1] is not None and rng.random() < 0.3:
                        c.delete(bucket, key)
                        ops.append(None)
                        continue
                    size = rng.choice([0, 1, 100, 5000, 70_000])
                    if big_left and rng.random() < 0.2:
                        size, big_left = 2 * MIB + 12345, big_left - 1
                    data = rng.randbytes(size)
                    meta = {"patient": str(rng.randint(1, 99)), "é": "ü"} if rng.random() < 0.5 \
                        else {}
                    c.put(bucket, key, data, metadata=meta)
                    ops.append((data, meta))
                m.history[(bucket, key)] = ops
    assert any(len(ops) > 1 for ops in m.history.values())
    return m


@pytest.fixture(scope="module")
def exported(source: Path, model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tenant.tar"
    proc = run_hdsd("--profile", str(source), "export", "default", str(out), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["versions"] == sum(len(ops) for ops in model.history.values())
    assert not out.with_name("tenant.tar.partial").exists()
    return out


def _stdlib_check(archive: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Read the archive with tarfile + hashlib only; every object matches the manifest."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:2] == ["manifest.jsonl", "SHA256SUMS"]
        manifest = tar.extractfile("manifest.jsonl")
        sums_file = tar.extractfile("SHA256SUMS")
        assert manifest is not None and sums_file is not None
        lines = manifest.read().decode().splitlines()
        sums = sums_file.read().decode().splitlines()
        header, entries = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
        objects = [e for e in entries if not e["deleted"]]
        assert names[2:] == [e["path"] for e in objects]
        assert sums == [f"{e['sha256']}  {e['path']}" for e in objects]
        for e in objects:
            member = tar.extractfile(str(e["path"]))
            assert member is not None
            assert hashlib.sha256(member.read()).hexdigest() == e["sha256"]
    assert header["versions"] == len(entries)
    assert header["objects"] == len(objects)
    assert header["total_bytes"] == sum(int(e["size"]) for e in objects)  # type: ignore[call-overload]
    return header, entries


def _check_target(model: Model, profile: Path) -> None:
    """The target tenant holds exactly the model: every version in order, same bytes, same
    metadata, same delete markers, same current versions and listings."""
    with hdsd.Client(profile) as c:
        assert c.list_buckets() == model.buckets
        for bucket in model.buckets:
            current = {k for (b, k), ops in model.history.items() if b == bucket and ops[-1]}
            assert [e.key for e in c.list(bucket).entries] == sorted(current)
            for (b, key), ops in model.history.items():
                if b != bucket:
                    continue
                got = c.versions(bucket, key)
                assert [v.deleted for v in got] == [op is None for op in ops], key
                for v, op in zip(got, ops, strict=True):
                    if op is not None:
                        assert c.get(bucket, key, version=v.version) == op[0], (key, v)
                        # plus the original write time an import adds (checked exactly in
                        # test_governance.py)
                        meta = dict(v.metadata)
                        assert meta.pop(ORIGINAL_CREATED).endswith("Z")
                        assert meta == op[1]
                if ops[-1] is not None:
                    assert c.get(bucket, key) == ops[-1][0]


def test_list_buckets_merges_every_node_of_the_site(source: Path, model: Model) -> None:
    for site in ("dc1", "dc2"):
        with hdsd.Client(source, site=site) as c:
            assert c.list_buckets() == model.buckets


def test_archive_is_readable_with_the_standard_library(exported: Path, model: Model) -> None:
    header, entries = _stdlib_check(exported)
    assert header["tenant"] == "default" and header["format"] == "hdsd-export"
    assert header["buckets"] == model.buckets
    by_key: dict[tuple[str, str], list[dict[str, object]]] = {}
    for e in entries:
        by_key.setdefault((str(e["bucket"]), str(e["key"])), []).append(e)
    assert by_key.keys() == model.history.keys()
    for k, ops in model.history.items():
        assert [e["deleted"] for e in by_key[k]] == [op is None for op in ops]
        assert [e["sha256"] for e in by_key[k]] == \
            [hashlib.sha256(op[0]).hexdigest() if op else None for op in ops]


def test_round_trip_through_a_file(exported: Path, model: Model, target: Path,
                                   tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    proc = run_hdsd("--profile", str(target), "import", str(exported), "--report", str(report))
    assert proc.returncode == 0, proc.stderr.decode()
    _check_target(model, target)
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert lines[0]["source"]["tenant"] == "default"
    mapped = lines[1:-1]
    assert len(mapped) == sum(len(ops) for ops in model.history.values())
    assert all(m["status"] == "stored" and m["new_version"] for m in mapped)
    assert lines[-1]["summary"]["replayed"] == 0

    # A second run stores nothing twice: every object is recognised by its request id.
    again = run_hdsd("--profile", str(target), "import", str(exported), "--json")
    assert again.returncode == 0, again.stderr.decode()
    summary = json.loads(again.stdout)
    assert summary["replayed"] == summary["objects"]
    _check_target(model, target)


def test_export_to_a_pipe_into_import(source: Path, model: Model, target: Path) -> None:
    cli = [sys.executable, "-m", "hdsd"]
    export = subprocess.Popen([*cli, "--profile", str(source), "export", "default", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run([*cli, "--profile", str(target), "import", "-"], stdin=export.stdout,
                         capture_output=True, timeout=300)
    assert export.stdout is not None and export.stderr is not None
    export.stdout.close()
    assert export.wait(60) == 0, export.stderr.read().decode()
    assert b"exported tenant default" in export.stderr.read()  # the summary is not in the tar
    export.stderr.close()
    assert imp.returncode == 0, imp.stderr.decode()
    _check_target(model, target)


def _object_member(archive: Path) -> tuple[tarfile.TarInfo, str, str, int]:
    """A non-empty object that is not the first version of its key, and its position among
    the key's versions (manifest order is the key's history order)."""
    _, entries = _stdlib_check(archive)
    seen: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for e in entries:
            k = (str(e["bucket"]), str(e["key"]))
            position = seen[k] = seen.get(k, -1) + 1
            if not e["deleted"] and e["size"] and position > 0:
                return tar.getmember(str(e["path"])), k[0], k[1], position
    raise AssertionError("the model has no key with a non-empty later version")


def test_a_flipped_byte_is_refused_naming_the_entry(exported: Path, model: Model, target: Path,
                                                    tmp_path: Path) -> None:
    member, bucket, key, position = _object_member(exported)
    damaged = tmp_path / "damaged.tar"
    shutil.copyfile(exported, damaged)
    with open(damaged, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    report = tmp_path / "report.jsonl"
    proc = run_hdsd("--profile", str(target), "import", str(damaged), "--report", str(report))
    assert proc.returncode == 5, proc.stderr.decode()
    err = proc.stderr.decode()
    assert member.name in err and "SHA-256" in err and "not stored" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not report.exists() and not tmp_path.joinpath("report.jsonl.partial").exists()
    with hdsd.Client(target) as c:
        # Everything before the damaged version is there, the damaged one is not.
        assert [v.deleted for v in c.versions(bucket, key)] == \
            [op is None for op in model.history[(bucket, key)][:position]]

    # The good archive completes the same tenant, storing nothing twice.
    proc = run_hdsd("--profile", str(target), "import", str(exported), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["replayed"] > 0
    _check_target(model, target)


async def test_the_library_refuses_a_damaged_archive_and_can_resume(
        exported: Path, model: Model, target: Path) -> None:
    member, bucket, key, position = _object_member(exported)
    damaged = bytearray(exported.read_bytes())
    damaged[member.offset_data + member.size // 2] ^= 0x01
    report = io.BytesIO()
    async with hdsd.AsyncClient(target) as c:
        with trio.fail_after(120):
            with pytest.raises(hdsd.ArchiveError, match=member.name.replace("%", ".")):
                await hdsd.import_archive(c, io.BytesIO(bytes(damaged)), report=report)
            assert b'"summary"' not in report.getvalue()
            assert [v.deleted for v in await c.versions(bucket, key)] == \
                [op is None for op in model.history[(bucket, key)][:position]]
            # Same client, same request ids: the abandoned put was cancelled on the node (it
            # does not hold its request id for the node's hour-long request timeout).
            with open(exported, "rb") as f:
                summary = await hdsd.import_archive(c, f)
    assert summary.replayed > 0 and summary.versions == len(
        [op for ops in model.history.values() for op in ops])
    await trio.to_thread.run_sync(_check_target, model, target)


@pytest.mark.parametrize("where", ["inside an object", "between members"])
def test_a_truncated_archive_is_refused_naming_the_entry(exported: Path, model: Model,
                                                         target: Path, tmp_path: Path,
                                                         where: str) -> None:
    member, _, _, _ = _object_member(exported)
    cut = member.offset_data + member.size // 2 if where == "inside an object" \
        else member.offset  # the member's header is the first thing missing
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(exported.read_bytes()[:cut])
    proc = run_hdsd("--profile", str(target), "import", str(truncated))
    assert proc.returncode == 5, proc.stderr.decode()
    assert member.name in proc.stderr.decode()


def test_not_an_archive_and_wrong_tenant_are_refused(source: Path, target: Path,
                                                     tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 100)
    proc = run_hdsd("--profile", str(target), "import", str(junk))
    assert proc.returncode == 5 and b"hdsd: error:" in proc.stderr, proc.stderr.decode()

    out = tmp_path / "other.tar"
    proc = run_hdsd("--profile", str(source), "export", "someone-else", str(out))
    assert proc.returncode == 4, proc.stderr.decode()
    assert b"belongs to tenant 'default'" in proc.stderr
    assert not out.exists() and not tmp_path.joinpath("other.tar.partial").exists()

    for args in (["export", "default", str(tmp_path / "no" / "such" / "dir.tar")],
                 ["import", str(tmp_path / "missing.tar")]):
        proc = run_hdsd("--profile", str(source), *args)
        assert proc.returncode == 2, proc.stderr.decode()
        assert proc.stderr.decode().count("\n") == 1 and b"hdsd: error:" in proc.stderr


def _entries_without_time(archive: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    header, entries = _stdlib_check(archive)
    return {k: v for k, v in header.items() if k != "exported_at"}, entries


def test_a_spooled_export_reads_once_and_writes_the_same_archive(
        exported: Path, source: Path, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    out = tmp_path / "spooled.tar"
    proc = run_hdsd("--profile", str(source), "export", "default", str(out), "--spool",
                    str(spool))
    assert proc.returncode == 0, proc.stderr.decode()
    assert _entries_without_time(out) == _entries_without_time(exported)
    assert list(spool.iterdir()) == []  # the copy is gone with the export

    proc = run_hdsd("--profile", str(source), "export", "default", str(tmp_path / "x.tar"),
                    "--spool", str(tmp_path / "no-such-dir"))
    assert proc.returncode == 2 and b"no-such-dir" in proc.stderr, proc.stderr.decode()


async def test_a_spooled_export_streams_large_objects_and_checks_the_spool(
        exported: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hdsd.client import _export as E

    # Every object above 1 KiB takes the streamed path (the model has 2 MiB ones).
    monkeypatch.setattr(E, "_AHEAD_MAX", 1024)
    buf = io.BytesIO()
    async with hdsd.AsyncClient(source) as c:
        with trio.fail_after(120):
            await hdsd.export_tenant(c, buf, spool=tmp_path)
    out = tmp_path / "lib.tar"
    out.write_bytes(buf.getvalue())
    assert _entries_without_time(out) == _entries_without_time(exported)

    # A spool that returns other bytes than it was given is caught, naming the object.
    append = E._append
    damaged: list[int] = []

    async def flipping(copy: io.BufferedRandom, data: bytes) -> None:
        if len(data) > 1000 and not damaged:
            damaged.append(len(data))
            data = bytes([data[0] ^ 1]) + data[1:]
        await append(copy, data)

    monkeypatch.setattr(E, "_append", flipping)
    async with hdsd.AsyncClient(source) as c:
        with trio.fail_after(120), pytest.raises(hdsd.IntegrityError, match="spool"):
            await hdsd.export_tenant(c, io.BytesIO(), spool=tmp_path)
    assert damaged
