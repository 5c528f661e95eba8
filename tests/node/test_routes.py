"""The node's request tables: every request the wire defines is served by exactly one side,
and the checks made once by the routes are the ones each request needs."""

from __future__ import annotations

from hdsd.node._handlers import CLIENT_ROUTES, NODE_ROUTES
from hdsd.wire import MESSAGE_TYPES, Kind, LayoutPush

_OPENS_A_REQUEST = {Kind.REQUEST, Kind.UPLOAD, Kind.DOWNLOAD}
# Served on both sides: the operator hands out a layout version and nodes pass it on. Never
# checked against the receiver's layout id: it is how a node learns a new one.
_BOTH = {LayoutPush}


def test_every_request_of_the_wire_has_one_route() -> None:
    requests = {t.cls for t in MESSAGE_TYPES if t.kind in _OPENS_A_REQUEST}
    assert set(CLIENT_ROUTES) | set(NODE_ROUTES) == requests
    assert set(CLIENT_ROUTES) & set(NODE_ROUTES) == _BOTH


def test_node_requests_carry_and_check_the_layout() -> None:
    by_cls = {t.cls: t for t in MESSAGE_TYPES}
    for cls, route in NODE_ROUTES.items():
        if cls in _BOTH:
            assert not route.same_layout and route.op is None and route.operator is None
            assert CLIENT_ROUTES[cls].operator is not None  # from a client: the operator only
            continue
        assert "layout" in by_cls[cls].fields, cls
        assert route.same_layout and route.op is None and route.operator is None, cls


def test_client_requests_are_authorised_by_their_route_or_their_handler() -> None:
    # Data requests name their operation; the admin requests that only the operator may make
    # say so; the rest (a tenant admin acting on its own tenant) decide in the handler, which
    # the admin handler tests cover (S3 keys: tests/e2e/test_s3_keys.py).
    checked_in_handler = {"BucketCreate", "BucketList", "HoldSet", "HoldList", "CertRevoke",
                          "CertList", "S3KeyCreate", "S3KeyList", "S3KeyRevoke"}
    for cls, route in CLIENT_ROUTES.items():
        assert not route.same_layout, cls
        if cls.__name__ not in checked_in_handler:
            assert (route.op is None) != (route.operator is None), cls
