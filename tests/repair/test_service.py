"""A repair an operator asked for waits for a peer's link (bounded) instead of failing the
pair at once; only a peer that stays unreachable fails it, with a clear reason. A node that
starts empty is a rebuild only once a round brings it a version written before it started."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost
from hdsd.repair import STARTED_SKEW_S, Maintenance, PeerTrees
from hdsd.repair._service import LINK_WAIT_S
from hdsd.store import Store, Version
from hdsd.wire import Request

from .test_sync import Link, Pair, _layout, _version

R = TypeVar("R")


class Flaky:
    """The link of a node whose peer is back only at *up_at* (trio time; None: never)."""

    def __init__(self, inner: Link, up_at: float | None) -> None:
        self.inner = inner
        self.up_at = up_at
        self.refused = 0

    def reachable(self, node: str) -> bool:
        return self.up_at is not None and trio.current_time() >= self.up_at

    async def call(self, node: str, request: Request[R]) -> R:
        if not self.reachable(node):
            self.refused += 1
            raise ConnectionLost(f"peer {node} unreachable (connection refused); next attempt "
                                 "in 1.60 s")
        return await self.inner.call(node, request)


async def _round(tmp_path: Path, up_at: float | None) -> tuple[dict[str, Any], Flaky,
                                                               list[dict[str, Any]]]:
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        for n in ("a0", "b0"):  # not empty: no rebuild at start
            v, chunks = _version(f"from-{n}", 1, n, 1)
            await pair.stores[n].commit([*chunks, v])
        pair.open()
        link = Flaky(Link("a0", pair.sides), up_at)
        store: Store = pair.stores["a0"]
        m = Maintenance(name="a0", layout=pair.layout, store=store, peers=link,
                        snapshot=tmp_path / "a0.snap", observe_hlc=lambda h: None,
                        open_chunk=lambda t, c, p: None, repair_interval_s=0,
                        repair_rate_mib_s=1000, scrub_interval_s=0, scrub_rate_mib_s=1000)
        seen: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            m.start("repair")
            while m.repair.completed < 1:
                if m.repair.progress.get("waiting_for_link"):
                    seen.append(dict(m.repair.progress))
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert m.repair.last is not None
        return m.repair.last, link, seen
    finally:
        pair.close()


async def test_a_peer_back_within_the_wait_is_repaired(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    last, link, seen = await _round(tmp_path, up_at=trio.current_time() + 5)
    (peer,) = last["peers"]
    assert peer["peer"] == "b0" and peer["error"] is None and peer["versions_received"] == 1
    assert link.refused > 1 and seen and seen[-1]["peer"] == "b0"
    assert "connection refused" in seen[-1]["link_error"]


async def test_a_peer_that_stays_down_fails_its_pair_clearly(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    last, _, _ = await _round(tmp_path, up_at=None)
    (peer,) = last["peers"]
    assert peer["error"].startswith("unavailable: peer b0 still unreachable after waiting 30 s")
    assert trio.current_time() - t0 >= LINK_WAIT_S  # mock time: bounded, then given up


async def _first_start(tmp_path: Path, ages_s: list[float]) -> tuple[dict[str, Any],
                                                                     list[tuple[str, bool]]]:
    """a0 starts with an empty store; its peer b0 holds a version per age in *ages_s*
    (seconds before a0 started; negative: written since). a0's rebuild record once done, and
    for each batch of versions its rounds received: a0's state then, and whether any of them
    was already stored (the state must be decided before they are)."""
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        now_ms = int(time.time() * 1000)
        for i, age in enumerate(ages_s):
            v, chunks = _version(f"k{i}", int(now_ms - age * 1000) << 16, "b0", 1)
            await pair.stores["b0"].commit([*chunks, v])
        pair.open()
        store: Store = pair.stores["a0"]
        m = Maintenance(name="a0", layout=pair.layout, store=store,
                        peers=Link("a0", pair.sides), snapshot=tmp_path / "a0.snap",
                        observe_hlc=lambda h: None, open_chunk=lambda t, c, p: None,
                        repair_interval_s=0, repair_rate_mib_s=1000, scrub_interval_s=0,
                        scrub_rate_mib_s=1000)
        decided = m.sync.on_receive
        assert decided is not None
        batches: list[tuple[str, bool]] = []

        def spy(peer: str, versions: list[Version]) -> None:
            decided(peer, versions)
            assert m.rebuild is not None
            batches.append((m.rebuild["state"], any(
                store.versions(v.tenant, v.bucket, v.key) for v in versions)))
        m.sync.on_receive = spy
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            assert m.checking
            while m.rebuild is not None and m.rebuild["state"] != "done":
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert m.rebuild is not None
        assert {(v.key, v.hlc) for v in store.iter_versions()} == \
            {(v.key, v.hlc) for v in pair.stores["b0"].iter_versions()}  # pulled either way
        return m.rebuild, batches
    finally:
        pair.close()


async def test_an_empty_node_raced_by_writes_since_it_started_is_no_rebuild(
        tmp_path: Path, autojump_clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture) -> None:
    # A new cluster: clients wrote before a0's first round; the copies were in flight to it.
    caplog.set_level(logging.INFO, "hdsd.repair")
    rebuild, batches = await _first_start(tmp_path, [-0.5, -2.0, STARTED_SKEW_S / 2])
    assert batches and all(state == "checking" for state, _ in batches)
    assert rebuild["versions_received"] == 3
    assert "rebuild_running" not in caplog.text


async def test_an_empty_node_missing_a_version_older_than_itself_rebuilds(
        tmp_path: Path, autojump_clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture) -> None:
    # A wiped store (or one down while written): one version predates a0's start. Its reads
    # are merged with the peers from before the first received version is visible.
    caplog.set_level(logging.INFO, "hdsd.repair")
    rebuild, batches = await _first_start(tmp_path, [-0.5, 2 * STARTED_SKEW_S + 60])
    assert batches[0] == ("running", False)
    assert rebuild["versions_received"] == 2
    assert "event=rebuild_running node=a0 peer=b0 versions_written_before_start=1" \
        in caplog.text


async def test_the_trees_are_snapshot_on_their_schedule_only_when_something_was_indexed(
        tmp_path: Path) -> None:
    # [repair] snapshot_s: an idle node rewrites nothing (the snapshot is a whole-tree write),
    # and a version indexed since the last snapshot is in the next one.
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    snap = tmp_path / "a0.snap"
    try:
        v, chunks = _version("first", 1, "a0", 1)
        await pair.stores["a0"].commit([*chunks, v])
        pair.open()
        store: Store = pair.stores["a0"]
        m = Maintenance(name="a0", layout=pair.layout, store=store,
                        peers=Link("a0", pair.sides), snapshot=snap,
                        observe_hlc=lambda h: None, open_chunk=lambda t, c, p: None,
                        repair_interval_s=0, repair_rate_mib_s=1000, scrub_interval_s=0,
                        scrub_rate_mib_s=1000, snapshot_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            while not (m.ready and snap.exists()):
                await trio.sleep(0.01)
            first = snap.stat()
            await trio.sleep(0.5)  # ten periods with nothing indexed
            assert (snap.stat().st_ino, snap.stat().st_mtime_ns) == (first.st_ino,
                                                                    first.st_mtime_ns)
            watermark = m.trees.watermark
            v, chunks = _version("second", 2, "a0", 1)
            await store.commit([*chunks, v])
            with trio.fail_after(30):
                while m.trees.watermark == watermark or snap.stat().st_ino == first.st_ino:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        again = PeerTrees(store, pair.layout, "a0", snap)
        assert again.watermark == m.trees.watermark and again.count("b0") == 2
    finally:
        pair.close()


async def test_the_trees_do_not_query_the_index_while_the_store_has_not_changed(
        tmp_path: Path) -> None:
    # An idle node's snapshot beat costs no catch-up query (and no worker thread) at all; a
    # commit, or trees not saved yet (a new layout's), bring the next beat's work back.
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    snap = tmp_path / "a0.snap"
    try:
        v, chunks = _version("first", 1, "a0", 1)
        await pair.stores["a0"].commit([*chunks, v])
        pair.open()
        store: Store = pair.stores["a0"]
        queries = {"n": 0}
        real = store.version_names_since

        def counted(*args: Any, **kwargs: Any) -> Any:
            queries["n"] += 1
            return real(*args, **kwargs)
        store.version_names_since = counted  # type: ignore[method-assign]
        m = Maintenance(name="a0", layout=pair.layout, store=store,
                        peers=Link("a0", pair.sides), snapshot=snap,
                        observe_hlc=lambda h: None, open_chunk=lambda t, c, p: None,
                        repair_interval_s=0, repair_rate_mib_s=1000, scrub_interval_s=0,
                        scrub_rate_mib_s=1000, snapshot_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            while not (m.ready and snap.exists()):
                await trio.sleep(0.01)
            before = queries["n"]
            await trio.sleep(0.5)  # ten periods with nothing committed
            assert queries["n"] == before
            first = snap.stat()
            v, chunks = _version("second", 2, "a0", 1)
            await store.commit([*chunks, v])
            with trio.fail_after(30):
                while m.trees.count("b0") < 2 or snap.stat().st_ino == first.st_ino:
                    await trio.sleep(0.01)
            assert queries["n"] > before
            await trio.sleep(0.2)  # the beat after the catch-up may query once more
            before = queries["n"]
            await trio.sleep(0.5)
            assert queries["n"] == before
            # Trees rebuilt (a new layout version) with the store unchanged: saved at the
            # next beat all the same.
            second = snap.stat()
            await trio.to_thread.run_sync(m.trees.set_layouts, pair.layout, None)
            await trio.to_thread.run_sync(m.trees.catch_up)
            with trio.fail_after(30):
                while snap.stat().st_ino == second.st_ino:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        again = PeerTrees(store, pair.layout, "a0", snap)
        assert again.watermark == m.trees.watermark and again.count("b0") == 2
    finally:
        pair.close()
