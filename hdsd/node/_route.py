"""How each request type is served: one typed :class:`Route` per message class, holding the
handler and the checks made before it runs.

The checks live here, made once by :func:`hdsd.node._handlers.handle_request` through
:meth:`Route.admit`, instead of at the top of every handler: a client's role must allow the
operation (``op``), cluster-wide actions need the operator tenant's admin (``operator``), and a
peer's request must carry our layout id (``same_layout``: two nodes that place data differently
must not mix). Checks that depend on the request's content (a tenant admin acting on its own
tenant, names) stay in the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._errors import LayoutMismatch, PermissionDenied
from ..transport import Identity, WireSession
from ..wire import Message
from ._auth import Operation, authorize

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["Handler", "Inbox", "Route", "check_layout", "require_operator"]

Inbox = trio.MemoryReceiveChannel[Message]
# The message parameter is the route's own message class (Any: a handler of PutStart is not a
# handler of every Message, and the table maps each class to its handler).
Handler = Callable[["Node", WireSession, Identity, Any, Inbox], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    op: Operation | None = None  # a client's role must allow this operation
    operator: str | None = None  # only the operator tenant's admin does this (said in refusals)
    same_layout: bool = False  # a peer's request must carry this node's layout id

    def admit(self, node: Node, ident: Identity, msg: Message) -> None:
        """Raise the refusal for *msg* from *ident*, if any (before the handler runs)."""
        if self.op is not None:
            authorize(ident.role, self.op)
        if self.operator is not None:
            require_operator(node, ident, self.operator)
        if self.same_layout:
            check_layout(node, msg.layout, ident)  # type: ignore[attr-defined]


def check_layout(node: Node, layout: str, ident: Identity) -> None:
    """The ids of the layout version this node runs (its target and, while it migrates, the
    previous one) are accepted; any other makes this node ask the sender for its record (it
    may run a newer version not heard of here) and is refused meanwhile."""
    record = node.layouts.record
    if record.accepts(layout):
        return
    node.layouts.learn_from(ident.name)
    raise LayoutMismatch(f"node {ident.name} has layout {layout}, this node "
                         f"{node.config.name} has {node.layout.layout_id} (layout version "
                         f"{record.version}); a layout change is propagating (retry), or the "
                         "nodes were deployed with different [[sites]] or replicas_per_site")


def require_operator(node: Node, ident: Identity, what: str) -> None:
    """Cluster-wide actions belong to the operator: an admin certificate of ``[cluster]
    operator_tenant``. A tenant's own admin manages its buckets and holds, never the cluster."""
    if not node.tenancy.is_operator(ident.tenant, ident.role):
        raise PermissionDenied(
            f"only an admin of the operator tenant {node.tenancy.operator_tenant!r} {what} "
            f"(this is {ident.role!r} of {ident.tenant!r})")
