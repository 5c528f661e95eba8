"""A two-site cluster of real processes whose inter-site links go through fault proxies.

Every node has a :class:`FaultProxy` in front of it that the *other* site's nodes dial instead
of its real address (their ``node.toml`` names the proxy), while nodes of one site talk to each
other directly: cutting, resetting or slowing the proxies is a real partition between the
datacenters, and clients (which use the profile's real addresses) still reach every node.

Process faults act on real processes: ``kill`` is SIGKILL, ``pause``/``resume`` SIGSTOP/SIGCONT.
Everything is synchronous (the proxies run their own trio loop in a thread), so a test drives
faults from one thread while its clients run elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hdsd.client import Profile, load_profile
from tests.helpers.cluster import NodeProcess, free_ports, hdsd, init_cluster
from tests.helpers.faultproxy import FaultProxy

SITES = ("dc1", "dc2")


def own_port(cfg: Path) -> int:
    match = re.search(r'^listen = "127\.0\.0\.1:(\d+)"', cfg.read_text(), re.M)
    assert match, cfg
    return int(match.group(1))


class Grid:
    """2 sites x *nodes_per_site* nodes (``dc1-n1`` ...); see the module docstring."""

    def __init__(self, root: Path, *, nodes_per_site: int = 2,
                 replicas_per_site: int | None = None, write_timeout_s: float = 3,
                 on_peer_site_loss: str = "refuse", write_policy: str = "each-site") -> None:
        self.root = root
        self.profile_path = init_cluster(root, nodes_per_site=nodes_per_site,
                                         ports=free_ports(2 * nodes_per_site))
        self.profile = load_profile(self.profile_path)
        self.sites = {site: [f"{site}-n{i}" for i in range(1, nodes_per_site + 1)]
                      for site in SITES}
        self.site_of = {n: site for site, names in self.sites.items() for n in names}
        configs = {n: root / n / "node.toml" for n in self.site_of}
        ports = {n: own_port(cfg) for n, cfg in configs.items()}
        self.proxies: dict[str, FaultProxy] = {}
        try:
            for name, port in ports.items():
                self.proxies[name] = FaultProxy("127.0.0.1", port).__enter__()
            for name, cfg in configs.items():
                text = cfg.read_text()
                for peer in self.site_of:
                    if self.site_of[peer] != self.site_of[name]:
                        text = re.sub(rf'(name = "{peer}", address = "127\.0\.0\.1:)\d+',
                                      rf"\g<1>{self.proxies[peer].port}", text)
                text = _set(text, "write_timeout_s", f"{write_timeout_s:g}")
                text = _set(text, "on_peer_site_loss", f'"{on_peer_site_loss}"')
                text = _set(text, "write_policy", f'"{write_policy}"')
                if replicas_per_site is not None:
                    text = _set(text, "replicas_per_site", str(replicas_per_site))
                cfg.write_text(text)
        except BaseException:
            self._stop_proxies()
            raise
        self.nodes = {n: NodeProcess(cfg) for n, cfg in configs.items()}
        self.paused: set[str] = set()

    # -- processes ---------------------------------------------------------------------------
    def start(self, *names: str) -> None:
        """Start *names* (default: every node that is not running), concurrently."""
        todo = [n for n in (names or self.nodes) if not self.nodes[n].alive]
        with ThreadPoolExecutor(max(1, len(todo))) as pool:
            for future in [pool.submit(self.nodes[n].start) for n in todo]:
                future.result()

    def kill(self, *names: str) -> None:
        """SIGKILL (a paused process dies too)."""
        for n in names:
            self.nodes[n].kill()
            self.paused.discard(n)

    def pause(self, name: str) -> None:
        proc = self.nodes[name].proc
        assert proc is not None and proc.poll() is None, name
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(name)

    # -- inter-site links --------------------------------------------------------------------
    def link(self, action: str, *args: float, toward: str | None = None) -> None:
        """``blackhole``/``reset``/``set_delay``/``heal`` the proxies in front of the nodes of
        site *toward* (connections dialled by the other site), or of every node."""
        for name, proxy in self.proxies.items():
            if toward is None or self.site_of[name] == toward:
                getattr(proxy, action)(*args)

    def heal_all(self) -> None:
        """Every link passes, every paused node runs, every node is started."""
        self.link("heal")
        for name in list(self.paused):
            self.resume(name)
        self.start()

    # -- clients -----------------------------------------------------------------------------
    def endpoint(self, name: str) -> tuple[str, int]:
        site = self.site_of[name]
        return self.profile.sites[site][self.sites[site].index(name)]

    def pinned(self, name: str) -> Profile:
        """The admin profile talking to node *name* only."""
        return self.profile.pinned(self.site_of[name], *self.endpoint(name))

    def rotated(self, site: str, first: int) -> Profile:
        """The admin profile for *site* whose first endpoint is its node number *first* (a
        client fails over to the next endpoint when its node is unreachable)."""
        eps = self.profile.sites[site]
        k = first % len(eps)
        return dataclasses.replace(self.profile, site=site,
                                   sites={**self.profile.sites, site: eps[k:] + eps[:k]})

    def cli(self, *args: str, site: str = "dc1", timeout: float = 300) -> Any:
        """Run ``hdsd --profile P --site SITE ARGS --json``; return the parsed JSON or raise
        AssertionError with its message."""
        proc = hdsd("--profile", str(self.profile_path), "--site", site, *args, "--json",
                    timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"hdsd {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        return json.loads(proc.stdout)

    # -- cleanup -----------------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for node in self.nodes.values():
            try:
                node.kill()
            except Exception:  # one stuck node must not keep the others (or proxies) alive
                pass
        self._stop_proxies()

    def _stop_proxies(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{node.log()}" for n, node in self.nodes.items())


def _set(text: str, key: str, value: str) -> str:
    """Set ``key = value`` in the [cluster] section of a generated node.toml (commented or
    not), keeping its comment."""
    new, count = re.subn(rf"^#? ?{key} = \S+", f"{key} = {value}", text, count=1, flags=re.M)
    assert count == 1, f"no {key} in node.toml"
    return new
