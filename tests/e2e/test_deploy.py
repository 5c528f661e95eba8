"""Deploy from a cluster spec: 2 sites x 2 nodes, each node on its own loopback address
(127.0.0.11..14: Linux routes all of 127.0.0.0/8 to lo), each started from its own bundle
copied to a separate directory, with the shipped unit's command line
(``hdsd serve --config <bundle>/node.toml``). Real processes, real TLS (certificates for each
node's own address), real fsync."""

from __future__ import annotations

import json
import os
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hdsd
from hdsd.client import load_profile
from tests.helpers.cluster import TEST_SEGMENT_MIB, NodeProcess
from tests.helpers.cluster import hdsd as cli

ADDRESSES = {"est-1": "127.0.0.11", "est-2": "127.0.0.12",
             "sud-1": "127.0.0.13", "sud-2": "127.0.0.14"}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _loopback_aliases_work() -> bool:
    try:
        for host in ADDRESSES.values():
            _free_port(host)
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _loopback_aliases_work(),
                                reason="cannot bind 127.0.0.11..14 (not Linux loopback?)")


@dataclass
class Deployed:
    ops: Path  # the operator's directory (CA key, admin profile)
    machines: dict[str, Path]  # node -> its copied bundle
    nodes: dict[str, NodeProcess]

    @property
    def admin(self) -> Path:
        return self.ops / "client.toml"

    def status(self, *args: str) -> tuple[int, dict]:
        proc = cli("--profile", str(self.admin), *args, "status", "--json")
        assert proc.returncode in (0, 10, 11), proc.stderr.decode()
        return proc.returncode, json.loads(proc.stdout)


def _spec(tmp: Path) -> Path:
    def node(name: str) -> str:
        host = ADDRESSES[name]
        return (f'{{ name = "{name}", addresses = ["{host}", "{name}.hdsd.test"], '
                f"port = {_free_port(host)} }}")

    spec = tmp / "cluster-spec.toml"
    spec.write_text(f"""
[cluster]
id = "hdsd-e2e-deploy"

[metrics]
port = 0

[log]
format = "json"

[[sites]]
name = "est"
nodes = [{node("est-1")}, {node("est-2")}]

[[sites]]
name = "sud"
nodes = [{node("sud-1")}, {node("sud-2")}]
""")
    return spec


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("deploy")
    ops = tmp / "ops"
    cli("init", "--spec", str(_spec(tmp)), str(ops), "--archive", check=True)
    machines: dict[str, Path] = {}
    for name in ADDRESSES:
        # "copy the bundle to its machine": only the archive, into a directory of its own
        machine = tmp / f"machine-{name}"
        machine.mkdir()
        with tarfile.open(ops / f"{name}.tar") as tar:
            tar.extractall(machine, filter="tar")
        config = machine / "node.toml"
        config.write_text(config.read_text().replace(
            "# segment_mib = 256", f"segment_mib = {TEST_SEGMENT_MIB}"))
        machines[name] = machine
    nodes = {name: NodeProcess(machines[name] / "node.toml") for name in ADDRESSES}
    try:
        for proc in nodes.values():
            proc.start()
        yield Deployed(ops, machines, nodes)
    finally:
        for proc in nodes.values():
            proc.kill()


def test_bundles_hold_no_ca_key_and_nodes_listen_on_their_own_address(
        deployed: Deployed) -> None:
    for name, machine in deployed.machines.items():
        assert not list(machine.rglob("ca.key")), name
        assert f"listening on {ADDRESSES[name]}:" in deployed.nodes[name].log()


def test_writes_at_one_site_read_at_the_other(deployed: Deployed) -> None:
    blobs = {f"k{i}": os.urandom(size) for i, size in enumerate((0, 1, 5000, 300_000))}
    with hdsd.Client(deployed.admin, site="est") as est:
        for key, data in blobs.items():
            est.put("deploy", key, data)
    with hdsd.Client(deployed.admin, site="sud") as sud:
        for key, data in blobs.items():
            assert sud.get("deploy", key) == data
        sud.put("deploy", "from-sud", b"written in sud")
    with hdsd.Client(deployed.admin, site="est") as est:
        assert est.get("deploy", "from-sud") == b"written in sud"


def test_a_tenant_issued_while_the_cluster_runs_reaches_every_node(deployed: Deployed) -> None:
    proc = cli("cert", "issue", "--client", "pacs", "--tenant", "ward", "--role", "writer",
               "--cluster-dir", str(deployed.ops), check=True)
    assert "keys created in the cluster's catalog" in proc.stdout.decode()
    profile = deployed.ops / "clients" / "pacs.toml"
    listed = load_profile(profile)
    assert {s: len(e) for s, e in listed.sites.items()} == {"est": 2, "sud": 2}
    with hdsd.Client(profile, site="sud") as w:
        w.put("scans", "s1", b"ward data")
    with hdsd.Client(profile, site="est") as r:
        assert r.get("scans", "s1") == b"ward data"


def test_profile_refresh_lists_every_node(deployed: Deployed, tmp_path: Path) -> None:
    text = deployed.admin.read_text()
    short = tmp_path / "old.toml"
    # an old profile: one endpoint per site, relative paths made absolute
    lines = []
    for line in text.splitlines():
        if line.startswith(("ca =", "cert =", "key =")):
            key, _, value = line.partition(" = ")
            line = f'{key} = "{deployed.ops / value.strip(chr(34))}"'
        elif line.startswith("endpoints ="):
            line = line.split(",")[0].rstrip("]") + "]"
        lines.append(line)
    short.write_text("\n".join(lines) + "\n")
    assert {s: len(e) for s, e in load_profile(short).sites.items()} == {"est": 1, "sud": 1}
    cli("--profile", str(short), "profile", "refresh", check=True)
    refreshed = load_profile(short)
    assert refreshed.sites == load_profile(deployed.admin).sites
    assert refreshed.cert == load_profile(deployed.admin).cert


def test_rotate_master_is_refused_while_the_node_runs(deployed: Deployed,
                                                      tmp_path: Path) -> None:
    config = deployed.machines["est-2"] / "node.toml"
    before = (deployed.machines["est-2"] / "master.key").read_bytes()
    proc = cli("key", "rotate-master", "--config", str(config), "--new-key-file",
               str(tmp_path / "new.key"))
    assert proc.returncode == 2
    assert "is running" in proc.stderr.decode() and "stop it first" in proc.stderr.decode()
    assert (deployed.machines["est-2"] / "master.key").read_bytes() == before


def _wait_status(deployed: Deployed, want: int, timeout: float = 90) -> dict:
    """Poll `hdsd status` until it exits *want*; a 10 with nothing but peers not yet compared
    (after a restart) is what `hdsd repair` settles."""
    deadline = time.monotonic() + timeout
    while True:
        code, st = deployed.status()
        if code == want:
            return st
        if want == 0 and code == 10 and not any(n["catalog"]["sync_failures"]
                                                for n in st["nodes"]):
            cli("--profile", str(deployed.admin), "repair", "--wait")
        assert time.monotonic() < deadline, (code, json.dumps(st)[:3000])
        time.sleep(0.5)


def test_master_key_rotation_one_node_at_a_time(deployed: Deployed, tmp_path: Path) -> None:
    new_key = tmp_path / "new-master.key"
    with hdsd.Client(deployed.admin, site="est") as est:
        est.put("rotation", "before", b"written under the old key")
    order = ["est-2", "est-1", "sud-1", "sud-2"]
    for i, name in enumerate(order):
        node, machine = deployed.nodes[name], deployed.machines[name]
        old = (machine / "master.key").read_bytes()
        assert node.stop() == 0
        proc = cli("key", "rotate-master", "--config", str(machine / "node.toml"),
                   "--new-key-file", str(new_key), check=True)
        assert "old key kept as" in proc.stdout.decode()
        assert [k.read_bytes() for k in machine.glob("master.key.old-*")] == [old]
        node.start()
        if i == 0:
            # one node rotated, three not: their catalog syncs fail, and status says so
            st = _wait_status(deployed, 10)
            failing = {n["node"]: n["catalog"]["sync_failures"] for n in st["nodes"]
                       if n["catalog"]["sync_failures"]}
            assert failing and all("master key" in e for f in failing.values()
                                   for e in f.values()), failing
            # the data is untouched meanwhile
            with hdsd.Client(deployed.admin, site="sud") as sud:
                assert sud.get("rotation", "before") == b"written under the old key"
    st = _wait_status(deployed, 0)
    assert all(not n["catalog"]["sync_failures"] for n in st["nodes"])
    for name, machine in deployed.machines.items():
        assert (machine / "master.key").read_bytes() == new_key.read_bytes()
        cli("key", "confirm-rotation", "--config", str(machine / "node.toml"), check=True)
        assert not list(machine.glob("master.key.old-*")), name
    with hdsd.Client(deployed.admin, site="sud") as sud:
        assert sud.get("rotation", "before") == b"written under the old key"
        sud.put("rotation", "after", b"written under the new key")
    with hdsd.Client(deployed.admin, site="est") as est:
        assert est.get("rotation", "after") == b"written under the new key"


def test_recovery_a_node_rebuilds_its_catalog_and_keyring_from_its_peers(
        deployed: Deployed, tmp_path: Path) -> None:
    # The README's last-resort recovery: a node's catalog and keyring are only copies; moved
    # aside, the node takes the catalog from its peers at start and serves every tenant.
    name = "est-2"
    node, data = deployed.nodes[name], deployed.machines[name] / "data"
    assert node.stop() == 0
    for file in ("catalog.sqlite", "keyring.hdsd"):
        (data / file).rename(tmp_path / file)
    node.start()
    _wait_status(deployed, 0)
    profile = deployed.ops / "clients" / "pacs.toml"  # tenant ward, issued while running
    est2 = f"{ADDRESSES[name]}:{_port_of(deployed, name)}"
    pinned = tmp_path / "est-2-only.toml"
    lines = profile.read_text().splitlines()
    pinned.write_text("\n".join(  # site est reached through est-2 only
        f'endpoints = ["{est2}"]' if line.startswith("endpoints =") and prev == "[sites.est]"
        else line for prev, line in zip(["", *lines], lines, strict=False)) + "\n")
    assert load_profile(pinned).sites["est"] == ((ADDRESSES[name], _port_of(deployed, name)),)
    with hdsd.Client(pinned, site="est") as w:
        assert w.get("scans", "s1") == b"ward data"
        w.put("scans", "s2", b"through the rebuilt node")
    with hdsd.Client(profile, site="sud") as r:
        assert r.get("scans", "s2") == b"through the rebuilt node"


def _port_of(deployed: Deployed, name: str) -> int:
    text = (deployed.machines[name] / "node.toml").read_text()
    return int(text.split(f'listen = "{ADDRESSES[name]}:')[1].split('"')[0])


def test_status_exit_codes_all_up_then_a_node_down(deployed: Deployed) -> None:
    # All up: 0 once every pair of replicas was compared (a peer met before it was up stays
    # "in doubt", live RPO not provably 0, until a repair round: exit 10 meanwhile).
    _wait_status(deployed, 0)
    code, st = deployed.status()
    assert code == 0, st
    assert all(n["up"] and n["rpo"]["zero"] for n in st["nodes"])
    assert all(0 < n["disk"]["data_dir_bytes"] < n["disk"]["used"] for n in st["nodes"])
    human = cli("--profile", str(deployed.admin), "status")
    assert human.returncode == 0 and "4/4 nodes up" in human.stdout.decode()
    deployed.nodes["sud-2"].kill()
    code, st = deployed.status()
    assert code == 11
    assert [n["node"] for n in st["nodes"] if not n["up"]] == ["sud-2"]
    human = cli("--profile", str(deployed.admin), "status")
    assert human.returncode == 11 and "sud-2: down:" in human.stdout.decode()
