"""Deploy on four "machines": a network namespace per node, a bridge per site, one link
between the sites that the test cuts (``ip link set ... down``) and restores.

Topology (all inside a private "fabric" namespace, nothing touches the host's network)::

    est-1 10.99.0.11 ─┐                     ┌─ sud-1 10.99.0.13
    est-2 10.99.0.12 ─┼─ br-est ══ link ══ br-sud ─┼─ sud-2 10.99.0.14
    ops   10.99.0.2  ─┘   (inter-site)      └─

Every node runs from its own bundle (``hdsd init --spec --archive``, extracted into a directory
of its own) with the shipped unit's command line, ``hdsd serve --config <bundle>/node.toml``,
inside its namespace; the operator's commands run in the ``ops`` namespace (site est). The
steps follow the README's "Deploy on four machines". Needs root (``ip netns``); skipped
otherwise, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cluster import TEST_SEGMENT_MIB
from tests.helpers.netns import REASON, Net, NsNode, two_sites

NODES = {"est-1": ("est", "10.99.0.11"), "est-2": ("est", "10.99.0.12"),
         "sud-1": ("sud", "10.99.0.13"), "sud-2": ("sud", "10.99.0.14")}
OPS_ADDRESS = "10.99.0.2"


pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _network() -> Net:
    return two_sites({**NODES, "ops": ("est", OPS_ADDRESS)})


@dataclass
class Cluster:
    net: Net
    ops: Path
    nodes: dict[str, NsNode]

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[bytes]:
        """An operator command, run on the ops host (site est)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.net.ns("ops"), sys.executable, "-m", "hdsd",
             "--profile", str(self.ops / "client.toml"), "--timeout", "15", *args],
            input=input, capture_output=True, timeout=timeout)

    def status(self, site: str = "est") -> tuple[int, dict]:
        proc = self.cli("--site", site, "status", "--json")
        assert proc.returncode in (0, 10, 11), proc.stderr.decode()
        return proc.returncode, json.loads(proc.stdout)

    def wait_status(self, want: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            code, st = self.status()
            if code == want:
                return st
            if code == 10 and want == 0:
                self.cli("repair", "--wait")  # compare the peers met before all were up
            if time.monotonic() > deadline:
                raise AssertionError(f"status exit {code}, wanted {want}: {json.dumps(st)[:2000]}")
            time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("netns")
    net = _network()
    nodes: dict[str, NsNode] = {}
    try:
        # 1. the spec: every node on its own host, same port everywhere (separate machines)
        spec = tmp / "cluster-spec.toml"
        entries = {site: [] for site in ("est", "sud")}
        for name, (site, address) in NODES.items():
            entries[site].append(f'{{ name = "{name}", addresses = ["{address}", '
                                 f'"{name}.hdsd.test"] }}')
        spec.write_text('[cluster]\nid = "hdsd-netns"\nport = 7400\n\n[metrics]\nport = 9400\n'
                        + "".join(f'\n[[sites]]\nname = "{site}"\nnodes = ['
                                  + ", ".join(nodes_) + "]\n"
                                  for site, nodes_ in entries.items()))
        # 2. the bundles
        ops = tmp / "ops"
        init = subprocess.run([sys.executable, "-m", "hdsd", "init", "--spec", str(spec),
                               str(ops), "--archive"], capture_output=True, timeout=120)
        assert init.returncode == 0, init.stderr.decode()
        # 3. each machine gets its archive only, extracted into a directory of its own
        for name in NODES:
            machine = tmp / f"machine-{name}"
            machine.mkdir()
            with tarfile.open(ops / f"{name}.tar") as tar:
                tar.extractall(machine, filter="tar")
            config = machine / "node.toml"
            config.write_text(config.read_text().replace(
                "# segment_mib = 256", f"segment_mib = {TEST_SEGMENT_MIB}"))
            nodes[name] = NsNode(net.ns(name), config)
        for node in nodes.values():
            node.start()
        yield Cluster(net, ops, nodes)
    finally:
        for node in nodes.values():
            node.kill()
        net.destroy()


def test_deploy_write_read_cut_and_restore_the_inter_site_link(cluster: Cluster) -> None:
    # 4. check: every node up, then 0 once every pair was compared
    st = cluster.wait_status(0)
    assert {n["node"]: n["address"] for n in st["nodes"]} == {
        name: f"{address}:7400" for name, (_, address) in NODES.items()}
    acknowledged: dict[str, bytes] = {}
    for i in range(20):
        data = os.urandom(1000 + 5000 * i)
        put = cluster.cli("--site", "est", "put", f"demo/k{i}", "-", input=data)
        assert put.returncode == 0, put.stderr.decode()
        acknowledged[f"k{i}"] = data
    for key, data in acknowledged.items():
        got = cluster.cli("--site", "sud", "get", f"demo/{key}")
        assert got.returncode == 0 and got.stdout == data, got.stderr.decode()

    # the inter-site link cut: site sud is unreachable from est (and from ops)
    cluster.net.site_link(False)
    cut_at = time.monotonic()
    try:
        code, st = cluster.status()
        assert code == 11
        assert sorted(n["node"] for n in st["nodes"] if not n["up"]) == ["sud-1", "sud-2"]
        # each-site with on_peer_site_loss = refuse: a write cannot be fsynced in sud, so it
        # is refused (Unavailable, exit 6), never acknowledged
        began = time.monotonic()
        refused = cluster.cli("--site", "est", "put", "demo/during-cut", "-", input=b"x" * 100)
        assert refused.returncode == 6, refused.stderr.decode()
        print(f"\nfigures: a put during the cut refused after {time.monotonic() - began:.1f} s "
              f"({refused.stderr.decode().strip()[:160]})")
        for key in ("k0", "k19"):  # reads keep working in est
            got = cluster.cli("--site", "est", "get", f"demo/{key}")
            assert got.returncode == 0 and got.stdout == acknowledged[key]
    finally:
        cluster.net.site_link(True)
        restored_at = time.monotonic()
        print(f"figures: link cut for {restored_at - cut_at:.1f} s")

    # restored: writes go through again, every acknowledged write is readable in both sites
    deadline = time.monotonic() + 90
    while (put := cluster.cli("--site", "est", "put", "demo/after", "-", input=b"back")
           ).returncode != 0:
        assert time.monotonic() < deadline, put.stderr.decode()
        time.sleep(1)
    acknowledged["after"] = b"back"
    print(f"figures: first put acknowledged {time.monotonic() - restored_at:.1f} s after the "
          "link came back")
    cluster.wait_status(0)
    print(f"figures: status exit 0 again {time.monotonic() - restored_at:.1f} s after")
    for site in ("est", "sud"):
        for key, data in acknowledged.items():
            got = cluster.cli("--site", site, "get", f"demo/{key}")
            assert got.returncode == 0 and got.stdout == data, (site, key, got.stderr.decode())


def test_status_exit_code_with_a_node_killed(cluster: Cluster) -> None:
    cluster.wait_status(0)
    cluster.nodes["sud-2"].kill()
    code, st = cluster.status()
    assert code == 11
    assert [n["node"] for n in st["nodes"] if not n["up"]] == ["sud-2"]
    # replicas_per_site = 2 (the default for two nodes per site): writes still go through
    put = cluster.cli("--site", "est", "put", "demo/one-down", "-", input=b"still written")
    assert put.returncode == 0, put.stderr.decode()
    got = cluster.cli("--site", "sud", "get", "demo/one-down")
    assert got.returncode == 0 and got.stdout == b"still written"
