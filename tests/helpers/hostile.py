"""A hostile client for end-to-end tests: raw TLS sockets speaking crafted frames to a real node,
plus the measurements the hostile suite prints (node RSS, a legitimate client's latency).

Frames are built with the real wire codec; :func:`raw_frame` bypasses the client-side state
machine so a test can send what a well-behaved client never would (a request on a rid that is
in flight, Data beyond the protocol's expectations).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import hdsd
from hdsd.client import load_profile
from hdsd.transport import client_context
from hdsd.wire import (
    PROTOCOL_VERSION,
    Connection,
    ConnectionClosed,
    Goodbye,
    Hello,
    Message,
    NeedData,
    Role,
)
from hdsd.wire._constants import MAX_FRAME
from hdsd.wire._frames import encode_frame
from hdsd.wire._registry import encode_body


def tls_socket(profile: Path, *, source: str | None = None,
               timeout: float = 30) -> ssl.SSLSocket:
    """A TLS connection the node accepted (its verdict byte read). *source* binds the local end
    to another loopback address (127.0.0.2, ...): a different client host for per-source limits.
    """
    p = load_profile(profile)
    host, port = p.endpoints()[0]
    ctx = client_context(p.cert, p.key, p.ca)
    raw = socket.create_connection((host, port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    verdict = sock.recv(1)
    if verdict != b"\x01":
        sock.close()
        raise ConnectionError(f"the node refused the connection (verdict {verdict!r})")
    return sock


def handshaken(profile: Path, *, window: int = 1 << 20, source: str | None = None,
               cluster_id: str | None = None) -> tuple[ssl.SSLSocket, Connection]:
    """A TLS connection that has exchanged Hellos with the node, ready for crafted frames."""
    sock = tls_socket(profile, source=source)
    try:
        conn = Connection(Role.CLIENT, initial_window=window)
        cid = load_profile(profile).cluster_id if cluster_id is None else cluster_id
        sock.sendall(conn.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id=cid,
                                     peer="hostile", window=window)))
        while not isinstance(event := conn.next_event(), Hello):
            if isinstance(event, Goodbye):
                raise Refused(event)
            if isinstance(event, ConnectionClosed):
                raise ConnectionError("the node closed the connection before its Hello")
            conn.receive_data(sock.recv(65536))
    except BaseException:
        sock.close()
        raise
    return sock, conn


class Refused(ConnectionError):
    """The node said Goodbye instead of Hello."""

    def __init__(self, goodbye: Goodbye) -> None:
        super().__init__(f"Goodbye {goodbye.code}: {goodbye.message}")
        self.goodbye = goodbye


def next_event(sock: socket.socket, conn: Connection) -> object:
    """The node's next frame (or ConnectionClosed), reading as needed."""
    while isinstance(event := conn.next_event(), NeedData):
        try:
            conn.receive_data(sock.recv(65536))
        except (ConnectionResetError, ssl.SSLError):
            conn.receive_data(b"")
    return event


def raw_frame(msg: Message) -> bytes:
    """*msg*'s frame, whatever the protocol state (for protocol violations on purpose)."""
    return encode_frame(*encode_body(msg), MAX_FRAME)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed client or a dropped link looks."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def legit_put_latency(profile: Path, key: str, size: int = 64 << 10) -> float:
    """One legitimate put and get-back (checked), in seconds (printed by tests, never asserted)."""
    data = os.urandom(size)
    started = time.perf_counter()
    with hdsd.Client(profile) as client:
        client.put("legit", key, data)
        elapsed = time.perf_counter() - started
        assert client.get("legit", key) == data
    return elapsed
