"""Real TLS over real sockets on 127.0.0.1: every test runs under ``trio.fail_after``."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from hdsd import (
    AuthenticationFailed,
    CertificateRevoked,
    ConfigError,
    ConnectionLost,
    HdsdError,
    RequestTimeout,
)
from hdsd._deadline import deadline
from hdsd.transport import (
    Identity,
    client_context,
    connect_tls,
    handshake_and_identify,
    identity_from_der,
    listener_port,
    open_tls_listeners,
    server_context,
)

from .conftest import Pki

LIMIT = 10  # seconds; a hang fails the test instead of the suite
HOST = "127.0.0.1"

Result = Identity | bytes | HdsdError


async def exchange(
    server_ctx: ssl.SSLContext, client: Callable[[int], Awaitable[bytes]],
    revoked: Callable[[Identity], bool] | None = None,
) -> tuple[Result, Result]:
    """Accept one connection with *server_ctx* while *client(port)* runs; return what each side
    got: the server its peer's Identity or error, the client its reply bytes or error. On
    success the server answers ``b"pong:" + request`` so both directions are exercised."""
    listeners = await open_tls_listeners(HOST, 0, server_ctx)
    results: dict[str, Result] = {}

    async def serve() -> None:
        stream = await listeners[0].accept()
        async with stream:
            try:
                results["server"] = await handshake_and_identify(stream, revoked=revoked)
            except HdsdError as exc:
                results["server"] = exc
                return
            try:
                request = await stream.receive_some(100)
                await stream.send_all(b"pong:" + request)
            except trio.BrokenResourceError:
                pass  # the client refused us (a revoked server certificate)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                results["client"] = await client(listener_port(listeners[0]))
            except HdsdError as exc:
                results["client"] = exc
    finally:
        for lst in listeners:
            await lst.aclose()
    return results["server"], results["client"]


def dial(ctx: ssl.SSLContext, server_hostname: str = HOST,
         revoked: Callable[[Identity], bool] | None = None) -> Callable[[int], Awaitable[bytes]]:
    async def run(port: int) -> bytes:
        stream = await connect_tls(HOST, port, ctx, server_hostname=server_hostname,
                                   revoked=revoked)
        async with stream:
            await stream.send_all(b"ping")
            reply = b""
            while len(reply) < len(b"pong:ping"):
                chunk = await stream.receive_some(100)
                assert chunk, "server closed early"
                reply += chunk
            return reply

    return run


def raw_context(*, cert: tuple[Path, Path] | None, ca: Path,
                max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A client context built by hand, for clients hdsd itself would never configure."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = max_version
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(*map(str, cert))
    return ctx


async def test_node_to_node_handshake_identifies_both_ends(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        listeners = await open_tls_listeners(HOST, 0, server_context(*pki.node_a, pki.ca))
        ctx = client_context(*pki.node_b, pki.ca)
        async with trio.open_nursery() as nursery:
            dialled: list[trio.SSLStream[trio.SocketStream]] = []

            async def dial_in() -> None:
                dialled.append(await connect_tls(HOST, listener_port(listeners[0]), ctx,
                                                 server_hostname="localhost"))

            nursery.start_soon(dial_in)
            server_stream = await listeners[0].accept()
            client_identity = await handshake_and_identify(server_stream)
        client_stream = dialled[0]
        server_der = client_stream.getpeercert(binary_form=True)
        async with server_stream, client_stream:
            assert client_identity == Identity("node", "b", "s2", None, None, "c1")
            assert identity_from_der(server_der) == Identity("node", "a", "s1", None, None, "c1")
            assert client_stream.version() == "TLSv1.3"
            # The verdict byte was consumed by connect_tls: application bytes start clean.
            await client_stream.send_all(b"hello")
            assert await server_stream.receive_some(100) == b"hello"
            await server_stream.send_all(b"world")
            assert await client_stream.receive_some(100) == b"world"
        for lst in listeners:
            await lst.aclose()


async def test_client_to_node_handshake_identifies_the_client(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        server, client = await exchange(
            server_context(*pki.node_a, pki.ca), dial(client_context(*pki.client, pki.ca))
        )
    assert server == Identity("client", "alice", None, "t1", "writer", "c1")
    assert client == b"pong:ping"


async def test_node_where_a_client_is_expected_is_identifiable(pki: Pki) -> None:
    # The port's policy is the caller's; what matters is that the kind cannot be mistaken.
    with trio.fail_after(LIMIT):
        server, _ = await exchange(
            server_context(*pki.node_a, pki.ca), dial(client_context(*pki.node_b, pki.ca))
        )
    assert isinstance(server, Identity) and server.kind == "node" and server.tenant is None


async def test_plaintext_client_is_refused_and_the_server_survives(pki: Pki) -> None:
    async def plaintext(port: int) -> bytes:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            try:
                while chunk := await stream.receive_some(1000):
                    received += chunk
            except trio.BrokenResourceError:
                pass
            return received

    with trio.fail_after(LIMIT):
        server_ctx = server_context(*pki.node_a, pki.ca)
        server, client = await exchange(server_ctx, plaintext)
        assert isinstance(server, AuthenticationFailed)
        assert isinstance(client, bytes) and b"HTTP" not in client  # only a TLS alert came back
        # The same server context still serves a proper client afterwards.
        server, client = await exchange(server_ctx, dial(client_context(*pki.client, pki.ca)))
    assert isinstance(server, Identity) and client == b"pong:ping"


async def test_client_cert_from_another_ca_is_refused_at_the_handshake(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        server, client = await exchange(
            server_context(*pki.node_a, pki.ca), dial(raw_context(cert=pki.other_client,
                                                                  ca=pki.ca))
        )
    assert isinstance(server, AuthenticationFailed)
    # Thanks to the verdict byte and the flushed alert the client knows why, not just "broken".
    assert isinstance(client, AuthenticationFailed), client
    assert "unknown ca" in str(client).lower()


async def test_client_without_certificate_is_refused(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        server, client = await exchange(
            server_context(*pki.node_a, pki.ca), dial(raw_context(cert=None, ca=pki.ca))
        )
    assert isinstance(server, AuthenticationFailed)
    assert isinstance(client, AuthenticationFailed), client
    assert "certificate required" in str(client).lower()


async def test_tls12_only_client_is_refused(pki: Pki) -> None:
    ctx = raw_context(cert=pki.client, ca=pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    with trio.fail_after(LIMIT):
        server, client = await exchange(server_context(*pki.node_a, pki.ca), dial(ctx))
    assert isinstance(server, AuthenticationFailed)
    assert isinstance(client, AuthenticationFailed), client


async def test_server_from_another_ca_is_refused_by_the_client(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        server, client = await exchange(
            server_context(*pki.other_node, pki.other_ca), dial(client_context(*pki.client,
                                                                               pki.ca))
        )
    assert isinstance(client, AuthenticationFailed)
    # The server sends its CA along (OpenSSL auto-chain); the client does not trust it.
    assert "certificate" in str(client)
    assert isinstance(server, AuthenticationFailed)  # the client's alert reached it


async def test_server_name_outside_its_certificate_is_refused(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        server, client = await exchange(
            server_context(*pki.node_a, pki.ca),
            dial(client_context(*pki.client, pki.ca), server_hostname="db.example.org"),
        )
    assert isinstance(client, AuthenticationFailed)
    assert "hostname" in str(client).lower()
    assert isinstance(server, AuthenticationFailed)


async def test_client_certificate_cannot_serve(pki: Pki) -> None:
    # server_context refuses a client certificate; build the context by hand to get past it.
    rogue = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue.load_cert_chain(*map(str, pki.client))
    with trio.fail_after(LIMIT):
        _, client = await exchange(rogue, dial(client_context(*pki.node_b, pki.ca)))
    # OpenSSL enforces the missing serverAuth extended key usage.
    assert isinstance(client, AuthenticationFailed), client


async def test_connection_refused_is_connection_lost() -> None:
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with trio.fail_after(LIMIT), pytest.raises(ConnectionLost):
        await connect_tls(HOST, port, ctx, server_hostname=HOST)


async def test_silent_server_is_a_timeout(pki: Pki) -> None:
    # Real sockets, real clock: the caller's short deadline is what is under test, nothing is
    # asserted about how long it took.
    ctx = client_context(*pki.client, pki.ca)
    with trio.fail_after(LIMIT):
        tcp = await trio.open_tcp_listeners(0, host=HOST)
        port = tcp[0].socket.getsockname()[1]
        with pytest.raises(RequestTimeout, match="connecting"), deadline(0.3, "connecting"):
            await connect_tls(HOST, port, ctx, server_hostname=HOST)
        await tcp[0].aclose()


async def test_silent_client_is_a_timeout_on_the_server(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        listeners = await open_tls_listeners(HOST, 0, server_context(*pki.node_a, pki.ca))
        idle = await trio.open_tcp_stream(HOST, listener_port(listeners[0]))
        stream = await listeners[0].accept()
        with pytest.raises(RequestTimeout), deadline(0.3, "the TLS handshake"):
            await handshake_and_identify(stream)
        with pytest.raises(trio.ClosedResourceError):  # cancelled: it closed the stream
            await stream.send_all(b"x")
        await idle.aclose()
        await listeners[0].aclose()


async def test_client_hanging_up_mid_handshake_is_connection_lost(pki: Pki) -> None:
    async def hang_up(port: int) -> bytes:
        stream = await trio.open_tcp_stream(HOST, port)
        await stream.aclose()
        return b""

    with trio.fail_after(LIMIT):
        server, _ = await exchange(server_context(*pki.node_a, pki.ca), hang_up)
    assert isinstance(server, ConnectionLost), server


async def test_port_zero_binds_one_port_for_every_address(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        listeners = await open_tls_listeners("localhost", 0, server_context(*pki.node_a, pki.ca))
        try:
            ports = {listener_port(lst) for lst in listeners}
            assert len(ports) == 1 and ports.pop() > 0
        finally:
            for lst in listeners:
                await lst.aclose()


async def test_port_in_use_is_a_config_error(pki: Pki) -> None:
    ctx = server_context(*pki.node_a, pki.ca)
    with trio.fail_after(LIMIT):
        first = await open_tls_listeners(HOST, 0, ctx)
        port = listener_port(first[0])
        with pytest.raises(ConfigError, match=str(port)):
            await open_tls_listeners(HOST, port, ctx)
        await first[0].aclose()


async def test_a_revoked_certificate_is_refused_at_the_handshake_and_told_so(pki: Pki) -> None:
    asked: list[Identity] = []

    def revoked(ident: Identity) -> bool:
        asked.append(ident)
        return True

    with trio.fail_after(LIMIT):
        server, client = await exchange(server_context(*pki.node_a, pki.ca),
                                        dial(client_context(*pki.client, pki.ca)), revoked)
    assert isinstance(server, CertificateRevoked) and isinstance(client, CertificateRevoked)
    assert "revoked" in str(client)
    assert [a.serial_hex for a in asked] == [identity_from_der(
        x509_der(pki.client[0])).serial_hex]
    # ... and the same check the other way: a node dialling a peer that presents a revoked one
    with trio.fail_after(LIMIT):
        server, client = await exchange(server_context(*pki.node_a, pki.ca),
                                        dial(client_context(*pki.node_b, pki.ca),
                                             revoked=lambda i: i.name == "a"))
    assert isinstance(client, CertificateRevoked) and "(a)" in str(client)
    with trio.fail_after(LIMIT):  # not revoked: unchanged
        server, client = await exchange(server_context(*pki.node_a, pki.ca),
                                        dial(client_context(*pki.client, pki.ca),
                                             revoked=lambda i: False), lambda i: False)
    assert client == b"pong:ping"


def x509_der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)
