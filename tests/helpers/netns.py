"""Hosts of their own for end-to-end tests: a network namespace per host, a bridge per site
and one veth link between the sites (all inside a private "fabric" namespace, so nothing touches
the machine's own network), and ``hdsd serve`` run inside a host's namespace.

Needs root (``ip netns``): :data:`REASON` says why not when it cannot run, for a skip marker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root for ip netns (run the suite as root to get the multi-host test)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"hdsdp{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "ip netns add failed (no CAP_SYS_ADMIN in this container?)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


REASON = _why_not()


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {proc.stderr.decode().strip()}")


@dataclass
class Net:
    tag: str
    namespaces: list[str] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"hd{self.tag}-{name}"

    @property
    def fabric(self) -> str:
        return self.ns("fabric")

    def add_ns(self, name: str) -> str:
        ns = self.ns(name)
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def attach(self, name: str, site: str, address: str) -> None:
        """A host on the site's bridge: a veth pair, one end in the host's namespace."""
        ns = self.add_ns(name)
        outer, inner = f"v{self.tag}{name.replace('-', '')}", "eth0"
        ip("-n", self.fabric, "link", "add", outer, "type", "veth", "peer", "name", inner,
           "netns", ns)
        ip("-n", self.fabric, "link", "set", outer, "master", f"br-{site}", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")

    def site_link(self, up: bool) -> None:
        ip("-n", self.fabric, "link", "set", "x-est", "up" if up else "down")

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class NsNode:
    """``hdsd serve --config <bundle>/node.toml`` inside a namespace."""

    def __init__(self, ns: str, config: Path) -> None:
        self.ns, self.config = ns, config
        self.lines: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        listening = threading.Event()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "hdsd", "serve", "--config",
             str(self.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)

        def pump(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stderr is not None
            with proc.stderr:
                for raw in proc.stderr:
                    line = raw.decode(errors="replace").rstrip()
                    self.lines.append(line)
                    if "listening on" in line:
                        listening.set()

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.config} did not start:\n" + self.log())

    def log(self) -> str:
        return "\n".join(self.lines[-100:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)


def two_sites(hosts: dict[str, tuple[str, str]]) -> Net:
    """A fabric with bridges ``br-est`` and ``br-sud`` joined by the inter-site link (``x-est``
    on the est side: :meth:`Net.site_link` cuts it), and *hosts* (name → (site, address))
    attached to their site's bridge."""
    net = Net(secrets.token_hex(2))
    try:
        net.add_ns("fabric")
        for site in ("est", "sud"):
            ip("-n", net.fabric, "link", "add", f"br-{site}", "type", "bridge")
            ip("-n", net.fabric, "link", "set", f"br-{site}", "up")
        # the inter-site link: a veth pair between the two bridges
        ip("-n", net.fabric, "link", "add", "x-est", "type", "veth", "peer", "name", "x-sud")
        ip("-n", net.fabric, "link", "set", "x-est", "master", "br-est", "up")
        ip("-n", net.fabric, "link", "set", "x-sud", "master", "br-sud", "up")
        for name, (site, address) in hosts.items():
            net.attach(name, site, address)
    except BaseException:
        net.destroy()
        raise
    return net
