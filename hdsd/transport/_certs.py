"""The cluster CA, node and client certificates, and the identity they carry.

Key type: **ECDSA P-256** with SHA-256 signatures, for the CA and every leaf. RFC 8446 §9.1 makes
``ecdsa_secp256r1_sha256`` mandatory for every TLS 1.3 implementation (Ed25519 is optional), so
any client stack an operator may point at a node can verify it; key generation and signing take
well under a millisecond.

How an identity is written into a certificate (and read back by :func:`identity_from_der`):
exactly one subjectAltName **URI** with the ``hdsd`` scheme, one of ::

    hdsd://<cluster>/ca                                   the CA itself (never a peer)
    hdsd://<cluster>/node/<site>/<name>                   a node
    hdsd://<cluster>/client/<tenant>/<role>/<name>        a client

Every component matches ``[a-z0-9][a-z0-9._-]{0,62}`` (no ``/``, ``:``, ``@`` or upper case), so
a URI has exactly one parse and one kind cannot pass for another. The subject common name is the
node or client name, for humans and logs only; it is never used for authorisation. The extended
key usage must agree with the kind: nodes carry serverAuth + clientAuth (they serve and dial
peers), clients carry clientAuth only, so OpenSSL itself refuses a client certificate presented
by a server.

Files: ``create_ca`` writes ``ca.crt`` and ``ca.key``; ``issue_node_cert`` writes
``node-<name>.crt`` / ``.key``; ``issue_client_cert`` writes ``client-<name>@<tenant>.crt`` /
``.key``. Every file is written atomically (temporary file, fsync, rename, directory fsync);
private keys are created with mode 0600 from the first byte, never chmod-ed afterwards.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._atomic import atomic_write
from .._errors import AuthenticationFailed, ConfigError

__all__ = [
    "CLIENT_VALIDITY_DAYS",
    "ROLES",
    "ClientRole",
    "Identity",
    "IssuedCert",
    "create_ca",
    "identity_from_der",
    "issue_client_cert",
    "issue_node_cert",
    "issued_certificates",
    "read_certificate",
    "serial_hex",
    "verify_issued",
]

ClientRole = Literal["admin", "writer", "reader", "auditor"]
ROLES: tuple[ClientRole, ...] = get_args(ClientRole)

_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME_RE = re.compile(_NAME)
_NODE_URI = re.compile(rf"hdsd://(?P<cluster>{_NAME})/node/(?P<site>{_NAME})/(?P<name>{_NAME})")
_CLIENT_URI = re.compile(
    rf"hdsd://(?P<cluster>{_NAME})/client/(?P<tenant>{_NAME})/(?P<role>{_NAME})/(?P<name>{_NAME})"
)
_CA_URI = re.compile(rf"hdsd://(?P<cluster>{_NAME})/ca")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_CA_VALIDITY = dt.timedelta(days=3650)
_LEAF_VALIDITY = dt.timedelta(days=730)  # node certificates
# Client certificates live on laptops and in scripts, where they leak: a short life bounds how
# long a leaked one works if nobody notices (revocation is for when somebody does).
CLIENT_VALIDITY_DAYS = 90
MAX_VALIDITY_DAYS = 730
ISSUED_DIR = "issued"
# A fresh certificate must verify on a peer whose clock is a little behind ours.
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end, parsed from its verified certificate.

    Nodes have ``site`` set and ``tenant``/``role`` None; clients the reverse.
    """

    kind: Literal["node", "client"]
    name: str
    site: str | None
    tenant: str | None
    role: ClientRole | None
    cluster_id: str
    # The certificate's serial number (0: unknown), what revocation is keyed by. Not part of
    # *who* the peer is: two certificates of one identity compare equal.
    serial: int = field(default=0, compare=False)

    @property
    def serial_hex(self) -> str:
        """The serial as revocations name it (see :func:`serial_hex`)."""
        return serial_hex(self.serial)

    def __post_init__(self) -> None:
        if not (_valid(self.name) and _valid(self.cluster_id)):
            raise ValueError("invalid name or cluster id")
        if self.kind == "node":
            if not _valid(self.site) or self.tenant is not None or self.role is not None:
                raise ValueError("a node identity has a valid site and no tenant or role")
        elif self.kind == "client":
            if self.site is not None or not _valid(self.tenant) or self.role not in ROLES:
                raise ValueError("a client identity has a valid tenant, a role and no site")
        else:
            raise ValueError(f"unknown identity kind {self.kind!r}")

    @property
    def uri(self) -> str:
        """The subjectAltName URI that carries this identity in a certificate."""
        if self.kind == "node":
            return f"hdsd://{self.cluster_id}/node/{self.site}/{self.name}"
        return f"hdsd://{self.cluster_id}/client/{self.tenant}/{self.role}/{self.name}"


def serial_hex(serial: int) -> str:
    """The canonical text of a certificate serial: lowercase hex, no leading zeros. Serials are
    up to 159 bits (:func:`x509.random_serial_number`), too wide for a msgpack integer."""
    return format(serial, "x")


def _valid(value: object) -> bool:
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


def _check_name(label: str, value: str) -> None:
    if not _valid(value):
        raise ConfigError(
            f"invalid {label} {value!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )


def _parse_uri(uri: str) -> Identity | None:
    """The identity a URI names, or None if it is not a node or client URI."""
    if m := _NODE_URI.fullmatch(uri):
        return Identity("node", m["name"], m["site"], None, None, m["cluster"])
    if (m := _CLIENT_URI.fullmatch(uri)) and m["role"] in ROLES:
        return Identity("client", m["name"], None, m["tenant"], m["role"], m["cluster"])
    return None


# --- files -----------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    # Key first: a crash in between leaves an orphan key, never a certificate without its key.
    atomic_write(key_path, _key_pem(key), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {directory}: {exc.strerror}") from None


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the CA in {ca_dir}: {exc.strerror} ({exc.filename}); "
            "point to the directory `hdsd init` created"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the CA in {ca_dir} is not a PEM certificate and key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(
        cert.public_key()
    ):
        raise ConfigError(f"{key_path} is not the key of {cert_path}; restore the CA backup")
    cluster = None
    for uri in _san_uris(cert):
        if m := _CA_URI.fullmatch(uri):
            cluster = m["cluster"]
    if cluster is None:
        raise ConfigError(f"{cert_path} is not an hdsd CA (no hdsd://<cluster>/ca name)")
    return cert, key, cluster


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


# --- issuing ---------------------------------------------------------------------------------


def create_ca(directory: Path, cluster_id: str) -> None:
    """Create the cluster CA: ``ca.crt`` (0644) and ``ca.key`` (0600) in *directory*.

    Refuses (ConfigError) if a CA is already there: replacing it would orphan every certificate
    it issued. Keep ``ca.key`` offline or on the admin host only; nodes need just ``ca.crt``.
    """
    _check_name("cluster id", cluster_id)
    directory = Path(directory)
    _make_dir(directory)
    if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
        raise ConfigError(
            f"a CA already exists in {directory}; refusing to overwrite it (every certificate it "
            "issued would stop working). Use another directory or remove it on purpose"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # The random serialNumber keeps two CAs of one cluster id (a re-init, a test cluster) apart
    # by name, so OpenSSL reports "unable to get issuer" rather than a confusing chain error.
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"hdsd CA {cluster_id}"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_VALIDITY)
        # path_length=0: the CA signs leaves only, never an intermediate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"hdsd://{cluster_id}/ca")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(directory / CA_CERT, directory / CA_KEY, cert, key)


def _issue(
    ca_dir: Path,
    common_name: str,
    uri_tail: str,
    extra_sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    validity: dt.timedelta = _LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    ca_cert, ca_key, cluster = _load_ca(Path(ca_dir))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # A leaf never outlives its CA: the chain would stop verifying at the CA's end anyway.
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"hdsd://{cluster}/{uri_tail}")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans + extra_sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _record_issued(Path(ca_dir), cert)
    return cert, key, cluster


def _record_issued(ca_dir: Path, cert: x509.Certificate) -> None:
    """Keep a copy of every certificate the CA signs, named by serial: the CA directory's index
    of what it issued (``hdsd cert ls``), and what revocation by client name resolves through.
    Written before the leaf's own files: a crash in between leaves a record of a certificate
    nobody holds, never a certificate without its record."""
    directory = ca_dir / ISSUED_DIR
    _make_dir(directory)
    atomic_write(directory / f"{serial_hex(cert.serial_number)}.crt",
                 cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", lb)
                           for lb in labels):
        raise ConfigError(f"invalid host {host!r}: give an IP address or a DNS name")
    return x509.DNSName(host.rstrip(".").lower())


def issue_node_cert(
    ca_dir: Path,
    out_dir: Path,
    *,
    name: str,
    site: str,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
) -> tuple[Path, Path]:
    """Issue a node certificate; return ``(cert path, key path)`` (key mode 0600).

    *hosts* are the addresses peers and clients dial (IP addresses and DNS names); the TLS
    hostname check accepts exactly these. Re-issuing replaces the files atomically.
    """
    _check_name("node name", name)
    _check_name("site", site)
    if isinstance(hosts, str) or not hosts:
        raise ConfigError("a node certificate needs at least one host (IP address or DNS name)")
    host_sans = list(dict.fromkeys(_host_name(h) for h in hosts))
    cert, key, _ = _issue(
        ca_dir, name, f"node/{site}/{name}", host_sans,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    out_dir = Path(out_dir)
    _make_dir(out_dir)
    paths = out_dir / f"node-{name}.crt", out_dir / f"node-{name}.key"
    _write_pair(*paths, cert, key)
    return paths


def issue_client_cert(
    ca_dir: Path, out_dir: Path, *, name: str, tenant: str, role: str,
    days: int = CLIENT_VALIDITY_DAYS,
) -> tuple[Path, Path]:
    """Issue a client certificate for *tenant* with *role* (one of :data:`ROLES`), valid *days*
    days; return ``(cert path, key path)`` (key mode 0600). Re-issuing replaces the files
    atomically (revoking the previous certificate is the caller's business: see ``hdsd cert``)."""
    _check_name("client name", name)
    _check_name("tenant", tenant)
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    if not 1 <= days <= MAX_VALIDITY_DAYS:
        raise ConfigError(f"invalid lifetime {days} days: use 1 to {MAX_VALIDITY_DAYS}")
    cert, key, _ = _issue(
        ca_dir, name, f"client/{tenant}/{role}/{name}", [],
        [ExtendedKeyUsageOID.CLIENT_AUTH], dt.timedelta(days=days),
    )
    out_dir = Path(out_dir)
    _make_dir(out_dir)
    paths = out_dir / f"client-{name}@{tenant}.crt", out_dir / f"client-{name}@{tenant}.key"
    _write_pair(*paths, cert, key)
    return paths


# --- reading a peer --------------------------------------------------------------------------


def identity_from_der(der: bytes) -> Identity:
    """The identity in a peer's DER certificate (``getpeercert(binary_form=True)``).

    This does **not** verify the signature or dates: call it only on a certificate the TLS
    handshake has verified against the cluster CA. Raises :class:`AuthenticationFailed` if the
    certificate is not an hdsd node or client certificate (no or several hdsd names, a CA,
    extended key usages that do not match the kind).
    """
    if not isinstance(der, bytes | bytearray) or not der:
        raise AuthenticationFailed("the peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        uris = _san_uris(cert)
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            eku = set()
    except ValueError as exc:
        raise AuthenticationFailed(f"the peer certificate cannot be parsed: {exc}") from None
    ours = [u for u in uris if u.lower().startswith("hdsd:")]
    if len(ours) != 1:
        raise AuthenticationFailed(
            f"the peer certificate carries {len(ours)} hdsd names, not exactly one"
        )
    identity = _parse_uri(ours[0])
    if identity is None or is_ca:
        raise AuthenticationFailed(f"the peer certificate names {ours[0]!r}, not a node or client")
    identity = replace(identity, serial=cert.serial_number)
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    expected = {server, client} if identity.kind == "node" else {client}
    if not expected <= eku or (identity.kind == "client" and server in eku):
        raise AuthenticationFailed(
            f"the peer certificate for {ours[0]!r} has the wrong extended key usage"
        )
    return identity


# --- issued certificates and revocation proofs -------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """One certificate the CA signed, as its issuance record (``ca/issued/<serial>.crt``) or a
    certificate file shows it."""

    identity: Identity  # .serial set
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes = field(repr=False)

    @property
    def serial(self) -> str:
        return self.identity.serial_hex


def read_certificate(data: bytes) -> IssuedCert:
    """A node or client certificate from PEM or DER bytes (not verified: see
    :func:`verify_issued`); :class:`ConfigError` if it is not one."""
    try:
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise ConfigError(f"not a certificate: {exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        identity = identity_from_der(der)
    except AuthenticationFailed as exc:
        raise ConfigError(str(exc)) from None
    return IssuedCert(identity, cert.not_valid_before_utc, cert.not_valid_after_utc, der)


def issued_certificates(ca_dir: Path) -> list[IssuedCert]:
    """Every certificate the CA in *ca_dir* recorded issuing, oldest first (certificates issued
    before issuance records existed are not there)."""
    directory = Path(ca_dir) / ISSUED_DIR
    if not directory.is_dir():
        return []
    # Certificate dates have one-second resolution: the record's mtime orders issues within one.
    found = [(p.stat().st_mtime_ns, read_certificate(p.read_bytes()))
             for p in directory.glob("*.crt")]
    return [c for _, c in sorted(found, key=lambda f: (f[1].not_before, f[0], f[1].serial))]


def verify_issued(ca_cert_pem: bytes, der: bytes) -> IssuedCert:
    """The certificate *der* if the CA whose PEM is *ca_cert_pem* signed it; a revocation
    request carries it to prove whose certificate it revokes. :class:`AuthenticationFailed`
    otherwise (dates are not checked: an expired certificate may be revoked too)."""
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise AuthenticationFailed(f"the certificate was not issued by this cluster's CA: "
                                   f"{exc}") from None
    except InvalidSignature:
        raise AuthenticationFailed("the certificate was not issued by this cluster's CA "
                                   "(bad signature)") from None
    return IssuedCert(identity_from_der(der), cert.not_valid_before_utc,
                      cert.not_valid_after_utc, der)
