"""Test helpers: a client and a server :class:`Connection` joined in memory, no sockets.

Used by hdsd's own wire tests and available to the layers above (transport, node, client) to
drive the protocol without I/O.
"""

from __future__ import annotations

from ._connection import Connection, ConnectionClosed, Event, NeedData, Role
from ._constants import DEFAULT_WINDOW, MAX_FRAME, PROTOCOL_VERSION
from ._messages import Hello, Message

__all__ = ["ConnectionPair", "feed"]


def feed(conn: Connection, data: bytes, *, byte_by_byte: bool = False) -> list[Event]:
    """Hand *data* to *conn* (whole, or one byte at a time) and collect every event it yields,
    draining to NeedData after each piece as a real reader loop does. The list ends with
    ConnectionClosed if *data* is ``b""`` (EOF). ProtocolError propagates."""
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    if not data:
        pieces = [b""]
    events: list[Event] = []
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                break
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    return events


class ConnectionPair:
    """A CLIENT and a SERVER connection wired back to back, Hellos already exchanged unless
    ``handshake=False``. Each ``to_*`` call sends from one side and delivers to the other."""

    def __init__(
        self,
        *,
        handshake: bool = True,
        client_window: int = DEFAULT_WINDOW,
        server_window: int = DEFAULT_WINDOW,
        max_frame: int = MAX_FRAME,
        byte_by_byte: bool = False,
    ) -> None:
        self.client = Connection(Role.CLIENT, max_frame=max_frame, initial_window=client_window)
        self.server = Connection(Role.SERVER, max_frame=max_frame, initial_window=server_window)
        self.byte_by_byte = byte_by_byte
        if handshake:
            self.to_server(Hello(PROTOCOL_VERSION, "test-cluster", "client", client_window))
            self.to_client(Hello(PROTOCOL_VERSION, "test-cluster", "server", server_window))

    def to_server(self, *msgs: Message) -> list[Event]:
        """Send *msgs* from the client; the events the server yields for them."""
        data = b"".join(self.client.send(m) for m in msgs)
        return feed(self.server, data, byte_by_byte=self.byte_by_byte)

    def to_client(self, *msgs: Message) -> list[Event]:
        """Send *msgs* from the server; the events the client yields for them."""
        data = b"".join(self.server.send(m) for m in msgs)
        return feed(self.client, data, byte_by_byte=self.byte_by_byte)
