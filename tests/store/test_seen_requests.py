"""The request-id filter (hdsd.store._seen) never hides a request id the store holds: not one
committed before the store was opened (found by its scan), not one committed since (added
before the ack), not one whose index update is still deferred; unknown ids are answered
without the index once the filter is ready."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hdsd.store import Store
from hdsd.store._seen import SeenRequests
from tests.helpers.sealing import SEALING

from ._util import inline_version


def _ready(store: Store, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not store._writer.seen_requests.ready:
        assert time.monotonic() < deadline, "the request-id scan did not finish"
        time.sleep(0.01)


def test_filter_holds_every_id_added_and_answers_maybe_until_ready() -> None:
    seen = SeenRequests(0)
    ids = [os.urandom(16) for _ in range(5000)]
    assert seen.may_hold("t", ids[0])  # not ready: every lookup goes to the index
    for rid in ids:
        seen.add("t", rid)
    seen.ready = True
    assert all(seen.may_hold("t", rid) for rid in ids)
    others = [os.urandom(16) for _ in range(5000)]
    assert sum(seen.may_hold("t", rid) for rid in others) < 50  # false "maybe": rare
    # The tenant is part of the id: another tenant's same id is (almost surely) unknown.
    assert sum(seen.may_hold("u", rid) for rid in ids) < 50


def test_ids_committed_before_and_after_open_are_always_found(tmp_path: Path) -> None:
    path = tmp_path / "s"
    old = [os.urandom(16) for _ in range(300)]
    with Store.open(path, sealing=SEALING) as store:
        store.commit_sync([inline_version("t", "b", f"old{i}", 1000 + i, "n1", b"x",
                                          request_id=rid) for i, rid in enumerate(old)])
    with Store.open(path, sealing=SEALING) as store:
        _ready(store)
        for i, rid in enumerate(old):
            found = store.find_request("t", rid)
            assert found is not None and found.key == f"old{i}"
        new = os.urandom(16)
        store.commit_sync([inline_version("t", "b", "new", 5000, "n1", b"y", request_id=new)])
        found = store.find_request("t", new)  # found at once, indexed or not
        assert found is not None and found.key == "new"
        assert store.find_request("t", os.urandom(16)) is None
        assert store.find_request("other", old[0]) is None


def test_ids_are_found_while_the_scan_is_not_done(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the scan completes, lookups ask the index as they always did."""
    path = tmp_path / "s"
    rid = os.urandom(16)
    with Store.open(path, sealing=SEALING) as store:
        store.commit_sync([inline_version("t", "b", "k", 1000, "n1", b"x", request_id=rid)])
    monkeypatch.setattr(Store, "_scan_request_ids", lambda self: None)  # never ready
    with Store.open(path, sealing=SEALING) as store:
        assert not store._writer.seen_requests.ready
        found = store.find_request("t", rid)
        assert found is not None and found.key == "k"
