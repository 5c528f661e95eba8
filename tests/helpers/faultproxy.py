"""A TCP fault proxy for tests and benchmarks: put it on a link, then delay, cut or reset it.

It runs its own trio loop in a background thread, so synchronous tests drive it directly:

    with FaultProxy("127.0.0.1", 7401) as proxy:    # listen on proxy.port
        proxy.set_delay(0.025)     # one-way delay added to every byte, both directions
        proxy.blackhole()          # bytes stop flowing (a partition: peers time out)
        proxy.reset()              # every connection is reset; new ones are refused
        proxy.heal()

Delay is a delay line (bytes keep their order and the link keeps its throughput), not a
per-read sleep. Every connection is closed when the proxy stops.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import trio

_READ = 64 << 10


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.delay = 0.0
        self.mode = "pass"  # "pass" | "blackhole" | "reset"
        self.connections = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._streams: set[trio.SocketStream] = set()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def reset(self) -> None:
        self.mode = "reset"
        if self._token is not None:
            trio.from_thread.run_sync(self._reset_all, trio_token=self._token)

    def heal(self) -> None:
        self.mode = "pass"
        self.delay = 0.0

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)

    def _reset_all(self) -> None:
        for stream in list(self._streams):
            try:
                # SO_LINGER 0: close sends a RST, as a broken link or a dead host would.
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            # Tell trio first, so tasks blocked on the socket wake with ClosedResourceError.
            trio.lowlevel.notify_closing(stream.socket)
            stream.socket.close()
        self._streams.clear()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as scope:
            self._scope = scope
            self._ready.set()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.mode == "reset":
            await trio.aclose_forcefully(client)
            return
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        self.connections += 1
        self._streams |= {client, server}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a reset or a peer that went away: this connection is over
        finally:
            self._streams -= {client, server}
            for stream in (client, server):
                if stream.socket.fileno() != -1:
                    await trio.aclose_forcefully(stream)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1024)

        async def write() -> None:
            async for deadline, data in receive:
                await trio.sleep_until(deadline)
                while self.mode == "blackhole":
                    await trio.sleep(0.01)  # held, as a partitioned network would
                await dst.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                async with send:
                    while data := await src.receive_some(_READ):
                        await send.send((trio.current_time() + self.delay, data))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            done.cancel()
