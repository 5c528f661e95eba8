from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from hdsd import AuthenticationFailed, ConfigError
from hdsd.transport import (
    ROLES,
    Identity,
    create_ca,
    identity_from_der,
    issue_client_cert,
    issue_node_cert,
    issued_certificates,
    read_certificate,
    serial_hex,
    verify_issued,
)
from hdsd.transport._certs import _parse_uri

from .conftest import Pki

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def der(path: Path) -> bytes:
    return load(path).public_bytes(serialization.Encoding.DER)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_node_certificate_carries_identity_hosts_and_usages(pki: Pki) -> None:
    cert = load(pki.node_a[0])
    assert identity_from_der(der(pki.node_a[0])) == Identity("node", "a", "s1", None, None, "c1")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["hdsd://c1/node/s1/a"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {SERVER, CLIENT}
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"


def test_client_certificate_carries_identity_and_client_usage_only(pki: Pki) -> None:
    cert = load(pki.client[0])
    assert identity_from_der(der(pki.client[0])) == Identity(
        "client", "alice", None, "t1", "writer", "c1"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {CLIENT}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == []


def test_validity_windows(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    ca, leaf, node = load(pki.ca), load(pki.client[0]), load(pki.node_a[0])
    assert leaf.not_valid_before_utc < now - dt.timedelta(minutes=30)
    # clients live 90 days by default (they leak), nodes two years
    assert dt.timedelta(days=89) < leaf.not_valid_after_utc - now < dt.timedelta(days=91)
    assert dt.timedelta(days=700) < node.not_valid_after_utc - now < dt.timedelta(days=740)
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    assert ca.not_valid_after_utc - now > dt.timedelta(days=3600)
    leaf.verify_directly_issued_by(ca)


def test_private_keys_are_0600_and_no_temporary_files_remain(pki: Pki) -> None:
    for key in (pki.ca_dir / "ca.key", pki.node_a[1], pki.node_b[1], pki.client[1]):
        assert mode(key) == 0o600, key
    assert mode(pki.ca_dir) == 0o700
    for directory in (pki.ca_dir, pki.client[0].parent):
        assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_create_ca_refuses_to_overwrite(pki: Pki) -> None:
    before = pki.ca.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_ca(pki.ca_dir, "c1")
    assert pki.ca.read_bytes() == before


def test_reissue_replaces_the_files(tmp_path: Path, pki: Pki) -> None:
    first = issue_client_cert(pki.ca_dir, tmp_path, name="bob", tenant="t2", role="reader")
    old = first[0].read_bytes()
    second = issue_client_cert(pki.ca_dir, tmp_path, name="bob", tenant="t2", role="reader")
    assert second == first and first[0].read_bytes() != old
    assert mode(second[1]) == 0o600


@pytest.mark.parametrize("bad", ["", "A", "-a", ".a", "a/b", "a b", "é", "a:b", "x" * 64])
def test_invalid_names_are_refused(tmp_path: Path, pki: Pki, bad: str) -> None:
    with pytest.raises(ConfigError):
        issue_node_cert(pki.ca_dir, tmp_path, name=bad, site="s1")
    with pytest.raises(ConfigError):
        issue_node_cert(pki.ca_dir, tmp_path, name="n", site=bad)
    with pytest.raises(ConfigError):
        issue_client_cert(pki.ca_dir, tmp_path, name=bad, tenant="t", role="admin")
    with pytest.raises(ConfigError):
        issue_client_cert(pki.ca_dir, tmp_path, name="c", tenant=bad, role="admin")
    with pytest.raises(ConfigError):
        create_ca(tmp_path / "ca", bad)
    assert not list(tmp_path.iterdir())


def test_longest_valid_name_is_accepted(tmp_path: Path, pki: Pki) -> None:
    name = "x" * 63
    cert, _ = issue_client_cert(pki.ca_dir, tmp_path, name=name, tenant="t", role="auditor")
    assert identity_from_der(der(cert)).name == name


@pytest.mark.parametrize("role", ["root", "Admin", "", "writer "])
def test_unknown_role_is_refused(tmp_path: Path, pki: Pki, role: str) -> None:
    with pytest.raises(ConfigError, match="role"):
        issue_client_cert(pki.ca_dir, tmp_path, name="c", tenant="t", role=role)


@pytest.mark.parametrize("hosts", [(), ("bad host",), ("-x.example",), "127.0.0.1"])
def test_bad_hosts_are_refused(tmp_path: Path, pki: Pki, hosts: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        issue_node_cert(pki.ca_dir, tmp_path, name="n", site="s", hosts=hosts)


def test_node_hosts_may_be_ipv6_and_dns(tmp_path: Path, pki: Pki) -> None:
    cert, _ = issue_node_cert(
        pki.ca_dir, tmp_path, name="n", site="s", hosts=("::1", "Node1.DC-A.example.", "::1")
    )
    san = load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["node1.dc-a.example"]


def test_missing_ca_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "nope")):
        issue_client_cert(tmp_path / "nope", tmp_path, name="c", tenant="t", role="admin")


def test_ca_key_that_does_not_match_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    ca = tmp_path / "ca"
    ca.mkdir()
    (ca / "ca.crt").write_bytes(pki.ca.read_bytes())
    (ca / "ca.key").write_bytes((pki.other_ca_dir / "ca.key").read_bytes())
    with pytest.raises(ConfigError, match="not the key"):
        issue_client_cert(ca, tmp_path, name="c", tenant="t", role="admin")


@given(cluster=NAMES, site=NAMES, tenant=NAMES, name=NAMES, role=st.sampled_from(ROLES))
def test_identity_uri_round_trips(cluster: str, site: str, tenant: str, name: str,
                                  role: str) -> None:
    node = Identity("node", name, site, None, None, cluster)
    client = Identity("client", name, None, tenant, role, cluster)
    assert _parse_uri(node.uri) == node
    assert _parse_uri(client.uri) == client
    # One kind can never be read as the other.
    assert node.uri != client.uri


@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_fail_authentication(data: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        identity_from_der(data)


# --- certificates that are not hdsd node/client certificates --------------------------------


def forge(uris: list[str], usages: list[x509.ObjectIdentifier] | None, *,
          ca: bool = False) -> bytes:
    """A self-signed certificate with the given URI SANs and EKUs (signature irrelevant here:
    identity_from_der is only ever called on certificates TLS has already verified)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if uris:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if usages is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_forge_helper_builds_an_acceptable_certificate() -> None:
    # Guards the rejection tests below: they fail for the reason they name, not another.
    assert identity_from_der(forge(["hdsd://c/node/s/n"], [SERVER, CLIENT])).kind == "node"
    assert identity_from_der(forge(["hdsd://c/client/t/reader/n"], [CLIENT])).kind == "client"


@pytest.mark.parametrize(
    ("uris", "usages", "ca"),
    [
        ([], [SERVER, CLIENT], False),  # no hdsd name
        (["https://c/node/s/n"], [SERVER, CLIENT], False),
        (["hdsd://c/node/s/n", "hdsd://c/node/s/m"], [SERVER, CLIENT], False),  # ambiguous
        (["hdsd://c/ca"], [SERVER, CLIENT], False),
        (["hdsd://c/node/s/n"], [SERVER, CLIENT], True),  # a CA posing as a node
        (["hdsd://c/node/s/n/extra"], [SERVER, CLIENT], False),
        (["hdsd://c/node/S/n"], [SERVER, CLIENT], False),
        (["hdsd://c/client/t/root/n"], [CLIENT], False),  # unknown role
        (["hdsd://c/node/s/n"], [CLIENT], False),  # node without serverAuth
        (["hdsd://c/node/s/n"], None, False),
        (["hdsd://c/client/t/reader/n"], [SERVER, CLIENT], False),  # client able to serve
        (["hdsd://c/client/t/reader/n"], [SERVER], False),
    ],
)
def test_non_hdsd_certificates_are_refused(
    uris: list[str], usages: list[x509.ObjectIdentifier] | None, ca: bool
) -> None:
    with pytest.raises(AuthenticationFailed):
        identity_from_der(forge(uris, usages, ca=ca))


def test_our_ca_certificate_is_not_a_peer(pki: Pki) -> None:
    with pytest.raises(AuthenticationFailed):
        identity_from_der(der(pki.ca))


def test_identity_carries_the_serial_without_changing_who(pki: Pki) -> None:
    ident = identity_from_der(der(pki.client[0]))
    assert ident.serial == load(pki.client[0]).serial_number > 0
    assert ident.serial_hex == format(ident.serial, "x") == serial_hex(ident.serial)
    assert ident == Identity("client", "alice", None, "t1", "writer", "c1")  # serial aside


def test_the_ca_records_every_certificate_it_issues(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca", "c9")
    issue_client_cert(tmp_path / "ca", tmp_path / "out", name="bob", tenant="t",
                      role="reader", days=7)
    second, _ = issue_client_cert(tmp_path / "ca", tmp_path / "out", name="bob", tenant="t",
                                  role="reader")  # re-issue: same file, a second record
    issue_node_cert(tmp_path / "ca", tmp_path / "out", name="n1", site="s")
    records = issued_certificates(tmp_path / "ca")
    assert [(r.identity.kind, r.identity.name) for r in records] == [
        ("client", "bob"), ("client", "bob"), ("node", "n1")]
    assert records[1].serial == read_certificate(second.read_bytes()).serial
    assert records[0].serial != records[1].serial
    assert dt.timedelta(days=6) < records[0].not_after - records[0].not_before < \
        dt.timedelta(days=8)
    with pytest.raises(ConfigError, match="lifetime"):
        issue_client_cert(tmp_path / "ca", tmp_path / "out", name="x", tenant="t",
                          role="reader", days=731)


def test_verify_issued_accepts_only_the_cluster_cas_certificates(pki: Pki,
                                                                 tmp_path: Path) -> None:
    ok = verify_issued(pki.ca.read_bytes(), der(pki.client[0]))
    assert ok.identity.name == "alice"
    assert ok.serial == serial_hex(load(pki.client[0]).serial_number)
    create_ca(tmp_path / "other", "c1")  # same cluster id, another CA
    foreign, _ = issue_client_cert(tmp_path / "other", tmp_path, name="alice", tenant="t1",
                                   role="writer")
    with pytest.raises(AuthenticationFailed, match="not issued by this cluster"):
        verify_issued(pki.ca.read_bytes(), der(foreign))
    with pytest.raises(AuthenticationFailed):
        verify_issued(pki.ca.read_bytes(), b"garbage")
