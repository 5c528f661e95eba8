"""A peer that cannot be reached is reported once, then as a warning only if it stays
unreachable (at first start the other node is usually still starting), then rate-limited —
not once per retry of every caller."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost, Unavailable
from hdsd.cluster import Layout, NodeInfo
from hdsd.peers import UNREACHABLE_WARN_AFTER_S, PeerPool
from hdsd.wire import UNSENT, StatusRequest


async def test_an_unreachable_peer_is_one_line_then_a_rate_limited_warning(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def refused(host: str, port: int, *args: object, **kwargs: object) -> None:
        raise ConnectionLost(f"cannot connect to {host}:{port}: Connection refused")

    monkeypatch.setattr("hdsd.peers._link.connect_tls", refused)
    layout = Layout(sites=("a", "b"), nodes=(NodeInfo("a1", "a", "127.0.0.1", 1),
                                             NodeInfo("b1", "b", "127.0.0.1", 2)))
    pool = PeerPool(name="a1", cluster_id="c", layout=layout,
                    ssl_context=ssl.create_default_context(), request_timeout=1)
    caplog.set_level(logging.DEBUG, logger="hdsd")
    attempts = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        start = trio.current_time()
        while trio.current_time() - start < 100:  # callers retrying ten times a second
            with pytest.raises(Unavailable):
                await pool.call("b1", StatusRequest(UNSENT))
            attempts += 1
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    said = [(r.levelname, r.created, r.getMessage()) for r in caplog.records
            if "peer_unreachable" in r.getMessage()]
    assert attempts > 500
    assert [level for level, _, _ in said] == ["INFO", "WARNING", "WARNING"], said
    assert "retry=quiet" in said[0][2] and "Connection refused" in said[0][2]
    first, second = (float(m.split("for_s=")[1].split()[0]) for _, _, m in said[1:])
    assert UNREACHABLE_WARN_AFTER_S <= first < UNREACHABLE_WARN_AFTER_S + 5
    assert second - first >= 59  # rate-limited
