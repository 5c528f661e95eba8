"""The HTTP layer's own helpers (the exchanges themselves: test_hostile_http.py)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from hdsd.s3 import _http


def test_the_date_header_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formatted once a second, never stale: each new second gives its own value."""
    for now in (1_800_000_000.2, 1_800_000_000.9, 1_800_000_001.0, 1_700_000_000.5):
        monkeypatch.setattr(_http.time, "time", lambda now=now: now)
        assert _http._http_now() == formatdate(int(now), usegmt=True)
