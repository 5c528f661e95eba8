"""The live-session registry (in-memory streams): a revocation cuts exactly the sessions of its
serials, tells the client why, and leaves an audit record; a session registered after its
certificate was revoked is cut at once. The real-process tests are tests/e2e/test_revocation.py."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio
import trio.testing

from hdsd import CertificateRevoked, HdsdError
from hdsd.audit import AuditLog
from hdsd.node._revocation import LiveSessions
from hdsd.transport import Identity, WireSession
from hdsd.wire import Connection, Goodbye, Role

LIMIT = 10


class _Audit:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def record(self, *fields: Any) -> None:
        self.records.append(fields)


def _no_refusal(peer: str, ident: Identity, exc: HdsdError) -> None:
    raise AssertionError("nothing is refused here")


def _ident(name: str, serial: int) -> Identity:
    return Identity("client", name, None, "t", "writer", "c", serial=serial)


def _pair() -> tuple[WireSession, Connection, trio.abc.Stream]:
    server, client = trio.testing.memory_stream_pair()
    return WireSession(server, Connection(Role.SERVER)), Connection(Role.CLIENT), client


async def _serve(live: LiveSessions, ident: Identity, session: WireSession,
                 ended: dict[str, bool]) -> None:
    async with live.track(ident, session):
        await trio.sleep_forever()
    ended[ident.name] = True


async def test_a_revocation_cuts_only_its_sessions_and_says_why() -> None:
    revoked: set[str] = set()
    audit = _Audit()
    live = LiveSessions(cast(AuditLog, audit), revoked.__contains__, _no_refusal)
    ended: dict[str, bool] = {}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            a, a_conn, a_client = _pair()
            b, _, _ = _pair()
            nursery.start_soon(_serve, live, _ident("alice", 0xAB), a, ended)
            nursery.start_soon(_serve, live, _ident("bob", 0xCD), b, ended)
            await trio.testing.wait_all_tasks_blocked()
            assert len(live) == 2
            revoked.add("ab")
            assert live.cut({"ab"}) == 1
            while "alice" not in ended:
                await trio.sleep(0.01)
            assert "bob" not in ended and len(live) == 1
            a_conn.receive_data(bytes(await a_client.receive_some(4096)))
            event = a_conn.next_event()
            assert isinstance(event, Goodbye) and event.code == CertificateRevoked.code
            nursery.cancel_scope.cancel()
    assert [(r[0], r[3], r[5], r[9]) for r in audit.records] == [
        ("alice", "disconnect", "serial:ab", "certificate_revoked")]


async def test_a_session_registered_after_its_revocation_is_cut_at_once() -> None:
    # The handshake check and the registration are two steps: a revocation applied in between
    # must not leave the session running.
    audit = _Audit()
    live = LiveSessions(cast(AuditLog, audit), {"ef"}.__contains__, _no_refusal)
    session, _, _ = _pair()
    ended: dict[str, bool] = {}
    with trio.fail_after(LIMIT):
        await _serve(live, _ident("carol", 0xEF), session, ended)
    assert ended == {"carol": True} and len(live) == 0


def test_the_handshake_check_reports_who_was_refused() -> None:
    # Reported to the node's refused-connection path (aggregated audit, rate-limited log), with
    # the certificate's identity: not one audit record per attempt.
    refused: list[tuple[str, Identity, HdsdError]] = []
    live = LiveSessions(cast(AuditLog, _Audit()), {"ef"}.__contains__,
                        lambda *args: refused.append(args))
    assert not live.refuse(_ident("dave", 0x1), "10.0.0.9:5000")
    assert live.refuse(_ident("carol", 0xEF), "10.0.0.9:5001")
    [(peer, ident, exc)] = refused
    assert (peer, ident.name, ident.serial_hex) == ("10.0.0.9:5001", "carol", "ef")
    assert isinstance(exc, CertificateRevoked)


@pytest.mark.parametrize("serial", [0x1, 0xABCDEF0123456789ABCDEF0123456789ABCDEF01])
def test_serials_are_canonical_hex(serial: int) -> None:
    assert _ident("x", serial).serial_hex == format(serial, "x")
