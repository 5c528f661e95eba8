"""S3 access keys on one node, in process: the lookup the gateway verifies with (cached per
catalog entry, so a revocation — local, pushed or synced — applies to the next request), the
secret bound to its id, tenant and role, master key rotation, and what `s3 key create --json`
says about endpoints."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from nacl import utils

from hdsd import ConfigError, NotFound, RequestIdConflict
from hdsd.catalog import Catalog, TenantEntry, unwrap_secret, wrap_secret
from hdsd.cli._s3keys import s3_endpoints
from hdsd.client import load_profile
from hdsd.cluster import HybridClock
from hdsd.node import S3Keys, load_node_config
from hdsd.node._masterkey import load_master, rotate_master
from hdsd.s3 import S3AuthError, authenticate
from tests.helpers.cluster import init_cluster, s3_url

MASTER = utils.random(32)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.apply([TenantEntry(name="chu", wrapped=b"k" * 72, created=1),
               TenantEntry(name="gone", wrapped=b"", created=1, shredded=2)])
    yield cat  # type: ignore[misc]
    cat.close()


def _keys(catalog: Catalog, master: bytes = MASTER) -> S3Keys:
    def usable(t: str) -> bool:
        entry = catalog.tenant(t)
        return entry is not None and entry.has_keys

    return S3Keys(catalog, master, HybridClock(), tenant_usable=usable)


def _signed(akid: str, secret: str) -> tuple[str, list[tuple[str, str]]]:
    req = AWSRequest(method="GET", url="https://127.0.0.1:9443/scans/a.dcm")
    req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials(akid, secret), "s3", "hdsd").add_auth(req)
    return "/scans/a.dcm", [("Host", "127.0.0.1:9443"), *req.prepare().headers.items()]


def test_created_key_verifies_and_revocation_applies_to_the_next_request(
        catalog: Catalog) -> None:
    keys = _keys(catalog)
    entry, secret, _ = keys.create("chu", "writer", by="admin@default")
    assert secret not in repr(entry) and len(secret) == 40 and entry.access_key_id[:4] == "HDSD"
    catalog.apply([entry])
    target, headers = _signed(entry.access_key_id, secret)
    auth = authenticate("GET", target, headers, keys, now=datetime.now(UTC), region="hdsd")
    assert (auth.credential.tenant, auth.credential.role) == ("chu", "writer")
    assert keys(entry.access_key_id) is keys(entry.access_key_id)  # cached, not re-unwrapped
    revocation, already = keys.revoke(entry.access_key_id, by="admin@default")
    assert not already and revocation.wrapped == b""
    catalog.apply([revocation])  # as a push or a sync would
    with pytest.raises(S3AuthError) as info:
        authenticate("GET", target, headers, keys, now=datetime.now(UTC), region="hdsd")
    assert info.value.code == "InvalidAccessKeyId"
    assert keys.revoke(entry.access_key_id, by="x")[1] is True  # idempotent
    with pytest.raises(NotFound):
        keys.revoke("HDSDNOSUCHKEY0000000", by="x")


def test_keys_of_a_shredded_tenant_do_not_authenticate(catalog: Catalog) -> None:
    keys = _keys(catalog)
    entry, _secret, _ = keys.create("gone", "reader", by="op")
    catalog.apply([entry])
    assert keys(entry.access_key_id) is None


def test_the_secret_is_bound_to_its_id_tenant_and_role() -> None:
    blob = wrap_secret(MASTER, "HDSDAAAAAAAAAAAAAAAA", "chu", "reader", "s3cret")
    assert unwrap_secret(MASTER, "HDSDAAAAAAAAAAAAAAAA", "chu", "reader", blob) == "s3cret"
    for akid, tenant, role in (("HDSDBBBBBBBBBBBBBBBB", "chu", "reader"),
                               ("HDSDAAAAAAAAAAAAAAAA", "other", "reader"),
                               ("HDSDAAAAAAAAAAAAAAAA", "chu", "admin")):
        with pytest.raises(ConfigError):
            unwrap_secret(MASTER, akid, tenant, role, blob)
    with pytest.raises(ConfigError):
        unwrap_secret(utils.random(32), "HDSDAAAAAAAAAAAAAAAA", "chu", "reader", blob)


def test_an_entry_edited_to_a_stronger_role_is_useless(catalog: Catalog) -> None:
    keys = _keys(catalog)
    entry, _, _ = keys.create("chu", "reader", by="op")
    catalog.apply([replace(entry, role="admin")])
    assert keys(entry.access_key_id) is None  # the wrap does not open: no credential


def test_master_key_rotation_rewraps_s3_secrets(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    config = load_node_config(tmp_path / "dc1-n1" / "node.toml")
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    old, new = load_master(config), utils.random(32)
    cat = Catalog(data / "catalog.sqlite")
    try:
        keys = _keys(cat, old)
        live, secret, _ = keys.create("default", "writer", by="op")
        gone, _, _ = keys.create("default", "reader", by="op")
        cat.apply([live, gone])
        cat.apply([keys.revoke(gone.access_key_id, by="op")[0]])
    finally:
        cat.close()
    assert rotate_master(data, old, new) >= 1
    assert rotate_master(data, old, new) == 0  # idempotent: a rerun after a crash
    cat = Catalog(data / "catalog.sqlite")
    try:
        record = _keys(cat, new)(live.access_key_id)
        assert record is not None and record.secret == secret
        assert _keys(cat, old)(live.access_key_id) is None
    finally:
        cat.close()


def test_endpoints_from_the_profile_then_from_node_configs(tmp_path: Path) -> None:
    profile_path = init_cluster(tmp_path)
    profile = load_profile(profile_path)
    # hdsd init enables every node's gateway (HTTPS)
    assert s3_endpoints(profile, tmp_path) == {
        site: [s3_url(tmp_path / f"{site}-n1" / "node.toml")] for site in ("dc1", "dc2")}
    for config in tmp_path.glob("dc*-n1/node.toml"):  # now without: only the ones below
        config.write_text(re.sub(r"^\[s3\].*?(?=^\[)", "", config.read_text(),
                                 flags=re.M | re.S))
    assert s3_endpoints(profile, tmp_path) == {}
    # node configurations that say where their gateway listens
    both = 'listen = ["[::1]:9443"]\nplain_http = ["127.0.0.1:9080"]'
    for name, site, s3 in (("a", "dc1", 'listen = ["0.0.0.0:9000"]'), ("b", "dc2", both)):
        (tmp_path / "spec" / name).mkdir(parents=True)
        (tmp_path / "spec" / name / "node.toml").write_text(
            f'[node]\nsite = "{site}"\nlisten = "10.0.0.{ord(name)}:7400"\n[s3]\n{s3}\n')
    assert s3_endpoints(profile, tmp_path) == {
        "dc1": ["https://10.0.0.97:9000"],
        "dc2": ["https://[::1]:9443", "http://127.0.0.1:9080"]}
    # a profile that lists them wins
    text = profile_path.read_text().replace(
        "[sites.dc1]", '[sites.dc1]\ns3_endpoints = ["https://s3.dc1.example:443"]')
    (tmp_path / "p.toml").write_text(text)
    assert s3_endpoints(load_profile(tmp_path / "p.toml"), tmp_path) == {
        "dc1": ["https://s3.dc1.example:443"]}


def test_a_retried_creation_answers_the_same_key(catalog: Catalog) -> None:
    """With a request id, a creation retried after a lost reply — on this node or another
    (same master key) before the first entry reached it — makes the same key and secret."""
    keys, elsewhere = _keys(catalog), _keys(catalog)
    rid = b"r" * 16
    entry, secret, replayed = keys.create("chu", "writer", by="op", request_id=rid)
    assert not replayed
    twin, twin_secret, _ = elsewhere.create("chu", "writer", by="other", request_id=rid)
    assert (twin.access_key_id, twin_secret) == (entry.access_key_id, secret)
    catalog.apply([entry])
    again, again_secret, replayed = keys.create("chu", "writer", by="op", request_id=rid)
    assert replayed and again == entry and again_secret == secret
    path, headers = _signed(entry.access_key_id, secret)
    assert authenticate("GET", path, headers, keys, now=datetime.now(UTC),
                        region="hdsd").credential.role == "writer"
    with pytest.raises(RequestIdConflict):  # the id names that request, not another role
        keys.create("chu", "admin", by="op", request_id=rid)
    other, _, _ = keys.create("chu", "writer", by="op", request_id=b"s" * 16)
    assert other.access_key_id != entry.access_key_id
    revoked, _ = keys.revoke(entry.access_key_id, by="op")
    catalog.apply([revoked])
    with pytest.raises(RequestIdConflict):  # revoked since: no secret handed out again
        keys.create("chu", "writer", by="op", request_id=rid)
    assert _keys(catalog, utils.random(32)).create(
        "chu", "writer", by="op", request_id=b"t" * 16)[0].access_key_id != \
        keys.create("chu", "writer", by="op", request_id=b"t" * 16)[0].access_key_id
