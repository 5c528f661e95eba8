"""The gateway's listeners: HTTPS (the node's certificate) and, only where configured, plain
HTTP; one task per connection, at most ``max_connections`` at once (the others wait in the
kernel's accept queue); the multipart reclaimer."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .._errors import ConfigError
from ._gateway import Gateway
from ._http import HttpLimits, HttpRequest, serve_http_connection
from ._xml import S3Error, error_body

__all__ = ["Endpoint", "serve_s3"]

log = logging.getLogger("hdsd.s3")

_RECLAIM_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A bound listener: ``url`` is what clients are told (``https://127.0.0.1:7480``)."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


async def _bad_request(req: HttpRequest | None, status: int, reason: str) -> None:
    if req is None:
        return
    code = {431: "RequestHeaderSectionTooLarge", 408: "RequestTimeout"}.get(status,
                                                                          "BadRequest")
    err = S3Error(code, status, f"malformed HTTP request: {reason}")
    await req.respond(status, [("Content-Type", "application/xml")],
                      error_body(err, "", req.request_id))


async def serve_s3(gateway: Gateway, https: Sequence[tuple[str, int]],
                   plain: Sequence[tuple[str, int]], ssl_context: ssl.SSLContext | None,
                   limits: HttpLimits, max_connections: int, *,
                   task_status: trio.TaskStatus[list[Endpoint]] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    """Bind every address, report the endpoints, serve until cancelled."""
    listeners: list[tuple[trio.abc.Listener[trio.abc.Stream], Endpoint]] = []
    try:
        for scheme, addresses in (("https", https), ("http", plain)):
            for host, port in addresses:
                try:
                    tcp = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:
                    raise ConfigError(f"[s3] cannot listen on {host}:{port}: "
                                      f"{exc.strerror or exc}") from None
                for sock in tcp:
                    bound = sock.socket.getsockname()[1]
                    endpoint = Endpoint(scheme, host, bound)
                    if scheme == "https":
                        assert ssl_context is not None
                        listeners.append((trio.SSLListener(sock, ssl_context,
                                                           https_compatible=True), endpoint))
                    else:
                        listeners.append((sock, endpoint))
    except BaseException:
        for lst, _ in listeners:
            await lst.aclose()
        raise
    slots = trio.Semaphore(max_connections)

    async def connection(stream: trio.abc.Stream, endpoint: Endpoint) -> None:
        peer = _peer(stream)
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.move_on_after(limits.head_timeout_s) as scope:
                    try:
                        await stream.do_handshake()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if scope.cancelled_caught:
                    return
            await serve_http_connection(stream, peer, gateway.handle, limits, _bad_request)
        except Exception:
            # One connection's boundary: whatever it met ends it, logged, never the gateway
            # (Cancelled and KeyboardInterrupt are not Exceptions: they go on up).
            log.exception("event=s3_connection_failed peer=%s", peer)
        finally:
            slots.release()
            await trio.aclose_forcefully(stream)

    async def accept(listener: trio.abc.Listener[trio.abc.Stream], endpoint: Endpoint,
                     nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await slots.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(connection, stream, endpoint)

    async def reclaim() -> None:
        while True:
            removed = await trio.to_thread.run_sync(gateway.uploads.reclaim)
            if removed:
                log.info("event=s3_uploads_reclaimed count=%d", removed)
            await trio.sleep(_RECLAIM_EVERY_S)

    async with trio.open_nursery() as nursery:
        for listener, endpoint in listeners:
            nursery.start_soon(accept, listener, endpoint, nursery)
            log.info("event=s3_listening url=%s", endpoint.url)
        nursery.start_soon(reclaim)
        task_status.started([e for _, e in listeners])


def _peer(stream: trio.abc.Stream) -> str:
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        host, port = sock_stream.socket.getpeername()[:2]  # type: ignore[union-attr]
        return f"{host}:{port}"
    except (OSError, AttributeError):
        return "?"
