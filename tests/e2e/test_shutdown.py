"""SIGTERM: stop accepting, finish in-flight requests, exit 0; a second signal stops at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hdsd
from tests.helpers.cluster import NodeProcess, init_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Path, NodeProcess]]:
    profile = init_cluster(tmp_path / "c")
    other = NodeProcess(tmp_path / "c" / "dc2-n1" / "node.toml").start()
    node = NodeProcess(tmp_path / "c" / "dc1-n1" / "node.toml").start()
    try:
        yield profile, node
    finally:
        node.kill()
        other.kill()


def _slow_body(started: threading.Event, release: threading.Event) -> Iterator[bytes]:
    yield b"a" * 100_000
    started.set()
    release.wait(60)
    for _ in range(20):
        yield b"b" * 100_000


def test_sigterm_finishes_in_flight_put(fresh: tuple[Path, NodeProcess]) -> None:
    profile, node = fresh
    started, release = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def upload() -> None:
        try:
            with hdsd.Client(profile, retries=0) as c:
                result["info"] = c.put("b", "in-flight", _slow_body(started, release))
        except Exception as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=upload)
    worker.start()
    assert started.wait(60)
    assert node.proc is not None
    node.proc.send_signal(15)
    deadline = time.monotonic() + 30
    while not any("stopping" in line for line in node.stderr_lines):
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.02)
    # New connections are refused while the in-flight put goes on.
    with pytest.raises(hdsd.Unavailable):
        with hdsd.Client(profile, retries=0, timeout=10) as c:
            c.status()
    release.set()
    worker.join(60)
    assert "error" not in result, result
    assert node.proc.wait(60) == 0, node.log()
    node.start()
    with hdsd.Client(profile) as c:
        assert c.get("b", "in-flight") == b"a" * 100_000 + b"b" * 2_000_000


def test_second_signal_stops_at_once(fresh: tuple[Path, NodeProcess]) -> None:
    profile, node = fresh
    started, release = threading.Event(), threading.Event()

    def upload() -> None:
        try:
            with hdsd.Client(profile, retries=0) as c:
                c.put("b", "never", _slow_body(started, release))
        except hdsd.HdsdError:
            pass  # expected: the node went away

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    assert started.wait(60)
    assert node.proc is not None
    node.proc.send_signal(15)
    deadline = time.monotonic() + 30
    while not any("stopping" in line for line in node.stderr_lines):
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.02)
    node.proc.send_signal(15)
    assert node.proc.wait(60) == 1, node.log()
    release.set()
    worker.join(60)
    node.start()  # the log recovers; the unfinished put left no version
    with hdsd.Client(profile) as c:
        with pytest.raises(hdsd.NotFound):
            c.stat("b", "never")
