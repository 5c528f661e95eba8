"""Real hdsd processes on 127.0.0.1 for end-to-end tests.

``init_cluster`` runs the real ``hdsd init`` with free ports; ``NodeProcess`` runs the real
``hdsd serve`` and knows when it is listening by reading its stderr. Timeouts are generous:
nothing here depends on the machine being quiet.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# One port rule for the benchmarks and the tests (bench/ is scripts, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _ports import free_ports

__all__ = ["free_ports"]

START_TIMEOUT = 60.0


def start_all(configs: list[Path]) -> list[NodeProcess]:
    """Start a node per config, in order; if one fails to start, the ones already started are
    killed (a module fixture failing half-way must not leave processes behind)."""
    started: list[NodeProcess] = []
    try:
        for config in configs:
            started.append(NodeProcess(config).start())
    except BaseException:
        for node in started:
            node.kill()
        raise
    return started


def hdsd(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
         timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI as a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "hdsd", *args], input=input,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"hdsd {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


# Small log segments: each node preallocates (and zero-fills) a segment and a spare, and a test
# run starts dozens of nodes; 256 MiB each would be tens of GiB of disk for nothing.
TEST_SEGMENT_MIB = 8


def init_cluster(root: Path, *, nodes_per_site: int = 1, backup_nodes_per_site: int = 0,
                 ports: list[int] | None = None) -> Path:
    ports = ports or free_ports(2 * (nodes_per_site + backup_nodes_per_site))
    hdsd("init", str(root), "--nodes-per-site", str(nodes_per_site),
         "--backup-nodes-per-site", str(backup_nodes_per_site),
         "--ports", ",".join(map(str, ports)), check=True)
    configs = sorted(root.glob("*/node.toml"))
    # Not a node's port: those are not listened on yet (one was drawn again once, and the
    # second node to start found its port taken by the first one's gateway).
    s3_ports = iter(free_ports(len(configs), exclude=ports))
    for config in configs:
        text = config.read_text()
        text = text.replace("# segment_mib = 256", f"segment_mib = {TEST_SEGMENT_MIB}")
        config.write_text(text)
        set_s3_port(config, next(s3_ports))
    return root / "client.toml"


def set_s3_port(config: Path, port: int) -> None:
    """Put a node's S3 gateway on *port*: ``hdsd init`` and ``layout add-node`` put it on the
    node's port + 80, which may be anyone's (another test process's listener)."""
    text = config.read_text()
    config.write_text(re.sub(r'^listen = \["([^"\]]+):\d+"\]',
                             lambda m: f'listen = ["{m[1]}:{port}"]', text, flags=re.M))


def s3_url(config: Path, scheme: str = "https") -> str:
    """The S3 endpoint a node's configuration names (its first HTTPS or plain address)."""
    text = config.read_text()
    key = "listen" if scheme == "https" else "plain_http"
    found = re.search(rf'^{key} = \["([^"\]]+)"', text, flags=re.M)
    assert found, f"no [s3] {key} in {config}"
    return f"{scheme}://{found[1]}"


def enable_plain_http(config: Path) -> str:
    """Add a plain-HTTP S3 listener on loopback to a node's configuration; its URL."""
    port = free_ports(1)[0]
    text = config.read_text()
    config.write_text(text.replace('# plain_http = ["127.0.0.1:9480"]',
                                   f'plain_http = ["127.0.0.1:{port}"]'))
    return f"http://127.0.0.1:{port}"


# The node processes started and not yet found dead at a test's start: a failing test's
# report shows their last log lines (tests/conftest.py), since a node's stderr is otherwise
# only read when it fails to start.
STARTED: list[NodeProcess] = []


def forget_dead_nodes() -> None:
    """Before a test: drop the nodes of earlier tests that are gone (a module's cluster stays)."""
    STARTED[:] = [node for node in STARTED if node.alive]


class NodeProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._pump_thread: threading.Thread | None = None

    def command(self) -> list[str]:
        """How to run ``hdsd`` (a test may run a node's code changed, e.g. an older wire)."""
        return [sys.executable, "-m", "hdsd"]

    def start(self) -> NodeProcess:
        if self.proc is not None:
            self.kill()
        self._listening.clear()
        self.proc = subprocess.Popen(
            [*self.command(), "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        if self not in STARTED:
            STARTED.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"node {self.config} did not start:\n" + self.log())
        return self

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.stderr_lines.append(line)
                if "listening on" in line:
                    self._listening.set()

    def log(self) -> str:
        return "\n".join(self.stderr_lines[-200:])

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)
            if self._pump_thread is not None:
                self._pump_thread.join(30)  # it closes the pipe at EOF

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """A local two-site cluster of real node processes (``dc1-n1`` ... ``dc2-nN``), made by
    ``hdsd init``; *replicas_per_site* overrides what init wrote when given."""

    def __init__(self, root: Path, nodes_per_site: int,
                 replicas_per_site: int | None = None) -> None:
        self.profile = init_cluster(root, nodes_per_site=nodes_per_site)
        if replicas_per_site is not None:
            for config in root.glob("*/node.toml"):
                text = config.read_text()
                config.write_text(re.sub(r"replicas_per_site = \d+\b",
                                         f"replicas_per_site = {replicas_per_site}", text))
        self.nodes = {
            f"dc{s}-n{i}": NodeProcess(root / f"dc{s}-n{i}" / "node.toml")
            for s in (1, 2) for i in range(1, nodes_per_site + 1)
        }

    def start(self) -> Cluster:
        for node in self.nodes.values():
            node.start()
        return self

    def kill(self) -> None:
        for node in self.nodes.values():
            node.kill()
