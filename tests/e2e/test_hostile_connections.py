"""Connections cannot be hoarded (issue 13, finding 3): handshakes have their own small pool,
sessions are capped per identity, idle sessions time out, peers keep reserved slots.

The nodes of this module run with small limits (see ``LIMITS``) so the attacks stay cheap; the
mechanisms are the same at the defaults. The attacker connects from 127.0.0.2 (another "host"
on the loopback), the legitimate client from 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hdsd
from hdsd.wire import Goodbye
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.cluster import hdsd as run_cli
from tests.helpers.hostile import Refused, handshaken, legit_put_latency, next_event, rss_kib

pytestmark = pytest.mark.e2e

# idle_timeout_s: long enough that the twelve sessions filling every slot (one handshake
# after another, slow on a loaded machine) are all still open when the test needs them full.
LIMITS = """[limits]
max_connections = 12
max_sessions_per_identity = 6
max_handshakes = 32
max_handshakes_per_source = 8
handshake_timeout_s = 3
idle_timeout_s = 10

"""
ATTACKER = "127.0.0.2"


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    init_cluster(root)
    for config in root.glob("*/node.toml"):
        config.write_text(config.read_text().replace("[tls]", LIMITS + "[tls]", 1))
    return root


@pytest.fixture(scope="module")
def nodes(cluster_dir: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    dc2 = NodeProcess(cluster_dir / "dc2-n1" / "node.toml").start()
    dc1 = NodeProcess(cluster_dir / "dc1-n1" / "node.toml").start()
    try:
        yield dc1, dc2
    finally:
        dc1.kill()
        dc2.kill()


@pytest.fixture(scope="module")
def node(nodes: tuple[NodeProcess, NodeProcess]) -> NodeProcess:
    return nodes[0]


def _limits(profile: Path) -> dict[str, Any]:
    with hdsd.Client(profile) as client:
        limits: dict[str, Any] = client.status()["limits"]
    return limits


def _issue(cluster_dir: Path, name: str, tenant: str, role: str) -> Path:
    run_cli("cert", "issue", "--client", name, "--tenant", tenant, "--role", role,
            "--cluster-dir", str(cluster_dir), check=True)
    return cluster_dir / "clients" / f"{name}.toml"


def test_silent_tcp_flood_does_not_lock_clients_out(profile: Path, node: NodeProcess) -> None:
    assert node.proc is not None
    host, port = hdsd.client.load_profile(profile).endpoints()[0]
    before = rss_kib(node.proc.pid) >> 10
    flood = []
    try:
        for _ in range(1030):
            s = socket.socket()
            s.bind((ATTACKER, 0))
            s.settimeout(10)
            try:
                s.connect((host, port))
            except OSError:
                s.close()
                continue
            flood.append(s)
        latencies = [legit_put_latency(profile, f"flood-{i}") for i in range(5)]
        refused = _limits(profile)["refused"]
        print(f"\n[1,030 silent TCP connections] node RSS {before} -> "
              f"{rss_kib(node.proc.pid) >> 10} MiB; legitimate put latency during: "
              f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms; refused: {refused}")
        assert refused.get("handshakes_per_source", 0) > 0
    finally:
        for s in flood:
            s.close()
    assert node.alive, node.log()


def test_one_identity_cannot_take_every_session(profile: Path, cluster_dir: Path,
                                                node: NodeProcess) -> None:
    auditor = _issue(cluster_dir, "hoarder", "default", "auditor")
    held, refused = [], 0
    try:
        for _ in range(20):
            try:  # a session over the identity's cap gets Goodbye instead of Hello
                held.append(handshaken(auditor, source=ATTACKER)[0])
            except Refused as exc:
                assert exc.goodbye.code == "too_many_connections", exc
                refused += 1
        assert len(held) == 6 and refused == 14, (len(held), refused)
        # Another identity of the same tenant, and the operator, still get in.
        latency = legit_put_latency(profile, "hoard")
        print(f"\n[20 sessions of one auditor] held {len(held)}, refused {refused}; "
              f"legitimate put latency {latency * 1000:.0f} ms")
        assert _limits(profile)["refused"].get("sessions_per_identity", 0) >= 14
    finally:
        for s in held:
            s.close()


def test_idle_sessions_are_closed_and_clients_reconnect(profile: Path,
                                                        node: NodeProcess) -> None:
    sock, conn = handshaken(profile)
    with sock:
        sock.settimeout(30)
        started = time.monotonic()
        data = sock.recv(65536)  # nothing sent: the node's Goodbye after idle_timeout_s
        conn.receive_data(data)
        event = conn.next_event()
        assert isinstance(event, Goodbye) and event.code == "idle", event
        print(f"\n[idle session] closed after {time.monotonic() - started:.1f} s")

    async def reconnects() -> None:
        # A client that keeps its connection and does not know the node's idle timeout.
        async with hdsd.AsyncClient(profile, idle_reconnect_s=1e9) as client:
            await client.put("idle", "a", b"1")
            # The node closes the session once idle_timeout_s passed: wait until its Goodbye
            # reached the client (a fixed sleep just past the timeout let the put below cross
            # the Goodbye when the node was slow to wake on a loaded machine).
            with trio.fail_after(120):
                while client._session is not None and not client._session.closed:
                    await trio.sleep(0.1)
            await client.put("idle", "b", iter([b"not", b"replayable"]))
            assert await client.get("idle", "b") == b"notreplayable"

    trio.run(reconnects)
    assert _limits(profile)["idle_closed"] >= 2


@pytest.fixture
def slots_full(cluster_dir: Path, profile: Path) -> Iterator[int]:
    """Every client session of dc1 taken, by identities under their own cap."""
    held = []
    try:
        for i in range(2):  # max_connections = 12: two identities of 6 sessions each
            who = _issue(cluster_dir, f"filler-{i}", "default", "reader")
            for _ in range(6):
                held.append(handshaken(who, source=ATTACKER)[0])
        yield len(held)
    finally:
        for s in held:
            s.close()


def test_peers_keep_their_slots_when_clients_take_all(
        profile: Path, nodes: tuple[NodeProcess, NodeProcess], slots_full: int) -> None:
    with pytest.raises(hdsd.TooManyConnections):
        with hdsd.Client(profile) as client:
            client.status()
    # dc2 restarted now: its links to dc1 are new sessions, which must find peer slots.
    nodes[1].start()
    data = os.urandom(300_000)
    request_id, deadline = os.urandom(16), time.monotonic() + 60
    with hdsd.Client(profile, site="dc2") as client:
        while True:  # each-site: acknowledged only once dc1 has it too
            try:
                client.put("peers", "through-dc2", data, request_id=request_id, retry=True)
                break
            except hdsd.Unavailable:  # dc2's link to dc1 still dialling (a loaded machine)
                assert time.monotonic() < deadline, "dc2 never replicated to dc1: no peer slot?"
                time.sleep(1)
        assert client.get("peers", "through-dc2") == data
    print(f"\n[{slots_full} client sessions hold every slot] replication dc2 -> dc1 still ran")


def test_hello_naming_another_cluster_gets_goodbye(profile: Path, node: NodeProcess) -> None:
    sock, conn = handshaken(profile, cluster_id="some-other-cluster")  # its Hello came first
    with sock:
        goodbye = next_event(sock, conn)
    assert isinstance(goodbye, Goodbye) and goodbye.code == "authentication_failed", goodbye
    assert "some-other-cluster" in goodbye.message
    legit_put_latency(profile, "after-wrong-cluster")
