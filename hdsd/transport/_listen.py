"""Listening for and dialling mutually authenticated TLS connections with trio.

Theory of operation. In TLS 1.3 the client's handshake completes *before* the server has checked
the client's certificate: the client sends its certificate with its Finished message and does not
wait for an answer. Without help, a client whose certificate is refused would learn it only on
its first read, as a broken connection that looks retryable. So the server ends its part of the
handshake with one byte inside the encrypted channel, which :func:`connect_tls` waits for:

* ``0x01`` — accepted: the certificate verified and carries an hdsd identity;
* ``0x00`` — refused: it verified but is not an hdsd node or client certificate;
* ``0x02`` — refused: it is an hdsd certificate, but revoked (the caller's ``revoked`` check);
* a TLS alert (unknown CA, certificate required, protocol version...) — refused by TLS;
* end of stream or reset — the connection was lost (not an authentication verdict).

This costs the client one extra round trip per connection (not per request) and turns every
refusal into :class:`AuthenticationFailed`, which callers must not retry blindly. Both ends of the
exchange live in this module; the byte is consumed here and never reaches the wire codec.

trio drops the TLS alert OpenSSL prepares when a handshake fails (it raises before flushing its
outgoing buffer), so :func:`_flush_alert` sends it by hand: the peer then learns *why* it was
refused instead of seeing a bare end of stream.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable

import trio

from .._errors import (
    AuthenticationFailed,
    CertificateRevoked,
    ConfigError,
    ConnectionLost,
    ProtocolError,
)
from ._certs import Identity, identity_from_der

__all__ = ["connect_tls", "handshake_and_identify", "listener_port", "open_tls_listeners"]

_ACCEPTED = b"\x01"
_REFUSED = b"\x00"
_REVOKED = b"\x02"
# Sending the alert is a courtesy to the peer; it must never hold a failing handshake for long.
_ALERT_TIMEOUT = 1.0
# OpenSSL reason codes a refused peer most often meets, and what to do about each.
_HINTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA that issued our certificate; "
    "use a certificate from this cluster's CA",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate and none was sent; "
    "configure a certificate and key",
    "TLSV1_ALERT_PROTOCOL_VERSION": "hdsd speaks TLS 1.3 only",
    "UNSUPPORTED_PROTOCOL": "hdsd speaks TLS 1.3 only",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "our certificate has expired; re-issue it",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "our certificate is not valid for this use "
    "(a client certificate where a node one is needed?)",
}


async def open_tls_listeners(
    host: str, port: int, ctx: ssl.SSLContext
) -> list[trio.SSLListener[trio.SocketStream]]:
    """Listen on every address *host* resolves to; *port* 0 picks one free port for all of them
    (read it back with :func:`listener_port`). Accepted streams are not yet handshaken: pass each
    to :func:`handshake_and_identify` in its own task. Raises :class:`ConfigError` if the address
    cannot be bound."""
    try:
        tcp = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len({_tcp_port(lst) for lst in tcp}) > 1:
            # Each address family got its own free port; ask again for the first one everywhere.
            chosen = _tcp_port(tcp[0])
            for lst in tcp:
                await lst.aclose()
            tcp = await trio.open_tcp_listeners(chosen, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address or "
            "port, or stop the process that holds it"
        ) from None
    return [trio.SSLListener(lst, ctx) for lst in tcp]


def _tcp_port(listener: trio.SocketListener) -> int:
    return int(listener.socket.getsockname()[1])


def listener_port(listener: trio.SSLListener[trio.SocketStream]) -> int:
    """The TCP port *listener* is bound to (useful after asking for port 0)."""
    inner = listener.transport_listener
    if not isinstance(inner, trio.SocketListener):
        raise TypeError("not a TCP listener")
    return _tcp_port(inner)


async def _flush_alert(stream: trio.SSLStream[trio.SocketStream]) -> None:
    # Reaches into trio's private outgoing buffer (see the module docstring); if a trio release
    # renames it we lose only the courtesy, and the tests that expect the alert say so.
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
        return
    data = outgoing.read()
    with trio.move_on_after(_ALERT_TIMEOUT), contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError
    ):
        await stream.transport_stream.send_all(data)


def _handshake_error(
    exc: trio.BrokenResourceError, peer: str
) -> AuthenticationFailed | ConnectionLost:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError) or not isinstance(
        cause, ssl.SSLError | ssl.CertificateError
    ):
        return ConnectionLost(f"the connection to the {peer} broke during the TLS handshake: "
                              f"{cause or exc}")
    reason = getattr(cause, "reason", None)
    if verify := getattr(cause, "verify_message", None):
        text = f"{verify}; is it a certificate of this cluster, issued for this name?"
    elif not reason:
        text = str(cause)
    elif reason in _HINTS:
        text = f"{reason.lower().replace('_', ' ')}: {_HINTS[reason]}"
    else:
        text = reason.lower().replace("_", " ")
    return AuthenticationFailed(f"TLS handshake with the {peer} refused: {text}")


async def connect_tls(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    server_hostname: str,
    revoked: Callable[[Identity], bool] | None = None,
) -> trio.SSLStream[trio.SocketStream]:
    """Dial *host*:*port*, complete the TLS handshake and wait for the server's verdict on our
    certificate. *server_hostname* must be one of the IP/DNS names in the server's certificate.

    *revoked*, if given, is asked about the server's identity (a node dialling a peer): a
    revoked server is refused with :class:`CertificateRevoked`.

    Raises :class:`AuthenticationFailed` (either side refused the other's certificate; do not
    retry) or :class:`ConnectionLost` (refused, reset or closed; retryable). The caller owns
    the deadline (``with deadline(seconds, why):``, see ``hdsd._deadline``) and the returned
    stream, which it must close.
    """
    target = f"{host}:{port}"
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {target}: {exc.strerror or exc}") from None
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    ok = False
    try:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await _flush_alert(stream)
            raise _handshake_error(exc, f"server {target}") from exc
        try:
            verdict = await stream.receive_some(1)
        except trio.BrokenResourceError as exc:
            raise _handshake_error(exc, f"server {target}") from exc
        if verdict == _REFUSED:
            raise AuthenticationFailed(
                f"the server {target} refused our certificate: not an hdsd node or client "
                "certificate; issue one with `hdsd cert issue`"
            )
        if verdict == _REVOKED:
            raise CertificateRevoked(
                f"the server {target} refused our certificate: it was revoked (or replaced "
                "by a newer one); use the new certificate, or ask for one (`hdsd cert renew`)"
            )
        if verdict == b"":
            raise ConnectionLost(f"the server {target} closed the connection after the "
                                 "TLS handshake")
        if verdict != _ACCEPTED:
            raise ProtocolError(f"the server {target} sent {verdict!r} for its TLS verdict")
        if revoked is not None:
            server = identity_from_der(stream.getpeercert(binary_form=True))
            if revoked(server):
                raise CertificateRevoked(f"the server {target} ({server.name}) presented a "
                                         f"revoked certificate (serial {server.serial_hex})")
        ok = True
        return stream
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def handshake_and_identify(
    stream: trio.SSLStream[trio.SocketStream], *,
    revoked: Callable[[Identity], bool] | None = None,
) -> Identity:
    """Server side of an accepted connection: complete the TLS handshake, read the peer's
    verified certificate and return its identity; tell the client its certificate was accepted.

    Which kinds may use which port (clients vs. peer nodes) is the caller's decision, made on
    the returned :class:`Identity`. *revoked*, if given, is asked about the identity (its
    ``serial`` set) before the verdict: a revoked certificate gets the ``0x02`` verdict and
    :class:`CertificateRevoked` is raised. On any error the stream is closed and one of
    :class:`AuthenticationFailed` (plaintext, TLS < 1.3, no certificate, unknown CA, not an hdsd
    certificate) or :class:`ConnectionLost` is raised; a server loop catches these per
    connection and keeps serving. The caller owns the deadline (``hdsd._deadline.deadline``:
    on expiry the stream is closed and :class:`RequestTimeout` raised).
    """
    try:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await _flush_alert(stream)
            raise _handshake_error(exc, "client") from exc
        try:
            identity = identity_from_der(stream.getpeercert(binary_form=True))
        except AuthenticationFailed:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(_REFUSED)
            raise
        if revoked is not None and revoked(identity):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(_REVOKED)
            raise CertificateRevoked(f"{identity.kind} {identity.name!r} presented a revoked "
                                     f"certificate (serial {identity.serial_hex})")
        try:
            await stream.send_all(_ACCEPTED)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(
                f"the client went away after the TLS handshake: {exc}"
            ) from exc
        return identity
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
