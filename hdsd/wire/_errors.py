"""The one error the wire package adds to the hdsd hierarchy."""

from __future__ import annotations

from .._errors import ProtocolError

__all__ = ["LocalProtocolError"]


class LocalProtocolError(ProtocolError):
    """*We* were about to break the wire protocol (a bug in the caller of ``Connection.send``).

    Nothing was sent and the connection's state is unchanged, so the caller may still send a
    Goodbye. Never travels over the wire: the peer did nothing wrong.
    """

    code = "local_protocol"
