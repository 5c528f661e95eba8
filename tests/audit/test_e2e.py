"""End to end: real nodes write one audit record per request, ship them to the other site,
and `hdsd audit verify` checks both copies offline and names an edited record."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import hdsd
from hdsd.audit import AuditRecord, copy_dir, open_audit_names, read_records
from hdsd.audit._chain import parse_segment
from hdsd.audit._verify import list_segments
from hdsd.catalog import KEYRING_FILE, Keyring, load_master_key
from hdsd.pipeline import NameSeal
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.cluster import hdsd as run_cli

pytestmark = pytest.mark.e2e

ORIGIN, OTHER = "dc1-n1", "dc2-n1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, NodeProcess, NodeProcess]]:
    root = tmp_path / "cluster"
    init_cluster(root)
    for name in (ORIGIN, OTHER):
        config = root / name / "node.toml"
        config.write_text(config.read_text() + "\n[audit]\ncheckpoint_s = 0.2\n"
                          "refusals_interval_s = 0.5\n")
    run_cli("cert", "issue", "--client", "reader1", "--tenant", "default", "--role", "reader",
            "--cluster-dir", str(root), check=True)
    other = NodeProcess(root / OTHER / "node.toml").start()
    origin = NodeProcess(root / ORIGIN / "node.toml").start()
    try:
        yield root, origin, other
    finally:
        origin.kill()
        other.kill()


def _wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 60  # bounds a hang only; nothing is timed
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _requests(directory: Path) -> list[AuditRecord]:
    """Client request records, their bucket and key names opened (they are sealed under the
    tenant's key in the log: see test_names_are_sealed)."""
    seal = _seal(directory)
    return [replace(r, **dict(zip(("bucket", "key"), open_audit_names(
                seal, r.tenant, r.bucket, r.key), strict=True)))
            for r in read_records(directory) if r.kind == "request" and r.op != "connect"]


def _seal(directory: Path) -> NameSeal:
    root = next(p for p in directory.parents if (p / "client.toml").exists())
    keys = Keyring(root / ORIGIN / "data" / KEYRING_FILE,
                   load_master_key(root / "master.key")).get("default")
    assert keys is not None
    return NameSeal(keys)


def test_names_are_sealed(cluster: tuple[Path, NodeProcess, NodeProcess]) -> None:
    root, origin, _ = cluster
    with hdsd.Client(root / "client.toml") as admin:
        admin.put("patient-77-bernard", "irm/patient-77-bernard.dcm", b"x")
        admin.list("patient-77-bernard", prefix="irm/patient-77")
    local = root / ORIGIN / "data" / "audit"
    _wait_for(lambda: len([r for r in _requests(local)
                           if r.bucket == "patient-77-bernard"]) == 2, "the records")
    raw = [r for r in read_records(local) if r.kind == "request" and r.op != "connect"]
    assert raw and all(r.bucket.startswith("sealed:") and r.key.startswith("id:") for r in raw
                       if r.tenant == "default" and r.op in ("PutStart", "ListRequest"))
    assert not any(b"patient-77" in p.read_bytes() for _, p in list_segments(local))
    assert origin.stop() == 0, origin.log()
    data = str(root / ORIGIN / "data")
    sealed = run_cli("audit", "export", "--data-dir", data, "--tenant", "default",
                     check=True).stdout
    assert b"patient-77" not in sealed
    opened = run_cli("audit", "export", "--data-dir", data, "--tenant", "default", "--config",
                     str(root / ORIGIN / "node.toml"), check=True).stdout
    lines = [json.loads(x) for x in opened.splitlines()]
    assert [(x["op"], x["bucket"], x["key"]) for x in lines if x["op"] != "StatusRequest"
            and x["bucket"]] == [("PutStart", "patient-77-bernard", "irm/patient-77-bernard.dcm"),
                                 ("ListRequest", "patient-77-bernard", "irm/patient-77")]


def test_requests_are_audited_shipped_and_verified(
        cluster: tuple[Path, NodeProcess, NodeProcess]) -> None:
    root, origin, _ = cluster
    with hdsd.Client(root / "client.toml") as admin:
        info = admin.put("scans", "p1/ct.dcm", b"x" * 1000)
        assert admin.get("scans", "p1/ct.dcm") == b"x" * 1000
        admin.delete("scans", "p1/ct.dcm")
    with hdsd.Client(root / "clients" / "reader1.toml") as reader:
        with pytest.raises(hdsd.PermissionDenied):
            reader.put("scans", "p1/ct.dcm", b"overwrite")

    run_cli("--profile", str(root / "client.toml"), "site", "restore", "dc1", check=True)
    # A connection that is not even TLS: refused, and audited as such.
    host, port = hdsd.client.load_profile(root / "client.toml").endpoints()[0]
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw.recv(100)

    local = root / ORIGIN / "data" / "audit"
    shipped = copy_dir(root / OTHER / "data" / "audit", ORIGIN)
    want = [("PutStart", "admin", "ok"), ("GetRequest", "admin", "ok"),
            ("DeleteRequest", "admin", "ok"), ("PutStart", "reader1", "permission_denied")]

    def seen(directory: Path) -> list[tuple[str, str, str]]:
        return [(r.op, r.identity, r.outcome) for r in _requests(directory)
                if r.bucket == "scans"]

    _wait_for(lambda: seen(local) == want, "the origin's records")
    _wait_for(lambda: any((r.op, r.role, r.outcome) == ("SiteModeRequest", "admin", "ok")
                          for r in read_records(local)), "the admin action's record")
    _wait_for(lambda: any(r.op == "connect" and r.identity == "?" and r.outcome != "ok"
                          for r in read_records(local)), "the refused connection's record")
    _wait_for(lambda: seen(shipped) == want, "the records shipped to the other site")
    put, get, delete, denied = [r for r in _requests(local) if r.bucket == "scans"]
    assert (put.tenant, put.role, put.key, put.version) == ("default", "admin", "p1/ct.dcm",
                                                           info.version)
    assert put.bytes_in == 1000 and get.bytes_out == 1000 and delete.version
    assert denied.role == "reader" and denied.bytes_in == 0
    assert all(r.peer.startswith("127.0.0.1:") and r.node == ORIGIN for r in (put, denied))

    # Replication and audit shipping between the nodes are not client requests: not audited.
    assert {r.op for r in read_records(root / OTHER / "data" / "audit")} <= {""}
    assert origin.stop() == 0, origin.log()  # graceful: the final checkpoint is signed, shipped
    # The key `hdsd init` gave the auditor is the one the node signs with.
    pubkey = str(root / "audit-keys" / f"{ORIGIN}.pub")
    assert (local / "verify.key").read_bytes() == Path(pubkey).read_bytes()
    ok = run_cli("audit", "verify", "--data-dir", str(root / ORIGIN / "data"), "--pubkey", pubkey)
    assert ok.returncode == 0, ok.stderr.decode()
    ok = run_cli("audit", "verify", "--data-dir", str(root / OTHER / "data"), "--origin", ORIGIN,
                 "--pubkey", pubkey)
    assert ok.returncode == 0, ok.stderr.decode()
    assert b"ok: audit log of dc1-n1" in ok.stdout

    exported = run_cli("audit", "export", "--data-dir", str(root / ORIGIN / "data"),
                       "--tenant", "default", "--format", "jsonl", "--config",
                       str(root / ORIGIN / "node.toml"), check=True).stdout
    lines = [json.loads(line) for line in exported.splitlines()]
    assert [(x["op"], x["identity"]) for x in lines if x["bucket"] == "scans"] == \
        [(op, who) for op, who, _ in want]
    assert run_cli("audit", "export", "--data-dir", str(root / ORIGIN / "data"), "--tenant",
                   "nobody", check=True).stdout == b""

    # No key material anywhere in the logs or the export: master, tenant, signing keys.
    master = load_master_key(root / "master.key")
    tenant_keys = Keyring(root / ORIGIN / "data" / KEYRING_FILE, master).get("default")
    assert tenant_keys is not None
    secrets = [master, tenant_keys.data_key, tenant_keys.dedup_key,
               (local / "signing.key").read_bytes()]
    blobs = [p.read_bytes() for d in (local, shipped) for _, p in list_segments(d)]
    for secret in secrets:
        assert len(secret) == 32
        assert not any(secret in blob or secret.hex().encode() in blob for blob in blobs)
        assert secret.hex().encode() not in exported

    # One byte edited in the copy: verify names that record and exits non-zero.
    target = next(r for r in _requests(shipped) if r.identity == "reader1")
    for _, path in list_segments(shipped):
        raw = bytearray(path.read_bytes())
        parsed = parse_segment(bytes(raw))
        first = parsed.header.first_seq
        for i, (offset, body, _) in enumerate(parsed.frames):
            if first + i == target.seq:
                where = offset + 4 + body.index(b"reader1")
                raw[where] ^= 0x20  # reader1 -> Reader1
                path.write_bytes(bytes(raw))
    bad = run_cli("audit", "verify", "--data-dir", str(root / OTHER / "data"), "--origin", ORIGIN,
                  "--pubkey", pubkey)
    assert bad.returncode == 5
    assert f"seq {target.seq}: hash mismatch" in bad.stderr.decode()
    assert b"Traceback" not in bad.stderr


@pytest.fixture
def unsigned_cluster(tmp_path: Path) -> Iterator[tuple[Path, NodeProcess, NodeProcess]]:
    """Checkpoints only at a stop: a live node's tail stays unsigned while the test looks."""
    root = tmp_path / "cluster"
    init_cluster(root)
    for name in (ORIGIN, OTHER):
        config = root / name / "node.toml"
        config.write_text(config.read_text() + "\n[audit]\ncheckpoint_s = 3600\n")
    other = NodeProcess(root / OTHER / "node.toml").start()
    origin = NodeProcess(root / ORIGIN / "node.toml").start()
    try:
        yield root, origin, other
    finally:
        origin.kill()
        other.kill()


def _verdict(*args: str) -> str:
    proc = run_cli("audit", "verify", *args)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return proc.stdout.decode().strip().splitlines()[-1]


def test_verify_on_a_live_node_and_on_a_copy_whose_origin_stopped_last(
        unsigned_cluster: tuple[Path, NodeProcess, NodeProcess]) -> None:
    root, origin, other = unsigned_cluster
    with hdsd.Client(root / "client.toml") as admin:
        for i in range(20):
            admin.put("scans", f"live/{i}", b"x" * 100)
            assert admin.get("scans", f"live/{i}") == b"x" * 100
    local = root / ORIGIN / "data" / "audit"
    shipped = copy_dir(root / OTHER / "data" / "audit", ORIGIN)
    _wait_for(lambda: sum(r.bucket == "scans" for r in _requests(local)) == 40, "the records")
    _wait_for(lambda: sum(r.bucket == "scans" for r in _requests(shipped)) == 40, "the copy")
    pubkey = str(root / "audit-keys" / f"{ORIGIN}.pub")
    # The node is running and has signed nothing since it started: exit 0, an unsigned tail.
    for _ in range(3):
        line = _verdict("--data-dir", str(root / ORIGIN / "data"), "--pubkey", pubkey)
        assert line.startswith("verdict: unsigned tail: ") and "not yet checkpointed" in line
    # The receiver stops first, then the origin: its final checkpoint never reaches the copy.
    assert other.stop() == 0, other.log()
    assert origin.stop() == 0, origin.log()
    line = _verdict("--data-dir", str(root / OTHER / "data"), "--origin", ORIGIN,
                    "--pubkey", pubkey)
    assert line.startswith("verdict: unsigned tail: ") and "records" in line, line
    # The origin's own log ends with the checkpoint of its clean stop.
    line = _verdict("--data-dir", str(root / ORIGIN / "data"), "--pubkey", pubkey)
    assert line.startswith("verdict: signed: "), line
