"""The inter-site link through a fault proxy: delays, partitions, resets, and automatic
degradation when the configuration asks for it; and, through a frame-aware proxy, one request
or one answer lost (or held past the write timeout) on a link that stays up."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hdsd
from hdsd.wire._constants import T_LEAF_DIFF, T_TREE_LEVEL
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.frameproxy import FrameProxy

pytestmark = pytest.mark.e2e


class ProxiedCluster:
    """2 sites x 1 node; each node reaches the other only through a FaultProxy (*frames*: a
    FrameProxy, which terminates the peer link's TLS with the cluster's certificates)."""

    def __init__(self, root: Path, *, on_peer_site_loss: str = "refuse", frames: bool = False,
                 policy: str = "each-site", periodic_repair: bool = True) -> None:
        self.profile = init_cluster(root)
        cfg1, cfg2 = root / "dc1-n1" / "node.toml", root / "dc2-n1" / "node.toml"
        port1 = _own_port(cfg1)
        port2 = _own_port(cfg2)
        self.to_dc2: FaultProxy
        self.to_dc1: FaultProxy
        if frames:
            certs = {n: (root / n / f"node-{n}.crt", root / n / f"node-{n}.key")
                     for n in ("dc1-n1", "dc2-n1")}
            ca = root / "dc1-n1" / "ca.crt"
            self.to_dc2 = FrameProxy("127.0.0.1", port2, tls=certs["dc2-n1"], certs=certs,
                                     ca=ca).__enter__()
            self.to_dc1 = FrameProxy("127.0.0.1", port1, tls=certs["dc1-n1"], certs=certs,
                                     ca=ca).__enter__()
        else:
            self.to_dc2 = FaultProxy("127.0.0.1", port2).__enter__()
            self.to_dc1 = FaultProxy("127.0.0.1", port1).__enter__()
        _route(cfg1, "dc2-n1", self.to_dc2.port, on_peer_site_loss)
        _route(cfg2, "dc1-n1", self.to_dc1.port, "refuse")
        for cfg in (cfg1, cfg2):
            text = cfg.read_text().replace('write_policy = "each-site"',
                                           f'write_policy = "{policy}"')
            if not periodic_repair:
                # No anti-entropy round but those a doubt starts: what brings a version over
                # is then the hint, or the reconciliation an event the node saw asked for.
                text = text.replace("# [repair]", "[repair]").replace(
                    "# interval_s = 3600", "interval_s = 0")
            cfg.write_text(text)
        self.dc1 = NodeProcess(cfg1)
        self.dc2 = NodeProcess(cfg2)

    def start_both(self) -> None:
        """Start both nodes at once (each start is seconds of a short test)."""
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(n.start) for n in (self.dc1, self.dc2)]:
                started.result()

    def link(self, action: str, *args: float) -> None:
        for proxy in (self.to_dc1, self.to_dc2):
            getattr(proxy, action)(*args)

    def close(self) -> None:
        self.dc1.kill()
        self.dc2.kill()
        self.to_dc1.stop()
        self.to_dc2.stop()


def _own_port(cfg: Path) -> int:
    match = re.search(r'^listen = "127\.0\.0\.1:(\d+)"', cfg.read_text(), re.M)
    assert match
    return int(match.group(1))


def _route(cfg: Path, peer: str, port: int, on_loss: str) -> None:
    text = re.sub(rf'(name = "{peer}", address = "127\.0\.0\.1:)\d+', rf"\g<1>{port}",
                  cfg.read_text())
    text = text.replace("write_timeout_s = 10", "write_timeout_s = 2")
    text = text.replace('on_peer_site_loss = "refuse"', f'on_peer_site_loss = "{on_loss}"')
    cfg.write_text(text)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(tmp_path / "c")
    cluster.dc2.start()
    cluster.dc1.start()
    try:
        yield cluster
    finally:
        cluster.close()


def test_partition_delay_reset_heal(proxied: ProxiedCluster) -> None:
    with hdsd.Client(proxied.profile, site="dc1", retries=0, timeout=30) as dc1:
        dc1.put("link", "healthy", b"1")
        assert proxied.to_dc2.connections >= 1  # replication really crosses the proxy
        proxied.link("set_delay", 0.03)
        dc1.put("link", "slow", b"2" * 200_000)  # a slow link is slower, not broken
        proxied.link("blackhole")
        with pytest.raises(hdsd.QuorumNotReached, match="each-site"):
            dc1.put("link", "partitioned", b"3")
        proxied.link("heal")
        proxied.link("reset")
        with pytest.raises(hdsd.QuorumNotReached):
            dc1.put("link", "reset", b"4")
        proxied.link("heal")
        deadline = time.monotonic() + 60
        while True:  # peers reconnect with backoff
            try:
                dc1.put("link", "after", b"5")
                break
            except hdsd.QuorumNotReached:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    with hdsd.Client(proxied.profile, site="dc2") as dc2:
        assert dc2.get("link", "healthy") == b"1"
        assert dc2.get("link", "slow") == b"2" * 200_000
        assert dc2.get("link", "after") == b"5"


def test_automatic_degrade_on_peer_site_loss(tmp_path: Path) -> None:
    cluster = ProxiedCluster(tmp_path / "c", on_peer_site_loss="degrade")
    try:
        cluster.dc2.start()
        cluster.dc1.start()
        with hdsd.Client(cluster.profile, site="dc1", retries=0, timeout=30) as dc1:
            dc1.put("auto", "before", b"x")
            cluster.link("blackhole")
            dc1.put("auto", "alone", b"written while dc2 is unreachable")  # degraded, hinted
            st = dc1.status()
            assert st["mode"]["mode"] == "degraded" and st["mode"]["automatic"]
            assert st["rpo"]["versions"] >= 1
            cluster.link("heal")
            deadline = time.monotonic() + 60
            while (st := dc1.status())["mode"]["mode"] != "normal" or st["rpo"]["versions"]:
                assert time.monotonic() < deadline, st
                time.sleep(0.2)
        with hdsd.Client(cluster.profile, site="dc2") as dc2:
            assert dc2.get("auto", "alone") == b"written while dc2 is unreachable"
    finally:
        cluster.close()


# -- one frame lost on a link that stays up (tests/helpers/frameproxy.py) ----------------------
# The proxy's write timeout (_route): a held request arrives this much after it.
_WRITE_TIMEOUT_S = 2.0
_HOLD_S = _WRITE_TIMEOUT_S + 1.0


def _wait(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


def _settled(cluster: ProxiedCluster) -> None:
    """Until both nodes read a live RPO of 0: no hint, no peer in doubt."""
    for site in ("dc1", "dc2"):
        with hdsd.Client(cluster.profile, site=site, retries=0, timeout=30) as c:
            _wait(f"RPO 0 on {site}", lambda: bool(c.status()["rpo"]["zero"]))


def test_local_a_replicate_lost_on_a_live_link_reaches_the_peer_by_its_hint(
        tmp_path: Path) -> None:
    """Under ``local`` an ack promises the version at dc1 and, when dc2 did not confirm it
    within the grace, a durable hint for dc2: dc2 gets it by itself, with no repair. Here the
    link stays up and nobody restarts, so no peer is in doubt and no reconciliation runs (the
    periodic anti-entropy is off, and any round is blocked at the proxies besides): if the
    hint were not kept, the live RPO would read 0 while dc2 lacked the version for good. The
    hint's first replay is lost as well."""
    cluster = ProxiedCluster(tmp_path / "c", frames=True, policy="local", periodic_repair=False)
    to_dc2, to_dc1 = cluster.to_dc2, cluster.to_dc1
    assert isinstance(to_dc2, FrameProxy) and isinstance(to_dc1, FrameProxy)
    written: dict[str, bytes] = {}
    try:
        cluster.start_both()
        with hdsd.Client(cluster.profile, site="dc1", retries=0, timeout=30) as dc1:
            written["warm"] = b"the link is up"
            dc1.put("lost", "warm", written["warm"])
            # Replication really crosses the frame proxy (it counts in its own thread, which
            # may lag the ack: hence the waits below rather than plain asserts).
            _wait("a Replicate through the proxy", lambda: to_dc2.replicates >= 1)
            # The start-up doubts (a new layout, a first start) lifted: from here on only
            # what the faults below do can bring a version over.
            _settled(cluster)
            # And no round may start from here: only the hint can bring dc2 what it lacks.
            to_dc2.block(T_TREE_LEVEL, T_LEAF_DIFF)
            to_dc1.block(T_TREE_LEVEL, T_LEAF_DIFF)
            links = to_dc2.connections
            to_dc2.drop_request()
            to_dc2.drop_request(replays=True)  # and the first replay of its hint
            written["request"] = b"its Replicate never reached dc2"
            dc1.put("lost", "request", written["request"])  # acknowledged: dc1 + a hint
            # The hint's replay starts at once (maybe before the ack reaches us); lost too,
            # it is tried again after the link's request bound.
            _wait("the hint's first replay", lambda: to_dc2.dropped_requests == 2)
            to_dc2.drop_answer()
            written["answer"] = b"dc2 stored it, its answer was lost"
            dc1.put("lost", "answer", written["answer"])
            _wait("the answer dropped", lambda: to_dc2.dropped_answers == 1)
            to_dc2.hold_request(_HOLD_S)
            written["late"] = b"its Replicate reached dc2 after the write timeout"
            dc1.put("lost", "late", written["late"])
            _wait("the request held", lambda: to_dc2.held_requests == 1)
            # The live RPO drains by itself (hint replay): no repair is run in this test.
            _wait("RPO 0 on dc1", lambda: dc1.status()["rpo"]["zero"])
            assert to_dc2.connections == links, "the link broke: not the fault meant here"
        cluster.dc1.kill()  # dc2 alone: what it holds, it holds itself
        with hdsd.Client(cluster.profile, site="dc2", retries=0, timeout=30) as dc2:
            for key, data in written.items():
                assert dc2.get("lost", key) == data, key
    finally:
        cluster.close()


def test_each_site_a_replicate_lost_on_a_live_link_is_refused_then_acked_in_both_sites(
        tmp_path: Path) -> None:
    """Under ``each-site`` a Replicate lost (or its answer lost, or the request held past the
    write timeout) on a link that stays up refuses the put; the user's retry with the same
    request id is acknowledged only once dc2 holds the version — checked on dc2 alone after
    the acks. The refused write's hint and the doubt it raised would bring dc2 the version
    anyway, so hint replays and anti-entropy rounds (either node's) are blocked meanwhile: what
    dc2 holds, the retry's own copy brought."""
    cluster = ProxiedCluster(tmp_path / "c", frames=True, periodic_repair=False)
    to_dc2, to_dc1 = cluster.to_dc2, cluster.to_dc1
    assert isinstance(to_dc2, FrameProxy) and isinstance(to_dc1, FrameProxy)
    written: dict[str, bytes] = {}
    try:
        cluster.start_both()
        with hdsd.Client(cluster.profile, site="dc1", retries=0, timeout=30) as dc1:
            dc1.put("lost", "warm", b"the link is up")
            # Rounds either node starts: dc1 pushes, dc2 pulls what it lacks.
            to_dc2.block(T_TREE_LEVEL, T_LEAF_DIFF, replays=True)
            to_dc1.block(T_TREE_LEVEL, T_LEAF_DIFF)
            for fault in ("request", "answer", "late"):
                if fault == "request":
                    to_dc2.drop_request()
                elif fault == "answer":
                    to_dc2.drop_answer()
                else:
                    to_dc2.hold_request(_HOLD_S)
                rid = os.urandom(16)
                written[fault] = f"{fault}: refused, then acknowledged".encode()
                with pytest.raises(hdsd.Unavailable):
                    dc1.put("lost", fault, written[fault], request_id=rid)
                dc1.put("lost", fault, written[fault], request_id=rid, retry=True)
            _wait("each fault applied", lambda: (
                to_dc2.dropped_requests, to_dc2.dropped_answers, to_dc2.held_requests) == (1, 1, 1))
            # The refused writes' hints were replayed, and lost.
            _wait("a hint replay blocked", lambda: to_dc2.blocked >= 1)
        cluster.dc1.kill()
        with hdsd.Client(cluster.profile, site="dc2", retries=0, timeout=30) as dc2:
            for key, data in written.items():
                assert dc2.get("lost", key) == data, key
    finally:
        cluster.close()
