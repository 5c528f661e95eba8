"""TLS 1.3 contexts for mutual authentication inside one hdsd cluster.

Both contexts trust the cluster CA only (never the system store), speak TLS 1.3 only and require
a certificate from the peer. Files are checked up front with clear messages, so a wrong path or
a key that belongs to another certificate is a :class:`ConfigError` at start-up rather than a
handshake failure seen by the peer.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .._errors import AuthenticationFailed, ConfigError
from ._certs import Identity, _spki, identity_from_der

__all__ = ["client_context", "https_context", "server_context"]

_HINT = "check the path in the configuration, or issue the files with `hdsd cert issue`"


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}; {_HINT}") from None


def _check_files(cert: Path, key: Path, ca: Path) -> Identity:
    """Parse and cross-check the three files; return the identity the certificate carries."""
    cert_pem, key_pem, ca_pem = _read(cert, "certificate"), _read(key, "key"), _read(ca, "CA")
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"the certificate {cert} is not a PEM certificate; {_HINT}") from None
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise ConfigError(f"the CA {ca} is not a PEM certificate; {_HINT}") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"the key {key} is not an unencrypted PEM private key; {_HINT}"
        ) from None
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(
            f"the key {key} does not match the certificate {cert}; "
            "use the key issued with that certificate"
        )
    if not any(_issued_by(leaf, ca_cert) for ca_cert in cas):
        raise ConfigError(
            f"the certificate {cert} was not issued by the CA {ca}; "
            "re-issue it from this cluster's CA"
        )
    try:
        return identity_from_der(leaf.public_bytes(serialization.Encoding.DER))
    except AuthenticationFailed as exc:
        raise ConfigError(f"the certificate {cert} is not an hdsd certificate: {exc}") from None


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _context(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        # The files were just checked; this is a race with a rewrite, or OpenSSL disagreeing.
        raise ConfigError(f"cannot load {cert} / {key} / {ca} into TLS: {exc}; {_HINT}") from None
    return ctx


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The context a node listens with: TLS 1.3 only, a peer certificate from the cluster CA
    required (mutual TLS). *cert* must be a node certificate. Raises :class:`ConfigError` for a
    missing or unreadable file, a key that does not match, or a certificate from another CA."""
    identity = _check_files(cert, key, ca)
    if identity.kind != "node":
        raise ConfigError(f"the certificate {cert} is a {identity.kind} certificate; a node "
                          "listens with its node certificate")
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)
    # No session resumption: connections are long-lived, and tickets would be bytes the server
    # pushes at a peer that is not reading yet.
    ctx.num_tickets = 0
    return ctx


def https_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The context of the S3 gateway's HTTPS listeners: the node's certificate (from the
    cluster CA, which S3 clients are given as their CA bundle), no client certificate asked
    (S3 requests authenticate with signatures). TLS 1.2 is accepted as well as 1.3: backup
    tools built on older TLS stacks still speak S3."""
    _check_files(cert, key, ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {cert} / {key} into TLS: {exc}; {_HINT}") from None
    ctx.num_tickets = 0
    return ctx


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The context a client or a dialling node connects with: TLS 1.3 only, the server verified
    against the cluster CA and its IP/DNS subjectAltNames (pass ``server_hostname``). *cert* may
    be a client or a node certificate. Raises :class:`ConfigError` as :func:`server_context`."""
    _check_files(cert, key, ca)
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    ctx.check_hostname = True
    return ctx
