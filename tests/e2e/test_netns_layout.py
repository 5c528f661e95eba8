"""The layout of a running four-machine cluster changes under a write load, each node on its own
network host (a namespace per node, as in ``test_netns_deploy.py``): a fifth machine joins site
est, then an old one leaves, then a disk is replaced — the README's "Changing the layout while
the cluster runs" step by step, with the operator's commands run on the ops host.

Checked: 0 writes refused (the policy holds all along), every acknowledged write read back at
both sites, the old nodes reclaim the space of what moved away, the replaced disk's node
continues its audit chain. Figures are printed (``NETNS_LAYOUT_FIGURES``), never asserted.
Needs root (``ip netns``); skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import REASON, Net, NsNode, two_sites

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

NODES = {"est-1": ("est", "10.98.0.11"), "est-2": ("est", "10.98.0.12"),
         "sud-1": ("sud", "10.98.0.13"), "sud-2": ("sud", "10.98.0.14")}
NEW = ("est-3", "est", "10.98.0.15")
OPS_ADDRESS = "10.98.0.2"
SEGMENT_MIB = 4
PRELOAD = 100
WAIT_S = 300.0

# The write load, run on the ops host: one put every 20 ms until the stop file appears; every
# outcome as a JSON line (the key and its content's seed for acknowledged ones).
LOADER = """
import json, os, random, sys, time, hdsd
profile, out, stop = sys.argv[1:4]
if stop == "-":  # the preload: PRELOAD blobs of 64 KiB (incompressible), derived from their key
    with hdsd.Client(profile, site="est", timeout=30) as c:
        for i in range(int(out)):
            key = f"pre-{i:03d}"
            c.put("moving", key, random.Random(key).randbytes(65536))
    sys.exit(0)
with hdsd.Client(profile, site="est", timeout=30) as c, open(out, "w") as f:
    i = 0
    while not os.path.exists(stop):
        key = f"load-{i:05d}"
        try:
            c.put("moving", key, key.encode() * 200)
            f.write(json.dumps({"key": key, "ok": True}) + "\\n")
        except hdsd.HdsdError as exc:
            f.write(json.dumps({"key": key, "ok": False, "error": str(exc)}) + "\\n")
        f.flush()
        i += 1
        time.sleep(0.02)
"""


def _network() -> Net:
    return two_sites({**NODES, NEW[0]: (NEW[1], NEW[2]), "ops": ("est", OPS_ADDRESS)})


@dataclass
class Cluster:
    net: Net
    tmp: Path
    ops: Path
    nodes: dict[str, NsNode]

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 180
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ip", "netns", "exec", self.net.ns("ops"), sys.executable, "-m", "hdsd",
             "--profile", str(self.ops / "client.toml"), "--timeout", "15", *args],
            input=input, capture_output=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, (args, proc.stderr.decode(), proc.stdout.decode())
        return proc.stdout.decode()

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        assert proc.returncode in (0, 10, 11), proc.stderr.decode()
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def node_status(self, name: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["node"] == name)

    def machine(self, name: str) -> NsNode:
        """Give *name* its archive only, on a machine of its own, and start it there."""
        machine = self.tmp / f"machine-{name}"
        machine.mkdir()
        with tarfile.open(self.ops / f"{name}.tar") as tar:
            tar.extractall(machine, filter="tar")
        config = machine / "node.toml"
        config.write_text(config.read_text().replace("# segment_mib = 256",
                                                     f"segment_mib = {SEGMENT_MIB}"))
        node = NsNode(self.net.ns(name), config)
        node.start()
        self.nodes[name] = node
        return node

    def wait_stable(self) -> float:
        t0 = time.monotonic()
        while True:
            proc = self.cli("layout", "status")
            if proc.returncode == 0:
                return time.monotonic() - t0
            assert proc.returncode == 10, proc.stderr.decode()
            assert time.monotonic() - t0 < WAIT_S, proc.stdout.decode()
            time.sleep(1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    net = _network()
    c = Cluster(net, tmp_path, tmp_path / "ops", {})
    try:
        spec = tmp_path / "cluster-spec.toml"
        entries: dict[str, list[str]] = {"est": [], "sud": []}
        for name, (site, address) in NODES.items():
            entries[site].append(f'{{ name = "{name}", addresses = ["{address}"] }}')
        spec.write_text('[cluster]\nid = "hdsd-netns-layout"\nport = 7400\n'
                        + "".join(f'\n[[sites]]\nname = "{site}"\nnodes = ['
                                  + ", ".join(e) + "]\n" for site, e in entries.items()))
        init = subprocess.run([sys.executable, "-m", "hdsd", "init", "--spec", str(spec),
                               str(c.ops), "--archive"], capture_output=True, timeout=120)
        assert init.returncode == 0, init.stderr.decode()
        for name in NODES:
            c.machine(name)
        yield c
    finally:
        for node in c.nodes.values():
            node.kill()
        net.destroy()


class Load:
    def __init__(self, c: Cluster, name: str) -> None:
        self.c = c
        self.out = c.tmp / f"load-{name}.jsonl"
        self.stop_file = c.tmp / f"load-{name}.stop"
        script = c.tmp / "loader.py"
        script.write_text(LOADER)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", c.net.ns("ops"), sys.executable, str(script),
             str(c.ops / "client.toml"), str(self.out), str(self.stop_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> tuple[list[str], list[str]]:
        self.stop_file.touch()
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()
        rows = [json.loads(line) for line in self.out.read_text().splitlines()]
        return ([r["key"] for r in rows if r["ok"]],
                [f"{r['key']}: {r['error']}" for r in rows if not r["ok"]])


CHECKER = """
import json, random, sys, hdsd
profile, keys_file = sys.argv[1:3]
keys = json.loads(open(keys_file).read())
bad = []
for site in ("est", "sud"):
    with hdsd.Client(profile, site=site, timeout=30) as c:
        for key, times in keys:
            want = key.encode() * times if times else random.Random(key).randbytes(65536)
            try:
                if c.get("moving", key) != want:
                    bad.append(f"{site} {key}: other content")
            except hdsd.HdsdError as exc:
                bad.append(f"{site} {key}: {exc}")
print(json.dumps(bad))
"""


def _run_script(c: Cluster, text: str, *args: str) -> str:
    script = c.tmp / f"script-{secrets.token_hex(3)}.py"
    script.write_text(text)
    proc = subprocess.run(["ip", "netns", "exec", c.net.ns("ops"), sys.executable, str(script),
                           *args], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _read_back(c: Cluster, keys: list[str]) -> None:
    """Every acknowledged write, read at both sites (one client process per site)."""
    listing = [(k, 200) for k in keys] + [(f"pre-{i:03d}", 0) for i in range(PRELOAD)]
    path = c.tmp / "acked.json"
    path.write_text(json.dumps(listing))
    bad = json.loads(_run_script(c, CHECKER, str(c.ops / "client.toml"), str(path)))
    assert bad == [], bad[:5]


def test_add_remove_and_replace_a_disk_under_load(cluster: Cluster) -> None:
    c = cluster
    figures: dict[str, Any] = {}
    _run_script(c, LOADER, str(c.ops / "client.toml"), str(PRELOAD), "-")
    before = {n: c.node_status(n)["store"] for n in ("est-1", "est-2")}
    acked: list[str] = []

    # -- a fifth machine joins site est ---------------------------------------------------------
    load = Load(c, "add")
    time.sleep(2)
    t0 = time.monotonic()
    name, site, address = NEW
    c.ok("layout", "add-node", name, "--site", site, "--address", address, "--port", "7400")
    first = c.cli("layout", "apply", "--archive")
    assert first.returncode == 10 and "then run hdsd layout apply again" in \
        first.stdout.decode(), first.stdout.decode() + first.stderr.decode()
    c.machine(name)
    c.ok("layout", "apply")
    c.wait_stable()
    figures["add"] = {"seconds": round(time.monotonic() - t0, 1)}
    ok, refused = load.stop()
    assert refused == [], refused[:5]
    acked += ok
    figures["add"].update(writes_acked=len(ok), writes_refused=len(refused))
    for old in ("est-1", "est-2"):
        st = c.node_status(old)
        reclaim = st["layout_record"]["reclaim"]
        assert reclaim["state"] == "done" and reclaim["keys_forgotten"] > 0, reclaim
        figures["add"][f"{old}_keys_forgotten"] = reclaim["keys_forgotten"]
        # ... and compaction gave the space back: the sealed segment the preload filled
        # held a third of keys that moved away.
        deadline = time.monotonic() + WAIT_S
        while True:
            last = c.node_status(old)["maintenance"]["compaction"]["last"] or {}
            if last.get("started", 0) >= reclaim["finished"] and "finished" in last:
                break
            assert time.monotonic() < deadline, last
            time.sleep(1)
        assert last["segments_removed"] > 0 and last["bytes_freed"] > 0, last
        figures["add"][f"{old}_bytes_freed"] = last["bytes_freed"]
        figures["add"][f"{old}_disk_bytes"] = [before[old]["disk_bytes"],
                                               c.node_status(old)["store"]["disk_bytes"]]
    figures["add"]["records_on_new_node"] = c.node_status(name)["store"]["records"]

    # -- an old machine leaves --------------------------------------------------------------------
    load = Load(c, "remove")
    time.sleep(2)
    t0 = time.monotonic()
    c.ok("layout", "remove-node", "est-1")
    c.ok("layout", "apply")
    c.wait_stable()
    figures["remove"] = {"seconds": round(time.monotonic() - t0, 1)}
    ok, refused = load.stop()
    assert refused == [], refused[:5]
    acked += ok
    figures["remove"].update(writes_acked=len(ok), writes_refused=len(refused))
    c.nodes.pop("est-1").kill()  # it left the layout: its disk can go

    # -- a disk replaced: sud-2 comes back empty with its bundle's data directory ----------------
    load = Load(c, "disk")
    time.sleep(2)
    t0 = time.monotonic()
    node = c.nodes["sud-2"]
    node.kill()
    data = node.config.parent / "data"
    shutil.rmtree(data)
    with tarfile.open(c.ops / "sud-2.tar") as tar:  # the README: restore /var/lib/hdsd
        tar.extractall(node.config.parent, filter="tar",
                       members=[m for m in tar.getmembers() if m.name.startswith("data")])
    node.start()
    deadline = time.monotonic() + WAIT_S
    # (A node still starting is listed down, without a "rebuild" entry: not done yet.)
    while (st := c.node_status("sud-2")).get("rebuild") is None or \
            st["rebuild"]["state"] != "done":
        assert time.monotonic() < deadline, st.get("rebuild", st)
        time.sleep(1)
    figures["disk"] = {"seconds_to_rebuilt": round(time.monotonic() - t0, 1),
                       "versions_rebuilt": st["rebuild"]["versions_received"]}
    ok, refused = load.stop()
    assert refused == [], refused[:5]
    acked += ok
    figures["disk"].update(writes_acked=len(ok), writes_refused=len(refused))
    continuity = st["audit"]["continuity"]
    assert continuity["state"] in ("resumed", "new"), continuity
    figures["disk"]["audit"] = continuity["state"]

    _read_back(c, acked)
    print("NETNS_LAYOUT_FIGURES " + json.dumps(figures, sort_keys=True))
