"""The blocking Client's hand-off to its loop thread: many threads at once, errors crossing with
their type, close while calls are in flight, Ctrl-C while waiting, a call from the loop's own
thread; and, against a real two-site cluster, the streaming calls shared by threads.

The hand-off tests replace the AsyncClient the Client drives with :class:`ScriptedAsync`, whose
calls do what each test scripts (wait for each other, raise, never end): the thread crossings
are what is tested, on real threads and a real trio loop. Every wait is bounded, so a broken
hand-off fails instead of hanging.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hdsd
from hdsd import Client, HdsdError, NotFound, PermissionDenied
from hdsd.client import _sync
from tests.helpers.cluster import NodeProcess, init_cluster

LIMIT = 20.0  # seconds any single wait of these tests may take before it is a failure


class ScriptedAsync:
    """Stands in for AsyncClient inside Client: ``put(bucket, key, data)`` runs
    ``self.script(key)`` in the loop thread and returns its result."""

    script: Callable[[str], Any]

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.in_flight = 0
        self.peak = 0
        self.entered = False
        self.exited = False
        self.finished: list[str] = []

    async def __aenter__(self) -> ScriptedAsync:
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    async def put(self, bucket: str, key: str, data: object, **options: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            result = await self.script(key)
        finally:
            self.in_flight -= 1
        self.finished.append(key)
        return result

    async def stat(self, bucket: str, key: str, **options: Any) -> Any:
        return ("stat", key)


@pytest.fixture(params=["eventfd", "socketpair"])
def scripted(request: pytest.FixtureRequest,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[type[ScriptedAsync]]:
    """Each hand-off test runs with both doorbells: Linux's eventfd, and the socket pair used
    where there is none (macOS, Windows)."""
    monkeypatch.setattr("hdsd.client._sync.AsyncClient", ScriptedAsync)
    monkeypatch.setattr(_sync, "_EVENTFD", request.param == "eventfd")
    yield ScriptedAsync


def _fake(client: Client) -> ScriptedAsync:
    fake = client._async
    assert isinstance(fake, ScriptedAsync)
    return fake


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


async def _trio_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(LIMIT):
        while not condition():
            await trio.sleep(0.001)


class Threads:
    """Runs *fn(i)* in *n* threads; ``results[i]`` is its value or the exception it raised."""

    def __init__(self, n: int, fn: Callable[[int], Any]) -> None:
        self.results: dict[int, Any] = {}

        def run(i: int) -> None:
            try:
                self.results[i] = fn(i)
            except BaseException as exc:  # inspected by the test
                self.results[i] = exc

        self.threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def join(self, limit: float = LIMIT) -> dict[int, Any]:
        for t in self.threads:
            t.join(limit)
            assert not t.is_alive(), "a caller is still blocked"
        return self.results


def test_threads_sharing_one_client_run_their_calls_at_once(
        scripted: type[ScriptedAsync], monkeypatch: pytest.MonkeyPatch) -> None:
    k, each = 8, 30
    workers: list[object] = []

    class CountedWorker(_sync._Worker):
        def __init__(self) -> None:
            super().__init__()
            workers.append(self)

    monkeypatch.setattr(_sync, "_Worker", CountedWorker)
    client = Client()
    fake = _fake(client)

    async def script(key: str) -> str:
        if key.endswith("/0"):
            # Every thread's first call waits until all K are in the loop at once: calls
            # that were run one after the other would never get there (and time out).
            await _trio_until(lambda: fake.in_flight == k or fake.peak == k)
        await trio.sleep(0)
        return key.upper()

    fake.script = script
    with client:
        results = Threads(k, lambda t: [client.put("b", f"t{t}/{i}", b"")
                                        for i in range(each)]).join()
        made = len(workers)  # one per call that found every worker busy
        assert k <= made <= 2 * k  # a caller's next call may come before its worker is idle
        assert [client.put("b", f"again{i}", b"") for i in range(50)] == [
            f"AGAIN{i}" for i in range(50)]
        assert len(workers) == made  # reused: none is spawned per call
    assert fake.peak == k
    for t in range(k):
        assert results[t] == [f"T{t}/{i}" for i in range(each)]  # its own, in its order


@pytest.mark.parametrize("error", [PermissionDenied("not yours"), ValueError("odd")])
def test_an_error_crosses_to_the_caller_with_its_type(scripted: type[ScriptedAsync],
                                                      error: Exception) -> None:
    async def script(key: str) -> str:
        if key == "bad":
            raise error
        return key

    with Client() as client:
        _fake(client).script = script
        with pytest.raises(type(error), match=str(error)) as raised:
            client.put("b", "bad", b"")
        assert raised.value is error
        # The loop's frames are kept: the traceback shows where in the loop it was raised.
        assert "in script" in "".join(traceback.format_tb(raised.value.__traceback__))
        assert client.put("b", "good", b"") == "good"  # the client goes on


def test_close_with_calls_in_flight_fails_them_and_then_every_later_call(
        scripted: type[ScriptedAsync]) -> None:
    client = Client()
    fake = _fake(client)

    async def script(key: str) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.script = script
    callers = Threads(3, lambda t: client.put("b", f"k{t}", b""))
    _until(lambda: fake.in_flight == 3)
    client.close()
    results = callers.join()
    for t in range(3):
        assert type(results[t]) is HdsdError, results[t]
        assert "closed during the call" in str(results[t])
    assert fake.exited and fake.in_flight == 0
    with pytest.raises(HdsdError, match="the client is closed"):
        client.put("b", "late", b"")
    client.close()  # idempotent
    with client:  # a context manager on a closed client closes nothing more
        pass


def test_close_from_several_threads_at_once(scripted: type[ScriptedAsync]) -> None:
    client = Client()
    closers = Threads(4, lambda t: client.close()).join()
    assert list(closers.values()) == [None] * 4
    assert _fake(client).exited


def test_the_context_manager_closes(scripted: type[ScriptedAsync]) -> None:
    async def script(key: str) -> str:
        return key

    with Client() as client:
        _fake(client).script = script
        assert client.put("b", "k", b"") == "k"
    assert _fake(client).exited
    with pytest.raises(HdsdError, match="the client is closed"):
        client.put("b", "k", b"")


def test_a_call_from_the_loops_own_thread_is_refused_not_a_deadlock(
        scripted: type[ScriptedAsync]) -> None:
    with Client() as client:
        async def script(key: str) -> Any:
            # What a progress callback runs in: the loop thread.
            try:
                client.stat("b", key)
            except RuntimeError as exc:
                return exc
            raise AssertionError("a blocking call from the loop thread was accepted")

        _fake(client).script = script
        refused = client.put("b", "k", b"")
        assert isinstance(refused, RuntimeError) and "own thread" in str(refused)
        assert client.stat("b", "k") == ("stat", "k")


def test_ctrl_c_while_waiting_leaves_the_next_call_its_own_answer(
        scripted: type[ScriptedAsync]) -> None:
    release_first = threading.Event()
    client = Client()
    fake = _fake(client)

    async def script(key: str) -> str:
        if key == "first":
            await _trio_until(release_first.is_set)
        elif key == "second":
            # Waits while the interrupted first call ends: its completion must not be taken
            # for this call's (a wait object shared between the two would be).
            release_first.set()
            await _trio_until(lambda: "first" in fake.finished)
            await trio.sleep(0.05)
        return key

    fake.script = script
    main = threading.main_thread().ident
    assert threading.get_ident() == main, "signals are delivered to the main thread"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with client:
            interrupter = Threads(1, lambda _: (_until(lambda: fake.in_flight == 1),
                                                signal.pthread_kill(main, signal.SIGINT)))
            with pytest.raises(KeyboardInterrupt):
                client.put("b", "first", b"")
            interrupter.join()
            assert client.put("b", "second", b"") == "second"
            assert client.put("b", "third", b"") == "third"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fake.finished == ["first", "second", "third"]


# -- against a real cluster ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sync")
    profile = init_cluster(root)
    nodes = [NodeProcess(root / f"{site}-n1" / "node.toml").start() for site in ("dc2", "dc1")]
    try:
        yield profile
    finally:
        for node in nodes:
            node.kill()


@pytest.mark.e2e
def test_threads_share_one_client_for_every_kind_of_call(cluster: Path,
                                                         tmp_path: Path) -> None:
    """Small puts, a file, an iterator, a file-like object, gets to memory and to a file, and a
    typed refusal: each of 6 threads through the one Client, over real TLS to two sites."""
    big = os.urandom((1 << 20) + 7)  # streamed: two pieces, above the inline size

    def work(t: int) -> dict[str, Any]:
        src = tmp_path / f"src{t}"
        src.write_bytes(big)
        for i in range(10):
            client.put("sync", f"t{t}/small{i}", f"{t}:{i}".encode())
        client.put("sync", f"t{t}/file", src)
        client.put("sync", f"t{t}/iter", iter([b"a" * 1000, b"b" * 1000]), size=2000)
        with src.open("rb") as f:
            client.put("sync", f"t{t}/reader", f, size=len(big))
        dst = tmp_path / f"dst{t}"
        info = client.get_to_file("sync", f"t{t}/file", dst)
        try:
            client.get("sync", f"t{t}/missing")
            missing: Any = None
        except NotFound as exc:
            missing = exc
        return {"small": [client.get("sync", f"t{t}/small{i}") for i in range(10)],
                "iter": client.get("sync", f"t{t}/iter"),
                "reader": client.get("sync", f"t{t}/reader") == big,
                "file": (info.size, dst.read_bytes() == big),
                "missing": missing}

    with hdsd.Client(cluster, site="dc1") as client:
        results = Threads(6, work).join(limit=300)  # real I/O on a shared, loaded machine
        for t, got in results.items():
            assert not isinstance(got, BaseException), got
            assert got["small"] == [f"{t}:{i}".encode() for i in range(10)]
            assert got["iter"] == b"a" * 1000 + b"b" * 1000
            assert got["reader"] is True
            assert got["file"] == (len(big), True)
            assert isinstance(got["missing"], NotFound)
        listed = {e.key for e in client.list_all("sync")}
        assert {f"t{t}/file" for t in range(6)} <= listed and len(listed) == 6 * 13
