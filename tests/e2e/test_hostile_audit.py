"""The audit records refused and failed connections without letting a flood grow it (issue 13,
finding 6): one record per source, outcome and interval, whose ``key`` is the count."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

import hdsd
from hdsd.audit import AuditRecord, read_records
from hdsd.wire import StatRequest
from tests.helpers.cluster import init_cluster
from tests.helpers.hostile import handshaken, legit_put_latency, next_event, raw_frame

pytestmark = pytest.mark.e2e

ATTACKER = "127.0.0.2"
FLOOD = 300


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    init_cluster(root)
    for config in root.glob("*/node.toml"):
        config.write_text(config.read_text() + "\n[audit]\ncheckpoint_s = 0.2\n"
                          "refusals_interval_s = 1\n")
    return root


def _connection_records(cluster_dir: Path) -> list[AuditRecord]:
    return [r for r in read_records(cluster_dir / "dc1-n1" / "data" / "audit")
            if r.kind == "request" and r.op in ("connect", "session")]


def _wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 60  # bounds a hang only; nothing is timed
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_handshake_flood_is_counted_not_recorded_one_by_one(profile: Path,
                                                             cluster_dir: Path) -> None:
    host, port = hdsd.client.load_profile(profile).endpoints()[0]
    before = len(_connection_records(cluster_dir))
    for _ in range(FLOOD):  # not TLS at all: no credential needed to be refused
        with socket.socket() as raw:
            raw.bind((ATTACKER, 0))
            raw.settimeout(30)
            raw.connect((host, port))
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                raw.recv(100)
            except (OSError, ssl.SSLError):
                pass

    def flood_records() -> list[AuditRecord]:
        return [r for r in _connection_records(cluster_dir) if r.peer == ATTACKER]

    _wait_for(lambda: sum(int(r.key) for r in flood_records()) == FLOOD, "the flood's count")
    records = flood_records()
    print(f"\n[{FLOOD} refused handshakes] {len(records)} audit records "
          f"({len(_connection_records(cluster_dir)) - before} connection records in all)")
    assert all(r.identity == "?" and r.op == "connect" and r.outcome != "ok" for r in records)
    # One per outcome and interval: the flood took a few seconds, so a handful, not 300.
    assert len(records) <= 20
    legit_put_latency(profile, "after-flood")


def test_protocol_errors_after_hello_are_audited(profile: Path, cluster_dir: Path) -> None:
    for _ in range(3):
        sock, conn = handshaken(profile)
        with sock:
            sock.sendall(raw_frame(StatRequest(rid=0, bucket="b", key="k", version=None)) * 2)
            next_event(sock, conn)  # the node's Goodbye

    def records() -> list[AuditRecord]:
        return [r for r in _connection_records(cluster_dir) if r.op == "session"]

    _wait_for(lambda: sum(int(r.key) for r in records()) >= 3, "the protocol errors' records")
    assert all(r.identity == "admin" and r.tenant == "default" and r.outcome == "protocol"
               for r in records())
