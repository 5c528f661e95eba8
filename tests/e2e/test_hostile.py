"""Bad input against a real node: each gets a clear refusal and the node keeps serving."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path

import pytest

import hdsd
from hdsd.client import Profile, load_profile
from hdsd.transport import client_context, create_ca, issue_client_cert
from hdsd.wire import PROTOCOL_VERSION, Connection, GetRequest, Goodbye, Hello, Role
from tests.helpers.cluster import hdsd as run_cli

pytestmark = pytest.mark.e2e


def _endpoint(profile: Path) -> tuple[str, int]:
    return load_profile(profile).endpoints()[0]


def _still_serving(profile: Path) -> None:
    with hdsd.Client(profile) as client:
        client.put("alive", "probe", b"ok")
        assert client.get("alive", "probe") == b"ok"


def _tls_socket(profile: Path) -> ssl.SSLSocket:
    p = load_profile(profile)
    host, port = p.endpoints()[0]
    ctx = client_context(p.cert, p.key, p.ca)
    sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=30),
                           server_hostname=host)
    assert sock.recv(1) == b"\x01"  # the node's verdict on our certificate
    return sock


def _handshaken(profile: Path) -> tuple[ssl.SSLSocket, Connection]:
    """A TLS connection that has exchanged Hellos with the node, ready for crafted frames."""
    sock = _tls_socket(profile)
    conn = Connection(Role.CLIENT, initial_window=1 << 20)
    sock.sendall(conn.send(Hello(protocol_version=PROTOCOL_VERSION,
                                 cluster_id=load_profile(profile).cluster_id, peer="test",
                                 window=1 << 20)))
    while not isinstance(conn.next_event(), Hello):
        conn.receive_data(sock.recv(65536))
    return sock, conn


def _read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return out
        if not piece:
            return out
        out += piece


@pytest.mark.parametrize("garbage", [os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"\x16\x03\x01\x00\x05hello", b""])
def test_plaintext_and_random_bytes_on_the_port(profile: Path, garbage: bytes) -> None:
    with socket.create_connection(_endpoint(profile), timeout=30) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        _read_until_closed(sock)
    _still_serving(profile)


@pytest.mark.parametrize("kind", ["random", "truncated", "oversize", "bad-checksum"])
def test_malformed_frames_after_tls(profile: Path, kind: str) -> None:
    sock, conn = _handshaken(profile)
    frame = conn.send(GetRequest(rid=1, bucket="b", key="k", version=None, start=None, end=None))
    payload = {
        "random": os.urandom(2048),
        "truncated": frame[:-3],
        "oversize": struct.pack(">IBQ", 200 << 20, frame[4], 0),
        "bad-checksum": frame[:5] + bytes([frame[5] ^ 0xFF]) + frame[6:],
    }[kind]
    with sock:
        sock.sendall(payload)
        if kind == "truncated":
            sock.shutdown(socket.SHUT_WR)
        received = _read_until_closed(sock)
    if kind != "truncated":
        conn.receive_data(received)
        # The node says why before it closes: a Goodbye naming the protocol violation.
        assert isinstance(conn.next_event(), Goodbye)
    _still_serving(profile)


def test_certificate_from_another_ca_is_refused(profile: Path, tmp_path: Path) -> None:
    p = load_profile(profile)
    create_ca(tmp_path / "evil-ca", p.cluster_id)
    crt, key = issue_client_cert(tmp_path / "evil-ca", tmp_path, name="mallory",
                                 tenant=p.tenant, role="admin")
    # Our client library refuses such a profile up front; an attacker uses plain TLS.
    with pytest.raises(hdsd.ConfigError, match="not issued by the CA"):
        hdsd.Client(_profile_with(p, crt, key, tmp_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(p.ca)
    host, port = p.endpoints()[0]
    with socket.create_connection((host, port), timeout=30) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with ctx.wrap_socket(raw, server_hostname=host) as sock:
                # TLS 1.3: the server judges our certificate after our handshake completes.
                if sock.recv(1) == b"":
                    raise ConnectionResetError("closed without accepting us")
    _still_serving(profile)


def _profile_with(p: Profile, crt: Path, key: Path, where: Path) -> Path:
    host, port = p.endpoints()[0]
    path = where / "other.toml"
    path.write_text(f'[client]\ncluster_id = "{p.cluster_id}"\ntenant = "{p.tenant}"\n'
                    f'ca = "{p.ca}"\ncert = "{crt}"\nkey = "{key}"\nsite = "{p.site}"\n'
                    f'[sites.{p.site}]\nendpoints = ["{host}:{port}"]\n')
    return path


def _issue(cluster_dir: Path, name: str, tenant: str, role: str) -> Path:
    run_cli("cert", "issue", "--client", name, "--tenant", tenant, "--role", role,
            "--cluster-dir", str(cluster_dir), check=True)
    return cluster_dir / "clients" / f"{name}.toml"


def test_roles_and_tenant_isolation(profile: Path, cluster_dir: Path) -> None:
    reader = _issue(cluster_dir, "reader1", "default", "reader")
    other = _issue(cluster_dir, "hospital-b", "tenant-b", "writer")
    with hdsd.Client(profile) as admin:
        admin.put("shared", "record", b"tenant A data")
    with hdsd.Client(reader) as r:
        assert r.get("shared", "record") == b"tenant A data"
        with pytest.raises(hdsd.PermissionDenied):
            r.put("shared", "record", b"overwrite")
        with pytest.raises(hdsd.PermissionDenied):
            r.delete("shared", "record")
    with hdsd.Client(other) as b:
        with pytest.raises(hdsd.NotFound) as exc:
            b.get("shared", "record")
        # Same answer as for a key that exists nowhere: no hint of tenant A's key.
        with pytest.raises(hdsd.NotFound) as nowhere:
            b.get("shared", "no-such-record")
        assert str(exc.value).replace("record", "X") == \
            str(nowhere.value).replace("no-such-record", "X")
        assert b.list("shared").entries == []
        b.put("shared", "record", b"tenant B data")
        assert b.get("shared", "record") == b"tenant B data"
    with hdsd.Client(profile) as admin:
        assert admin.get("shared", "record") == b"tenant A data"


def test_client_that_stops_reading_mid_get(profile: Path) -> None:
    with hdsd.Client(profile) as client:
        client.put("big", "stall", os.urandom(40 << 20))
    sock, conn = _handshaken(profile)
    with sock:
        sock.sendall(conn.send(GetRequest(rid=1, bucket="big", key="stall", version=None,
                                          start=None, end=None)))
        sock.recv(1024)  # some bytes, then we never read again
        _still_serving(profile)  # the stalled download does not block others
    _still_serving(profile)
