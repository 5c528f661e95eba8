"""One connection cannot make the node hold unbounded memory (issue 13, finding 2).

Each attack runs against a fresh real node while legitimate clients keep working; the node's
RSS (VmRSS from /proc) must stay under ``RSS_BOUND_MIB`` whatever the attack. RSS before/after
and the legitimate put latency during the attack are printed for the record, not asserted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hdsd
from hdsd.wire import Data, GetRequest, PutStart, StatRequest
from tests.helpers.cluster import NodeProcess
from tests.helpers.hostile import handshaken, legit_put_latency, rss_kib

pytestmark = pytest.mark.e2e

RSS_BOUND_MIB = 256
LEGIT_CLIENTS = 5


@pytest.fixture
def node(cluster_dir: Path) -> Iterator[NodeProcess]:
    """A fresh dc1 node for each attack (its replica in dc2 keeps running): RSS figures are the
    attack's own, not what the allocator kept from the previous one."""
    other = NodeProcess(cluster_dir / "dc2-n1" / "node.toml").start()
    proc = NodeProcess(cluster_dir / "dc1-n1" / "node.toml").start()
    try:
        yield proc
    finally:
        proc.kill()
        other.kill()


def _rss_mib(node: NodeProcess) -> float:
    assert node.proc is not None
    return rss_kib(node.proc.pid) / 1024


def _while_attacked(profile: Path, node: NodeProcess, name: str,
                    settle: Callable[[], None]) -> None:
    """With the attack in place: sample the node's RSS while legitimate clients work.

    The clients (a put and its get-back each) run at once: an attack that holds the node's
    body budget makes each request wait out the budget's patience (5 s) before it goes on over
    it, and one client after another that was 5 x 10 s of waiting per test. RSS is sampled
    every 0.3 s throughout, and the node has their requests on top of the attack at once."""
    before = _rss_mib(node)
    settle()
    peak = before
    with ThreadPoolExecutor(LEGIT_CLIENTS) as pool:
        running = [pool.submit(legit_put_latency, profile, f"{name}-{i}")
                   for i in range(LEGIT_CLIENTS)]
        while not all(f.done() for f in running):
            peak = max(peak, _rss_mib(node))
            time.sleep(0.3)
        latencies = [f.result() for f in running]
    peak = max(peak, _rss_mib(node))
    assert node.alive, node.log()
    print(f"\n[{name}] node RSS {before:.0f} MiB before, peak {peak:.0f} MiB during; legitimate "
          f"put latency during: {', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")
    assert peak <= RSS_BOUND_MIB, f"node RSS {peak:.0f} MiB > {RSS_BOUND_MIB} MiB"


def test_pipelined_gets_never_read(profile: Path, node: NodeProcess) -> None:
    blob = os.urandom(4 << 20)
    with hdsd.Client(profile) as client:
        client.put("mem", "four-mib", blob)
    sock, conn = handshaken(profile, window=8 << 20)
    with sock:
        sock.sendall(b"".join(conn.send(GetRequest(rid=rid, bucket="mem", key="four-mib",
                                                   version=None, start=None, end=None))
                              for rid in range(1, 65)))
        _while_attacked(profile, node, "64 gets never read", lambda: time.sleep(3))
    with hdsd.Client(profile) as client:
        assert client.get("mem", "four-mib") == blob


def test_puts_sharing_a_request_id_behind_a_trickle(profile: Path, node: NodeProcess) -> None:
    rid_shared = os.urandom(16)
    sock, conn = handshaken(profile)
    stop = threading.Event()

    def trickle() -> None:
        # The first put never ends: a byte now and then keeps it under the per-event timeout.
        while not stop.wait(2):
            try:
                sock.sendall(conn.send(Data(rid=1, data=b"x")))
            except OSError:
                return

    with sock:
        sock.sendall(conn.send(PutStart(rid=1, request_id=rid_shared, bucket="mem", key="slow",
                                        size=64 << 20, metadata={}, policy=None)))
        pusher = threading.Thread(target=trickle, daemon=True)

        def attack() -> None:
            sock.settimeout(5)
            try:
                for rid in range(2, 42):
                    sock.sendall(conn.send(PutStart(rid=rid, request_id=rid_shared,
                                                    bucket="mem", key="slow", size=8 << 20,
                                                    metadata={}, policy=None)))
                    for _ in range(8):
                        sock.sendall(conn.send(Data(rid=rid, data=os.urandom(1 << 20))))
            except TimeoutError:
                pass  # the node stopped reading us: that is the bound at work
            pusher.start()
            time.sleep(2)

        try:
            _while_attacked(profile, node, "40 puts sharing a request id", attack)
        finally:
            stop.set()
    with hdsd.Client(profile) as client:
        with pytest.raises(hdsd.NotFound):
            client.stat("mem", "slow")


def test_pipelined_stats_never_read(profile: Path, node: NodeProcess) -> None:
    sock, conn = handshaken(profile)
    sent = [0]

    def attack() -> None:
        sock.settimeout(3)
        batch = []
        try:
            for rid in range(1, 40_001):
                batch.append(conn.send(StatRequest(rid=rid, bucket="mem", key="none",
                                                   version=None)))
                if len(batch) == 500:
                    sock.sendall(b"".join(batch))
                    sent[0] += len(batch)
                    batch = []
        except TimeoutError:
            pass  # the node stopped reading us
        time.sleep(1)

    with sock:
        _while_attacked(profile, node, "40,000 stats never read", attack)
    print(f"[40,000 stats never read] the node took ~{sent[0]} before it stopped reading")
