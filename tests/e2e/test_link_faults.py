"""The inter-site link through a TCP fault proxy: delays, partitions, resets, and automatic
degradation when the configuration asks for it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hdsd
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e


class ProxiedCluster:
    """2 sites x 1 node; each node reaches the other only through a FaultProxy."""

    def __init__(self, root: Path, *, on_peer_site_loss: str = "refuse") -> None:
        self.profile = init_cluster(root)
        cfg1, cfg2 = root / "dc1-n1" / "node.toml", root / "dc2-n1" / "node.toml"
        port1 = _own_port(cfg1)
        port2 = _own_port(cfg2)
        self.to_dc2 = FaultProxy("127.0.0.1", port2).__enter__()
        self.to_dc1 = FaultProxy("127.0.0.1", port1).__enter__()
        _route(cfg1, "dc2-n1", self.to_dc2.port, on_peer_site_loss)
        _route(cfg2, "dc1-n1", self.to_dc1.port, "refuse")
        self.dc1 = NodeProcess(cfg1)
        self.dc2 = NodeProcess(cfg2)

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
