"""Metrics, health, cluster status and structured logs of real `hdsd serve` processes."""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hdsd
from hdsd.catalog import KEYRING_FILE, Keyring, load_master_key
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.cluster import hdsd as hdsd_cli

from ._nodes import add_sections, http_get, metrics_port, sample

pytestmark = pytest.mark.e2e


@dataclass
class Pair:
    root: Path
    profile: Path
    dc1: NodeProcess
    dc2: NodeProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("ops")
    profile = init_cluster(root)
    add_sections(root / "dc1-n1" / "node.toml", """
[metrics]
address = "127.0.0.1:0"

[log]
format = "json"
level = "debug"
""")
    add_sections(root / "dc2-n1" / "node.toml", '[metrics]\naddress = "127.0.0.1:0"\n')
    dc2 = NodeProcess(root / "dc2-n1" / "node.toml").start()
    dc1 = NodeProcess(root / "dc1-n1" / "node.toml").start()
    try:
        yield Pair(root, profile, dc1, dc2)
    finally:
        dc1.kill()
        dc2.kill()


def test_metrics_count_requests_by_op_outcome_and_size(pair: Pair) -> None:
    data = bytes(range(256)) * 20  # 5120 bytes: size class le1m
    with hdsd.Client(pair.profile, site="dc1") as c:
        c.put("ops", "blob", data)
        assert c.get("ops", "blob") == data
        with pytest.raises(hdsd.NotFound):
            c.get("ops", "missing")
    port = metrics_port(pair.dc1)
    status, text = http_get(port, "/metrics")
    assert status == 200
    assert sample(text, "hdsd_requests_total", op="put", outcome="ok") == 1
    assert sample(text, "hdsd_requests_total", op="get", outcome="ok") == 1
    assert sample(text, "hdsd_requests_total", op="get", outcome="not_found") == 1
    assert sample(text, "hdsd_errors_total", code="not_found") == 1
    assert sample(text, "hdsd_request_duration_seconds_count", op="put", size_class="le1m") == 1
    assert sample(text, "hdsd_request_duration_seconds_count", op="get", size_class="le1m") == 1
    assert sample(text, "hdsd_received_body_bytes_total") == len(data)
    assert sample(text, "hdsd_sent_body_bytes_total") == len(data)
    # Collected at scrape time from status(): store, replication, disk.
    assert sample(text, "hdsd_peer_reachable", peer="dc2-n1", peer_site="dc2") == 1
    assert sample(text, "hdsd_rpo_versions") == 0
    assert (sample(text, "hdsd_store_fsyncs_total") or 0) >= 1
    assert sample(text, "hdsd_store_fsync_recent_seconds", quantile="0.5") is not None
    assert (sample(text, "hdsd_disk_free_bytes") or 0) > 0
    assert sample(text, "hdsd_store_failed") == 0
    assert sample(text, "hdsd_repair_running") in (0, 1)
    assert sample(text, "hdsd_scrub_running") in (0, 1)
    # Memory: resident bytes, and (glibc) the allocator's split of what it holds.
    assert (sample(text, "hdsd_memory_bytes", kind="rss") or 0) > 20 << 20
    if os.confstr("CS_GNU_LIBC_VERSION"):
        assert (sample(text, "hdsd_memory_bytes", kind="in_use") or 0) > 1 << 20
        assert sample(text, "hdsd_memory_bytes", kind="free") is not None
        assert (sample(text, "hdsd_memory_bytes", kind="python_arenas") or 0) >= 1 << 20
        assert sample(text, "hdsd_memory_bytes", kind="sqlite") is not None
    # The node-wide body budget: its size, nothing held once the requests ended, and the
    # put's and the get's 5,120 bytes at the most at once (one after the other).
    assert sample(text, "hdsd_body_budget_bytes") == 32 << 20
    assert sample(text, "hdsd_body_in_flight_bytes") == 0
    assert sample(text, "hdsd_body_in_flight_peak_bytes") == len(data)
    # The other node saw the replication of the put as a peer request.
    _, other = http_get(metrics_port(pair.dc2), "/metrics")
    assert (sample(other, "hdsd_requests_total", op="replicate", outcome="ok") or 0) >= 1
    assert http_get(port, "/healthz") == (200, "ok\n")
    status, reason = http_get(port, "/readyz")
    assert (status, reason) == (200, "ready (policy each-site)\n")
    assert http_get(port, "/nope")[0] == 404


def test_status_shows_every_node_as_json_and_as_a_table(pair: Pair) -> None:
    proc = hdsd_cli("--profile", str(pair.profile), "status", "--json")
    assert proc.returncode in (0, 10), proc.stderr.decode()  # 10: a peer not yet compared
    st = json.loads(proc.stdout)
    assert st["node"] == "dc1-n1"
    nodes = {n["node"]: n for n in st["nodes"]}
    assert set(nodes) == {"dc1-n1", "dc2-n1"}
    for name, site in (("dc1-n1", "dc1"), ("dc2-n1", "dc2")):
        entry = nodes[name]
        assert entry["up"] and entry["site"] == site and entry["software"] == hdsd.__version__
        assert entry["disk"]["free"] > 0 and entry["write_policy"] == "each-site"
        assert entry["memory"]["rss"] > 20 << 20
    # Two nodes just started: each stays "not yet compared" with the other until their first
    # anti-entropy round, which a fast client can beat (exit 10); then every node is at 0.
    deadline = time.monotonic() + 60
    while True:
        human = hdsd_cli("--profile", str(pair.profile), "status")
        assert human.returncode in (0, 10), human.stderr.decode()  # 0 checked below
        if human.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    text = human.stdout.decode()
    assert "2/2 nodes up" in text and "live RPO: 0 (" in text, text
    assert human.returncode == 0  # all up, every node at live RPO 0
    rows = [line.split() for line in text.splitlines() if line.startswith(("dc1 ", "dc2 "))]
    assert [r[:3] for r in rows] == [["dc1", "dc1-n1", "up"], ["dc2", "dc2-n1", "up"]]
    assert "\x1b[" not in text  # piped: no colour codes


def test_json_logs_parse_and_hold_no_secret(pair: Pair) -> None:
    with hdsd.Client(pair.profile, site="dc1") as c:
        c.put("secrets", "doc", b"patient record " * 100)
        c.get("secrets", "doc")
        with pytest.raises(hdsd.NotFound):
            c.stat("secrets", "nothing")
        with pytest.raises(hdsd.InvalidRequest):
            c.put("Bad Bucket!", "k", b"x")
    time.sleep(0.2)  # the node writes its last lines after replying
    lines = list(pair.dc1.stderr_lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert all(not line.startswith("{") or line.endswith("}") for line in lines)
    assert {"ts", "level", "logger", "event"} <= set(records[0])
    events = {(r["level"], r["event"]) for r in records}
    assert ("info", "listening") in events and ("debug", "connected") in events
    # The client's (a peer node may have connected first: its tenant and role are None).
    connected = next(r for r in records if r["event"] == "connected" and r["identity"] == "admin")
    assert connected["tenant"] == "default" and connected["role"] == "admin"

    log = "\n".join(lines)
    master = (pair.root / "master.key").read_bytes()
    keys = Keyring(pair.root / "dc1-n1" / "data" / KEYRING_FILE,
                   load_master_key(pair.root / "master.key")).get("default")
    assert keys is not None
    secrets = [master, keys.data_key, keys.dedup_key]
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
            assert form not in log
    pem = (pair.root / "dc1-n1").glob("node-*.key")
    for key_file in pem:
        body = [ln for ln in key_file.read_text().splitlines() if ln and "-----" not in ln]
        assert body and not any(ln in log for ln in body)
    assert "PRIVATE KEY" not in log


def _cli_with_tty_stderr(*args: str) -> tuple[int, bytes]:
    """Run the CLI with a pseudo-terminal as stderr (stdout piped); return what it printed."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hdsd", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=follower)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        return proc.wait(60), out
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)


def test_progress_bar_on_a_terminal_only(pair: Pair, tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    profile = ("--profile", str(pair.profile))
    piped = hdsd_cli(*profile, "put", "ops/big", str(src))
    assert piped.returncode == 0 and piped.stderr == b""
    assert piped.stdout.decode().startswith("stored ops/big version ")
    got = hdsd_cli(*profile, "get", "ops/big")
    assert got.returncode == 0 and got.stderr == b"" and got.stdout == data
    dst = tmp_path / "out.bin"
    got = hdsd_cli(*profile, "get", "ops/big", "-o", str(dst))
    assert got.returncode == 0 and got.stderr == b"" and got.stdout == b""
    assert dst.read_bytes() == data
    # The same commands with a terminal as stderr draw a bar there.
    code, shown = _cli_with_tty_stderr(*profile, "put", "ops/big2", str(src))
    assert code == 0 and b"put ops/big2" in shown and b"100%" in shown
    code, shown = _cli_with_tty_stderr(*profile, "get", "ops/big2", "-o", str(dst))
    assert code == 0 and b"get ops/big2" in shown and b"100%" in shown
    # Small transfers stay quiet even on a terminal.
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    code, shown = _cli_with_tty_stderr(*profile, "put", "ops/small", str(small))
    assert code == 0 and shown == b""


def test_a_dead_node_shows_down_and_the_other_is_not_ready(pair: Pair) -> None:
    port = metrics_port(pair.dc1)
    pair.dc2.stop()
    try:
        proc = hdsd_cli("--profile", str(pair.profile), "status", "--json")
        assert proc.returncode == 11, proc.stderr.decode()  # a node down
        nodes = {n["node"]: n for n in json.loads(proc.stdout)["nodes"]}
        assert nodes["dc1-n1"]["up"] and not nodes["dc2-n1"]["up"]
        assert nodes["dc2-n1"]["error"]
        text = hdsd_cli("--profile", str(pair.profile), "status").stdout.decode()
        assert "1/2 nodes up" in text
        assert ["dc2", "dc2-n1", "down"] in [line.split()[:3] for line in text.splitlines()]
        status, reason = http_get(port, "/readyz")
        assert status == 503 and "each-site cannot be met: unreachable dc2-n1" in reason
        assert http_get(port, "/healthz")[0] == 200
    finally:
        pair.dc2.start()
    deadline = time.monotonic() + 30
    while http_get(port, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "dc1 never became ready again"
        time.sleep(0.2)
