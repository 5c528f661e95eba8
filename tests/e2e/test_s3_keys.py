"""S3 access keys on a real two-site cluster (processes): `hdsd s3 key create` at one site is a
working credential at both (each node's own catalog copy, opened with its own master key file),
revocation reaches both — also a node that was down — and survives restarts; every create and
revoke is an audit record that names the key, never its secret; CLI errors are one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hdsd.catalog import CATALOG_FILE, Catalog
from hdsd.cluster import HybridClock
from hdsd.node import S3Keys, load_node_config
from hdsd.node._masterkey import load_master
from hdsd.s3 import S3AuthError, authenticate
from tests.helpers.cluster import NodeProcess, hdsd, init_cluster, start_all

pytestmark = pytest.mark.e2e

T = 60  # seconds: generous bound around every poll
NODES = ("dc1-n1", "dc2-n1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[NodeProcess]]]:
    root = tmp_path_factory.mktemp("s3keys")
    init_cluster(root)
    nodes = start_all([root / n / "node.toml" for n in NODES])
    try:
        assert hdsd("--profile", str(root / "client.toml"), "tenant", "create",
                    "chu").returncode == 0
        yield root, nodes
    finally:
        for n in nodes:
            n.kill()


def _cli(root: Path, *args: str, profile: str = "client.toml") -> tuple[int, str]:
    proc = hdsd("--profile", str(root / profile), "--timeout", "20", *args)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _lookup_at(root: Path, node: str) -> S3Keys:
    """What node *node*'s S3 gateway looks keys up with: its own catalog file (replicated to
    it), its own master key file."""
    config = load_node_config(root / node / "node.toml")
    catalog = Catalog(config.data_dir / CATALOG_FILE)

    def usable(tenant: str) -> bool:
        entry = catalog.tenant(tenant)
        return entry is not None and entry.has_keys

    return S3Keys(catalog, load_master(config), HybridClock(), tenant_usable=usable)


def _verifies(root: Path, node: str, akid: str, secret: str,
              refused: str = "InvalidAccessKeyId") -> bool:
    req = AWSRequest(method="PUT", url="https://127.0.0.1:9443/scans/ct-1.dcm", data=b"x")
    S3SigV4Auth(Credentials(akid, secret), "s3", "hdsd").add_auth(req)
    headers = [("Host", "127.0.0.1:9443"), *req.prepare().headers.items()]
    keys = _lookup_at(root, node)
    try:
        auth = authenticate("PUT", "/scans/ct-1.dcm", headers, keys, now=datetime.now(UTC),
                            region="hdsd")
    except S3AuthError as exc:
        assert exc.code == refused, exc
        return False
    assert (auth.credential.tenant, auth.credential.role) == ("chu", "writer")
    return True


def _listed(root: Path, site: str, tenant: str = "chu") -> dict[str, str]:
    code, out = _cli(root, "--site", site, "s3", "key", "ls", tenant, "--json",
                     "--cluster-dir", str(root))
    assert code == 0, out
    return {r["access_key_id"]: r["state"] for r in map(json.loads, out.splitlines())}


def _audit(root: Path, node: str, tenant: str) -> tuple[list[dict[str, object]], str]:
    """The tenant's records once a signed checkpoint covers them (every 10 s), and the raw
    export; ([], "") until then."""
    proc = hdsd("audit", "export", "--data-dir", str(root / node / "data"), "--tenant", tenant)
    if proc.returncode != 0:
        assert b"missing checkpoint" in proc.stderr, proc.stderr
        return [], ""
    text = proc.stdout.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()], text


async def test_create_works_at_both_sites_and_revoke_reaches_both_for_good(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    code, out = _cli(root, "s3", "key", "create", "chu", "--role", "writer", "--json",
                     "--cluster-dir", str(root))
    assert code == 0, out
    made = json.loads(out)
    akid, secret = made["access_key_id"], made["secret_access_key"]
    assert made["tenant"] == "chu" and made["role"] == "writer"
    assert made["applied_on"] == list(NODES) and made["pending"] == []
    assert Path(made["ca_bundle"]).is_file() and isinstance(made["endpoints"], dict)
    # never stored in clear: not in any node's files
    for node in NODES:
        for f in (root / node / "data").rglob("*"):
            if f.is_file() and f.stat().st_size < 64 << 20:
                assert secret.encode() not in f.read_bytes(), f
    for node in NODES:
        assert _verifies(root, node, akid, secret), node
        wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
        assert not _verifies(root, node, akid, wrong, "SignatureDoesNotMatch"), node
    assert _listed(root, "dc1")[akid] == _listed(root, "dc2")[akid] == "active"

    code, out = _cli(root, "s3", "key", "revoke", akid, "--cluster-dir", str(root))
    assert code == 0 and f"revoked {akid} (tenant chu) on dc1-n1, dc2-n1" in out, out
    for node in NODES:
        assert not _verifies(root, node, akid, secret), node
    for n in nodes:  # both sites restart: still revoked
        n.stop()
        n.start()
    assert _listed(root, "dc1")[akid] == _listed(root, "dc2")[akid] == "revoked"
    for node in NODES:
        assert not _verifies(root, node, akid, secret), node
    code, out = _cli(root, "s3", "key", "revoke", akid, "--cluster-dir", str(root))
    assert code == 0 and f"already revoked {akid}" in out, out
    # the trail: who created and who revoked which key; the secret in no record
    with trio.fail_after(T):
        while True:
            records, text = _audit(root, "dc1-n1", "default")
            ops = {(r["op"], r["key"]) for r in records if str(r["key"]).startswith("s3key:")}
            if ("S3KeyRevoke", f"s3key:{akid}") in ops and any(
                    op == "S3KeyCreate" and akid in str(key) for op, key in ops):
                break
            await trio.sleep(0.5)
    assert secret not in text


async def test_a_node_that_was_down_learns_the_revocation(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, nodes = cluster
    code, out = _cli(root, "s3", "key", "create", "chu", "--json", "--cluster-dir", str(root))
    assert code == 0, out
    made = json.loads(out)
    akid, secret = made["access_key_id"], made["secret_access_key"]
    assert _verifies(root, "dc2-n1", akid, secret)
    nodes[1].stop()
    code, out = _cli(root, "s3", "key", "revoke", akid, "--cluster-dir", str(root))
    assert code == 0 and "not yet on dc2-n1" in out, out
    assert not _verifies(root, "dc1-n1", akid, secret)
    nodes[1].start()  # "listening" is printed after its start-up catalog sync
    assert not _verifies(root, "dc2-n1", akid, secret)
    assert _listed(root, "dc2")[akid] == "revoked"


def test_cli_errors_are_one_line(cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    for args, exit_code, words in (
            (["create", "nobody"], 4, "tenant 'nobody' has no keys"),
            (["create", "chu", "--role", "root"], 2, "Invalid value for '--role'"),
            (["revoke", "HDSDNOSUCHKEY0000000"], 3, "no S3 access key HDSDNOSUCHKEY0000000"),
            (["revoke", "lowercase-id"], 2, "must be 16 to 128 characters"),
    ):
        code, out = _cli(root, "s3", "key", *args, "--cluster-dir", str(root))
        assert code == exit_code and words in out, (args, out)
        assert "Traceback" not in out, out
        if "--role" not in args:  # hdsd's own errors: one line (click's usage errors: 4)
            lines = out.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("hdsd: error:"), out


def test_only_the_operator_or_the_tenants_admin_manage_keys(
        cluster: tuple[Path, list[NodeProcess]]) -> None:
    root, _ = cluster
    code, out = _cli(root, "cert", "issue", "--client", "modality", "--tenant", "chu",
                     "--role", "writer", "--cluster-dir", str(root))
    assert code == 0, out
    code, out = _cli(root, "s3", "key", "create", "chu", profile="clients/modality.toml")
    assert code == 4 and "may not administer" in out, out
    code, out = _cli(root, "cert", "issue", "--client", "chu-admin", "--tenant", "chu",
                     "--role", "admin", "--cluster-dir", str(root))
    assert code == 0, out
    code, out = _cli(root, "s3", "key", "create", "chu", "--role", "reader",
                     profile="clients/chu-admin.toml")
    assert code == 0 and "role reader" in out, out
    code, out = _cli(root, "s3", "key", "create", "default", profile="clients/chu-admin.toml")
    assert code == 4 and "may not administer tenant 'default'" in out, out
    code, out = _cli(root, "s3", "key", "ls", profile="clients/chu-admin.toml")
    assert code == 0 and "chu" in out and "reader" in out, out
