"""Live layout changes on real processes (127.0.0.1): a node added to a running site under a
write load, then a node removed — no restart of the others, 0 writes refused, 0 acknowledged
writes lost, and the space of what moved away reclaimed on the old node.

Figures (seconds, writes, bytes moved vs the ideal, seconds until the space was reclaimed) are
printed as one JSON line per step (``LAYOUT_FIGURES``); nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hdsd
from hdsd.cluster import Layout, NodeInfo, placement_key, placement_moves
from tests.helpers.cluster import Cluster, NodeProcess, free_ports, set_s3_port
from tests.helpers.cluster import hdsd as cli

pytestmark = pytest.mark.e2e

BUCKET = "moving"
SEGMENT_MIB = 4  # the smallest: the preload fills a few sealed segments compaction can free
PRELOAD = 100
BLOB = 64 * 1024
WAIT_S = 240.0


class Load:
    """Puts from one client in a thread: every acknowledged key is remembered with its
    content; every refusal is kept (the policy holds all along, so there must be none)."""

    def __init__(self, profile: Path, prefix: str) -> None:
        self.profile = profile
        self.prefix = prefix
        self.acked: dict[str, bytes] = {}
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        i = 0
        with hdsd.Client(self.profile, site="dc1") as c:
            while not self._stop.is_set():
                key = f"{self.prefix}-{i:05d}"
                data = os.urandom(2048) + key.encode()
                try:
                    c.put(BUCKET, key, data)
                    self.acked[key] = data
                except hdsd.HdsdError as exc:
                    self.refused.append(f"{key}: {exc}")
                i += 1
                time.sleep(0.02)


def _status(profile: Path) -> dict[str, Any]:
    proc = cli("--profile", str(profile), "status", "--json")
    assert proc.returncode in (0, 10, 11), proc.stderr.decode()
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _node(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in st["nodes"] if n["node"] == name)


def _wait_stable(profile: Path, cluster: Cluster) -> float:
    """Seconds until `hdsd layout status` says stable with space reclaimed everywhere."""
    t0 = time.monotonic()
    while True:
        for name, node in cluster.nodes.items():
            assert node.alive, f"{name} died:\n{node.log()}"
        proc = cli("--profile", str(profile), "--site", "dc2", "layout", "status")
        if proc.returncode == 0:
            return time.monotonic() - t0
        assert proc.returncode == 10, proc.stderr.decode() + _errors(cluster)
        assert time.monotonic() - t0 < WAIT_S, proc.stdout.decode()
        time.sleep(0.5)


def _errors(cluster: Cluster) -> str:
    return "".join(f"\n{name}: {line}" for name, node in cluster.nodes.items()
                   for line in node.stderr_lines if "ERROR" in line or "Error" in line)


def _wait_reclaimed(profile: Path, name: str, after: float) -> tuple[float, dict[str, Any]]:
    """Seconds until a compaction that started after *after* (wall clock) finished on *name*,
    and its report: the segments the forgotten keys filled are deleted."""
    t0 = time.monotonic()
    while True:
        st = _node(_status(profile), name)
        last = st["maintenance"]["compaction"]["last"] or {}
        if last.get("started", 0) >= after and "finished" in last:
            return time.monotonic() - t0, {**last, "disk_bytes": st["store"]["disk_bytes"],
                                           "records": st["store"]["records"]}
        assert time.monotonic() - t0 < WAIT_S, json.dumps(st["maintenance"]["compaction"])
        time.sleep(0.5)


def _check_all(profile: Path, blobs: dict[str, bytes]) -> None:
    for site in ("dc1", "dc2"):
        with hdsd.Client(profile, site=site) as c:
            for key, data in blobs.items():
                assert c.get(BUCKET, key) == data, (site, key)


def _layout_of(st: dict[str, Any]) -> Layout:
    from hdsd.cluster import layout_from_wire
    return layout_from_wire(_node(st, "dc1-n1")["layout_record"]["record"]["layout"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "ops", 1)
    for node in c.nodes.values():
        text = node.config.read_text()
        node.config.write_text(text.replace("segment_mib = 8", f"segment_mib = {SEGMENT_MIB}"))
    c.start()
    try:
        yield c
    finally:
        c.kill()


def _start_new_node(root: Path, name: str) -> NodeProcess:
    config = root / name / "node.toml"
    text = config.read_text()
    config.write_text(text.replace("# segment_mib = 256", f"segment_mib = {SEGMENT_MIB}"))
    node_port = int(re.search(r'^listen = "[^"]+:(\d+)"', text, flags=re.M)[1])  # type: ignore[index]
    set_s3_port(config, free_ports(1, exclude=(node_port,))[0])
    return NodeProcess(config).start()


def test_add_then_remove_a_node_under_load(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "ops"
    profile = cluster.profile
    preload = {f"pre-{i:04d}": os.urandom(BLOB) for i in range(PRELOAD)}
    with hdsd.Client(profile, site="dc1") as c:
        for key, data in preload.items():
            c.put(BUCKET, key, data)
    before = _node(_status(profile), "dc1-n1")["store"]
    old_layout = _layout_of(_status(profile))
    figures: dict[str, Any] = {}

    # -- add dc1-n2 under load ----------------------------------------------------------------
    (port,) = free_ports(1)
    with Load(profile, "add") as load:
        time.sleep(1.0)
        t0 = time.monotonic()
        cli("layout", "add-node", "dc1-n2", "--site", "dc1", "--address", "127.0.0.1",
            "--port", str(port), "--cluster-dir", str(root), check=True)
        proc = cli("--profile", str(profile), "layout", "apply", "--cluster-dir", str(root))
        # First the bundle; the version waits until the new node runs.
        assert proc.returncode == 10, proc.stderr.decode()
        assert "bundle for dc1-n2" in proc.stdout.decode()
        assert "then run hdsd layout apply again" in proc.stdout.decode()
        new = _start_new_node(root, "dc1-n2")
        cluster.nodes["dc1-n2"] = new
        at_apply = [*preload, *load.acked]
        cli("--profile", str(profile), "layout", "apply", "--cluster-dir", str(root),
            check=True)
        took = _wait_stable(profile, cluster)
        figures["add"] = {"seconds_to_stable": round(time.monotonic() - t0, 1),
                          "seconds_after_apply": round(took, 1)}
        time.sleep(1.0)
    assert load.refused == [], load.refused[:5]
    assert load.acked
    shown = cli("--profile", str(profile), "layout", "show", "--cluster-dir", str(root),
                check=True).stdout.decode()
    assert "(stable)" in shown and "dc1-n2" in shown and "staged" not in shown, shown
    st = _status(profile)
    new_layout = _layout_of(st)
    assert [n.name for n in new_layout.nodes if n.site == "dc1"] == ["dc1-n1", "dc1-n2"]
    # Every node learnt the new version live: the old ones never restarted.
    for name in ("dc1-n1", "dc2-n1"):
        assert cluster.nodes[name].alive
        assert _node(st, name)["layout_record"]["phase"] == "stable"
    keys = [("default", BUCKET, k) for k in [*preload, *load.acked]]
    ideal = placement_moves(old_layout, new_layout, keys)
    n2 = _node(st, "dc1-n2")
    reclaim = _node(st, "dc1-n1")["layout_record"]["reclaim"]
    assert reclaim["state"] == "done" and reclaim["keys_forgotten"] > 0, reclaim
    seconds, compacted = _wait_reclaimed(profile, "dc1-n1", reclaim["finished"])
    # The space of what moved away is given back: sealed segments deleted, and the old node
    # indexes fewer records than before the change although the load kept writing.
    assert compacted["segments_removed"] > 0 and compacted["bytes_freed"] > 0, compacted
    assert compacted["records"] < before["records"] + 2 * len(load.acked), (before, compacted)
    rebuild = n2["rebuild"] or {}
    figures["add"].update(writes_acked=len(load.acked), writes_refused=len(load.refused),
                          keys_moved_ideal=ideal,
                          # what existed when the change was applied: anti-entropy copies it
                          keys_to_copy_ideal=placement_moves(
                              old_layout, new_layout, [("default", BUCKET, k) for k in at_apply]),
                          versions_copied_by_rebuild=rebuild.get("versions_received"),
                          versions_moved_by_anti_entropy=sum(
                              n["layout_record"]["moved"]["versions_received"]
                              + n["layout_record"]["moved"]["versions_sent"]
                              for n in st["nodes"]),
                          records_on_new_node=n2["store"]["records"],
                          keys_forgotten_on_old=reclaim["keys_forgotten"],
                          versions_forgotten_on_old=reclaim["versions_forgotten"],
                          old_records_before=before["records"],
                          old_records_after=compacted["records"],
                          old_bytes_freed=compacted["bytes_freed"],
                          old_disk_bytes_before=before["disk_bytes"],
                          old_disk_bytes_after=compacted["disk_bytes"],
                          seconds_to_reclaim_after_stable=round(seconds, 1))
    _check_all(profile, {**preload, **load.acked})

    # -- remove dc1-n1 under load -------------------------------------------------------------
    with Load(profile, "remove") as load2:
        time.sleep(1.0)
        t0 = time.monotonic()
        cli("layout", "remove-node", "dc1-n1", "--cluster-dir", str(root), check=True)
        cli("--profile", str(profile), "layout", "apply", "--cluster-dir", str(root),
            check=True)
        _wait_stable(profile, cluster)
        figures["remove"] = {"seconds_to_stable": round(time.monotonic() - t0, 1)}
        time.sleep(1.0)
    assert load2.refused == [], load2.refused[:5]
    # dc1-n1 left the layout: stopping it loses nothing.
    assert cluster.nodes["dc1-n1"].stop() == 0
    figures["remove"].update(writes_acked=len(load2.acked), writes_refused=len(load2.refused))
    _check_all(profile, {**preload, **load.acked, **load2.acked})
    print("LAYOUT_FIGURES " + json.dumps(figures, sort_keys=True))


def test_removing_a_node_that_would_leave_keys_under_replicated_is_refused(
        tmp_path: Path) -> None:
    c = Cluster(tmp_path / "ops", 1)
    proc = cli("layout", "remove-node", "dc1-n1", "--cluster-dir", str(tmp_path / "ops"))
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "under-replicated" in err and "Traceback" not in err, err
    assert not (tmp_path / "ops" / "layout-staged.json").exists()
    del c


def test_the_ideal_movement_is_what_rendezvous_hashing_moves() -> None:
    old = Layout(sites=("a", "b"), nodes=(NodeInfo("a1", "a", "h", 1), NodeInfo("b1", "b", "h", 2)))
    new = Layout(sites=("a", "b"), nodes=(*old.nodes, NodeInfo("a2", "a", "h", 3)))
    keys = [("t", "b", f"k{i}") for i in range(1000)]
    moved = placement_moves(old, new, keys)
    assert 400 < moved < 600  # a2 wins about half of site a's keys, nothing else moves


def _audit(profile: Path, name: str) -> dict[str, Any]:
    return _node(_status(profile), name)["audit"]  # type: ignore[no-any-return]


def _shipped_all(profile: Path, name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        audit = _audit(profile, name)
        if audit["durable_seq"] and max(audit["shipped"].values()) >= audit["durable_seq"]:
            return
        assert time.monotonic() < deadline, audit
        time.sleep(0.5)


def _replace_disk(data: Path, keep_signing_key: bool) -> None:
    """A new disk: the data directory is empty again; the node's audit signing key comes
    back from its bundle (the operator's copy of the bundle holds it) when *keep_signing_key*."""
    key = (data / "audit" / "signing.key").read_bytes()
    shutil.rmtree(data)
    (data / "audit").mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    if keep_signing_key:
        (data / "audit" / "signing.key").write_bytes(key)
        (data / "audit" / "signing.key").chmod(0o600)


def test_a_replaced_disk_keeps_the_audit_trail_whole(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "ops", 1).start()
    try:
        profile = c.profile
        with hdsd.Client(profile, site="dc1") as w:
            for i in range(20):
                w.put(BUCKET, f"a{i}", b"x" * 100)
        node = c.nodes["dc1-n1"]
        assert node.stop() == 0  # a graceful stop signs the tail and ships it
        data = node.config.parent / "data"
        _replace_disk(data, keep_signing_key=True)
        node.start()
        with hdsd.Client(profile, site="dc1") as w:
            assert w.get(BUCKET, "a3") == b"x" * 100  # served while it rebuilds
            for i in range(20, 30):
                w.put(BUCKET, f"a{i}", b"y" * 100)
        continuity = _audit(profile, "dc1-n1")["continuity"]
        assert continuity["state"] == "resumed" and continuity["from"] == "dc2-n1", continuity
        resumed_after = continuity["after_seq"]
        assert resumed_after > 20
        assert node.stop() == 0
        pub = str(tmp_path / "ops" / "audit-keys" / "dc1-n1.pub")
        # The other site's copy: one chain from seq 1, under the key the auditor pinned.
        copy = cli("audit", "verify", "--data-dir", str(c.nodes["dc2-n1"].config.parent / "data"),
                   "--origin", "dc1-n1", "--pubkey", pub)
        out = copy.stdout.decode()
        assert copy.returncode == 0, copy.stderr.decode() + out
        assert "seq 1.." in out and f"resumed after seq {resumed_after}" in out, out
        # The node's own new log starts where the copy ended, and says so.
        own = cli("audit", "verify", "--data-dir", str(data), "--pubkey", pub)
        out = own.stdout.decode()
        assert own.returncode == 0, own.stderr.decode() + out
        assert f"seq {resumed_after + 1}.." in out, out
        assert f"records 1..{resumed_after} are in the other site's copy" in out, out
        assert "removed by retention" not in out

        # Without the key: the node starts a new chain, the other site refuses it, and status
        # says what to do.
        _replace_disk(data, keep_signing_key=False)
        node.start()
        deadline = time.monotonic() + WAIT_S
        while (state := _audit(profile, "dc1-n1")["continuity"])["state"] == "checking":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["state"] == "key_differs" and "restore audit/signing.key" in state["why"]
    finally:
        c.kill()


def test_a_dead_node_is_replaced_by_a_new_machine_under_load(tmp_path: Path) -> None:
    root = tmp_path / "ops"
    c = Cluster(root, 2)  # replicas_per_site = 2: dc1-n2's keys also live on dc1-n1
    for node in c.nodes.values():
        text = node.config.read_text()
        node.config.write_text(text.replace("segment_mib = 8", f"segment_mib = {SEGMENT_MIB}"))
    c.start()
    try:
        profile = c.profile
        preload = {f"pre-{i:04d}": os.urandom(4096) for i in range(40)}
        with hdsd.Client(profile, site="dc1") as w:
            for key, data in preload.items():
                w.put(BUCKET, key, data)
        c.nodes["dc1-n2"].kill()  # the machine is dead for good
        (port,) = free_ports(1)
        with Load(profile, "replace") as load:
            time.sleep(1.0)
            t0 = time.monotonic()
            cli("layout", "replace-node", "dc1-n2", "dc1-n3", "--address", "127.0.0.1",
                "--port", str(port), "--gone", "--cluster-dir", str(root), check=True)
            assert cli("--profile", str(profile), "layout", "apply", "--cluster-dir",
                       str(root)).returncode == 10
            c.nodes["dc1-n3"] = _start_new_node(root, "dc1-n3")
            cli("--profile", str(profile), "layout", "apply", "--cluster-dir", str(root),
                check=True)
            del c.nodes["dc1-n2"]
            _wait_stable(profile, c)
            seconds = time.monotonic() - t0
            time.sleep(1.0)
        assert load.refused == [], load.refused[:5]
        st = _status(profile)
        assert sorted(n["node"] for n in st["nodes"]) == ["dc1-n1", "dc1-n3", "dc2-n1",
                                                          "dc2-n2"]
        # The dead node's hints are gone with it: the live RPO comes back to 0 by itself.
        deadline = time.monotonic() + WAIT_S
        while (proc := cli("--profile", str(profile), "status")).returncode != 0:
            assert time.monotonic() < deadline, proc.stdout.decode()
            time.sleep(1)
        c.nodes["dc1-n1"].stop()  # dc1-n3 alone now holds site dc1's copies
        with hdsd.Client(profile, site="dc1") as r:
            for key, data in {**preload, **load.acked}.items():
                assert r.get(BUCKET, key) == data, key
        print("LAYOUT_FIGURES " + json.dumps({"replace_gone": {
            "seconds_to_stable": round(seconds, 1), "writes_acked": len(load.acked),
            "writes_refused": len(load.refused)}}))
    finally:
        c.kill()


@pytest.mark.skipif(os.environ.get("HDSD_LAYOUT_ALL") != "1",
                    reason="CI time: the same migration path as adding a node (run with "
                           "HDSD_LAYOUT_ALL=1)")
def test_a_weight_change_moves_keys_to_the_heavier_node(tmp_path: Path) -> None:
    root = tmp_path / "ops"
    c = Cluster(root, 2, replicas_per_site=1)  # each key on one node of each site
    # (the operator's spec says so too: the change is checked against it)
    spec = root / "cluster-spec.toml"
    spec.write_text(spec.read_text().replace("replicas_per_site = 2", "replicas_per_site = 1"))
    c.start()
    try:
        profile = c.profile
        blobs = {f"w{i:03d}": os.urandom(2048) for i in range(120)}
        with hdsd.Client(profile, site="dc1") as w:
            for key, data in blobs.items():
                w.put(BUCKET, key, data)
        with Load(profile, "weight") as load:
            time.sleep(1.0)
            cli("layout", "set", "dc1-n1", "--weight", "4", "--cluster-dir", str(root),
                check=True)
            cli("--profile", str(profile), "layout", "apply", "--cluster-dir", str(root),
                check=True)
            _wait_stable(profile, c)
            time.sleep(1.0)
        assert load.refused == [], load.refused[:5]
        st = _status(profile)
        layout = _layout_of(st)
        assert layout.node("dc1-n1").weight == 4.0
        reclaim = _node(st, "dc1-n2")["layout_record"]["reclaim"]
        assert reclaim["state"] == "done" and reclaim["keys_forgotten"] > 0, reclaim
        c.nodes["dc1-n2"].stop()  # what dc1-n1 now holds is readable without dc1-n2...
        c.nodes["dc2-n2"].stop()  # ...and without the other site's second node
        with hdsd.Client(profile, site="dc1") as r:
            for key, data in {**blobs, **load.acked}.items():
                pk = placement_key("default", BUCKET, key)
                if layout.replicas(pk)["dc1"][0].name == "dc1-n1":
                    assert r.get(BUCKET, key) == data, key
    finally:
        c.kill()
