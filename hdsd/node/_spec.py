"""The cluster spec: one operator-written file naming the sites, nodes, addresses and roles.

``hdsd init --spec spec.toml OUTDIR`` reads it (the flag form of ``hdsd init`` builds the same
:class:`ClusterSpec` in memory) and writes one self-contained bundle per node
(:mod:`hdsd.node._bundle`). Annotated example: ``configs/cluster-spec.example.toml``::

    [cluster]
    id = "hdsd-chu-lyon"            # optional: hdsd-<6 hex digits> if absent
    port = 7400                     # every node's port unless the node says otherwise
    replicas_per_site = 2           # optional: min(2, storage nodes in the smaller site)
    write_policy = "each-site"

    [metrics]                       # optional: every node serves /metrics on HOST:port
    port = 9400

    [log]                           # optional
    format = "json"

    [[sites]]
    name = "lyon-est"
    nodes = [
      { name = "lyon-est-1", addresses = ["10.1.0.11", "hdsd1.lyon-est.example"] },
      { name = "lyon-est-2", addresses = ["10.1.0.12"], role = "backup" },
    ]

A node's first address is the one peers and clients dial (``[[sites]]`` in every node.toml and
the profiles); every address goes into its certificate, so any of them passes the TLS
hostname check. ``listen`` (default: the first address) is what the node binds, e.g.
``0.0.0.0`` behind NAT.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ..cluster import NODE_ROLES
from ..replication import WRITE_POLICIES

__all__ = ["ClusterSpec", "NodeSpec", "default_replicas", "load_spec", "parse_spec",
           "spec_from_flags"]

_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
_CLUSTER_KEYS = {"id", "port", "replicas_per_site", "write_policy", "on_peer_site_loss",
                 "operator_tenant", "write_timeout_s", "catalog_sync_s"}
_NODE_KEYS = {"name", "addresses", "port", "listen", "role", "weight", "metrics"}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    site: str
    addresses: tuple[str, ...]  # IPs and DNS names; the first is the one dialled
    port: int
    listen: str  # the host the node binds
    role: str = "storage"
    weight: float = 1.0
    metrics: str | None = None  # "HOST:PORT" of /metrics, None: none

    @property
    def address(self) -> str:
        """``HOST:PORT`` peers and clients dial (an IPv6 address in brackets)."""
        host = self.addresses[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def s3_port(self) -> int:
        """The port of the node's S3 gateway in the bundle ``hdsd init`` writes: the node's
        port + 80 (7400 -> 7480, the conventional S3 port's tail), or - 80 near the top."""
        return self.port + 80 if self.port + 80 <= 65535 else self.port - 80


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    cluster_id: str
    sites: tuple[str, str]
    nodes: tuple[NodeSpec, ...]
    replicas_per_site: int
    write_policy: str = "each-site"
    on_peer_site_loss: str = "refuse"
    operator_tenant: str = "default"
    write_timeout_s: float = 10.0
    catalog_sync_s: float = 5.0
    passphrase_env: str = ""  # "": one master key file per bundle
    log_format: str = "text"
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for later sections

    def site_nodes(self, site: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.site == site]

    def to_toml(self) -> str:
        """The resolved spec (id and replicas filled in), as ``hdsd init --spec`` reads it:
        kept in the operator directory as the cluster's current layout."""
        lines = ["# the cluster's spec as hdsd init resolved it; the operator directory's",
                 "# record of the current layout (hdsd cert issue reads it)", "",
                 "[cluster]", f"id = {_q(self.cluster_id)}",
                 f"replicas_per_site = {self.replicas_per_site}",
                 f"write_policy = {_q(self.write_policy)}",
                 f"on_peer_site_loss = {_q(self.on_peer_site_loss)}",
                 f"operator_tenant = {_q(self.operator_tenant)}",
                 f"write_timeout_s = {self.write_timeout_s:g}",
                 f"catalog_sync_s = {self.catalog_sync_s:g}", ""]
        if self.passphrase_env:
            lines += ["[keys]", f"passphrase_env = {_q(self.passphrase_env)}", ""]
        lines += ["[log]", f"format = {_q(self.log_format)}", f"level = {_q(self.log_level)}", ""]
        for site in self.sites:
            lines += ["[[sites]]", f"name = {_q(site)}", "nodes = ["]
            for n in self.site_nodes(site):
                parts = [f"name = {_q(n.name)}",
                         "addresses = [" + ", ".join(_q(a) for a in n.addresses) + "]",
                         f"port = {n.port}", f"listen = {_q(n.listen)}"]
                if n.role != "storage":
                    parts.append(f"role = {_q(n.role)}")
                if n.weight != 1.0:
                    parts.append(f"weight = {n.weight:g}")
                if n.metrics:
                    parts.append(f"metrics = {_q(n.metrics)}")
                lines.append("  { " + ", ".join(parts) + " },")
            lines += ["]", ""]
        return "\n".join(lines)


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_replicas(nodes: tuple[NodeSpec, ...], sites: tuple[str, ...]) -> int:
    """``min(2, storage nodes of the smaller site)``: two copies per site keep RPO 0 through a
    node restart; a one-node site can only hold one."""
    return max(1, min(2, *(sum(1 for n in nodes if n.site == s and n.role == "storage")
                           for s in sites)))


def load_spec(path: Path) -> ClusterSpec:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: cluster spec not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the cluster spec: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(raw, where=str(path))


def parse_spec(raw: dict[str, Any], *, where: str = "spec") -> ClusterSpec:
    """Validate a spec; :class:`ConfigError` lists every mistake, one line each."""
    name_re = re.compile(_NAME)
    problems: list[str] = []

    def bad(what: str, why: str) -> None:
        problems.append(f"{where}: {what}: {why}")

    def table(key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            bad(f"[{key}]", "must be a table")
            return {}
        return value

    for key in set(raw) - {"cluster", "keys", "metrics", "log", "sites"}:
        bad(f"[{key}]", "unknown section (known: cluster, keys, metrics, log, sites)")
    cluster, keys, metrics, log = table("cluster"), table("keys"), table("metrics"), table("log")
    for key in set(cluster) - _CLUSTER_KEYS:
        bad(f"[cluster] {key}", f"unknown key (known: {', '.join(sorted(_CLUSTER_KEYS))})")
    for key in set(keys) - {"passphrase_env"}:
        bad(f"[keys] {key}", "unknown key (known: passphrase_env)")
    for key in set(metrics) - {"port", "host"}:
        bad(f"[metrics] {key}", "unknown key (known: port, host)")
    for key in set(log) - {"format", "level"}:
        bad(f"[log] {key}", "unknown key (known: format, level)")

    cluster_id = cluster.get("id", f"hdsd-{secrets.token_hex(3)}")
    if not isinstance(cluster_id, str) or not name_re.fullmatch(cluster_id):
        bad("[cluster] id", f"{cluster_id!r} must match {_NAME}")
    default_port = cluster.get("port", 7400)
    if not _is_port(default_port):
        bad("[cluster] port", f"{default_port!r} must be a port from 1 to 65535")
        default_port = 7400
    policy = cluster.get("write_policy", "each-site")
    if policy not in WRITE_POLICIES:
        bad("[cluster] write_policy", f"{policy!r} must be one of {', '.join(WRITE_POLICIES)}")
    on_loss = cluster.get("on_peer_site_loss", "refuse")
    if on_loss not in ("refuse", "degrade"):
        bad("[cluster] on_peer_site_loss", f"{on_loss!r} must be refuse or degrade")
    operator = cluster.get("operator_tenant", "default")
    if not isinstance(operator, str) or not name_re.fullmatch(operator):
        bad("[cluster] operator_tenant", f"{operator!r} must match {_NAME}")
    timeouts = {}
    for key, default in (("write_timeout_s", 10.0), ("catalog_sync_s", 5.0)):
        value = cluster.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            bad(f"[cluster] {key}", f"{value!r} must be a positive number")
            value = default
        timeouts[key] = float(value)
    passphrase_env = keys.get("passphrase_env", "")
    if not isinstance(passphrase_env, str):
        bad("[keys] passphrase_env", "must be the name of an environment variable")
        passphrase_env = ""
    metrics_port = metrics.get("port")
    if metrics_port is not None and not (_is_port(metrics_port) or metrics_port == 0):
        bad("[metrics] port", f"{metrics_port!r} must be a port (0: any free port)")
        metrics_port = None
    metrics_host = metrics.get("host")
    if metrics_host is not None and not isinstance(metrics_host, str):
        bad("[metrics] host", "must be a string")
        metrics_host = None
    log_format, log_level = log.get("format", "text"), log.get("level", "info")
    if log_format not in ("text", "json"):
        bad("[log] format", f"{log_format!r} must be text or json")
    if log_level not in ("debug", "info", "warning", "error"):
        bad("[log] level", f"{log_level!r} must be one of debug, info, warning, error")

    sites_raw = raw.get("sites", [])
    site_names: list[str] = []
    nodes: list[NodeSpec] = []
    if not isinstance(sites_raw, list) or len(sites_raw) != 2:
        bad("[[sites]]", "a cluster has exactly two sites")
        sites_raw = sites_raw if isinstance(sites_raw, list) else []
    for i, site in enumerate(sites_raw):
        at = f"[[sites]] #{i + 1}"
        if not isinstance(site, dict) or set(site) - {"name", "nodes"}:
            bad(at, "must be a table with keys name, nodes")
            continue
        sname = site.get("name")
        if not isinstance(sname, str) or not name_re.fullmatch(sname):
            bad(at, f"name {sname!r} must match {_NAME}")
            continue
        if sname in site_names:
            bad(at, f"site {sname!r} is declared twice")
        site_names.append(sname)
        entries = site.get("nodes")
        if not isinstance(entries, list) or not entries:
            bad(at, f"site {sname}: nodes must be a non-empty list")
            continue
        for node in entries:
            parsed = _parse_node(node, sname, default_port, metrics_host, metrics_port,
                                 lambda why, at=at: bad(at, why), name_re)
            if parsed is not None:
                nodes.append(parsed)
    names = [n.name for n in nodes]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        bad("[[sites]]", f"node name {dup!r} is used twice")
    dialled = [n.address for n in nodes]
    for dup in sorted({a for a in dialled if dialled.count(a) > 1}):
        bad("[[sites]]", f"two nodes are dialled at {dup}")
    _check_listeners(nodes, bad)
    for s in site_names:
        if not any(n.site == s and n.role == "storage" for n in nodes):
            bad("[[sites]]", f"site {s} needs at least one storage node")
    replicas = cluster.get("replicas_per_site")
    if len(site_names) == 2 and not problems:
        fewest = min(sum(1 for n in nodes if n.site == s and n.role == "storage")
                     for s in site_names)
        if replicas is None:
            replicas = default_replicas(tuple(nodes), tuple(site_names))
        elif isinstance(replicas, bool) or not isinstance(replicas, int) or \
                not 1 <= replicas <= min(8, fewest):
            bad("[cluster] replicas_per_site",
                f"{replicas!r} must be between 1 and {min(8, fewest)} (storage nodes of the "
                "smaller site)")
    if problems:
        raise ConfigError("\n".join(problems))
    assert isinstance(replicas, int)
    return ClusterSpec(
        cluster_id=cluster_id, sites=(site_names[0], site_names[1]), nodes=tuple(nodes),
        replicas_per_site=replicas, write_policy=policy, on_peer_site_loss=on_loss,
        operator_tenant=operator, write_timeout_s=timeouts["write_timeout_s"],
        catalog_sync_s=timeouts["catalog_sync_s"], passphrase_env=passphrase_env,
        log_format=log_format, log_level=log_level)


def _check_listeners(nodes: list[NodeSpec], bad: Any) -> None:
    """No two listeners of the bundles (node port, S3 gateway, metrics) on one port of one
    machine (nodes dialled at the same first address share one): the second node would fail to
    start, far from the spec that caused it. Listeners bound to two distinct specific addresses
    may share a port; a wildcard takes the port on every address."""
    wildcard = ("0.0.0.0", "::", "")
    seen: list[tuple[str, str, int, str]] = []
    for n in nodes:
        machine = n.addresses[0]
        mine = [(n.listen, n.port, f"node {n.name}"),
                (n.listen, n.s3_port, f"node {n.name}'s S3 gateway (its port + 80)")]
        if n.metrics and not n.metrics.endswith(":0"):
            host, _, number = n.metrics.rpartition(":")
            mine.append((host.strip("[]"), int(number), f"node {n.name}'s metrics"))
        for host, port, what in mine:
            clash = next((w for m, h, p, w in seen if m == machine and p == port
                          and (h == host or h in wildcard or host in wildcard)), None)
            if clash is not None:
                bad("[[sites]]", f"port {port} on {machine} is wanted by {clash} and by {what}; "
                    "give the nodes ports further apart")
            seen.append((machine, host, port, what))


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _parse_node(node: object, site: str, default_port: int, metrics_host: str | None,
                metrics_port: int | None, bad: Any, name_re: Any) -> NodeSpec | None:
    if not isinstance(node, dict):
        bad("each node must be a table { name = ..., addresses = [...] }")
        return None
    name = node.get("name")
    if not isinstance(name, str) or not name_re.fullmatch(name):
        bad(f"node name {name!r} must match {_NAME}")
        return None
    for key in set(node) - _NODE_KEYS:
        bad(f"node {name}: unknown key {key!r} (known: {', '.join(sorted(_NODE_KEYS))})")
    addresses = node.get("addresses")
    if isinstance(addresses, str):
        addresses = [addresses]
    # One colon is a HOST:PORT (the port is a key of its own); IPv6 addresses have several.
    if not isinstance(addresses, list) or not addresses or \
            not all(isinstance(a, str) and a and a.count(":") != 1 for a in addresses):
        bad(f"node {name}: addresses must be a non-empty list of IP addresses or DNS names "
            "(no port: see port)")
        return None
    port = node.get("port", default_port)
    if not _is_port(port):
        bad(f"node {name}: port {port!r} must be from 1 to 65535")
        return None
    role = node.get("role", "storage")
    if role not in NODE_ROLES:
        bad(f"node {name}: role {role!r} must be one of {', '.join(NODE_ROLES)}")
        return None
    weight = node.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        bad(f"node {name}: weight must be a positive number")
        return None
    listen = node.get("listen", addresses[0])
    if not isinstance(listen, str) or not listen:
        bad(f"node {name}: listen must be a host (an address to bind)")
        return None
    metrics = node.get("metrics")
    if metrics is not None and (not isinstance(metrics, str) or ":" not in metrics):
        bad(f"node {name}: metrics must be HOST:PORT")
        return None
    if metrics is None and metrics_port is not None:
        metrics = f"{metrics_host or listen}:{metrics_port}"
    return NodeSpec(name=name, site=site, addresses=tuple(addresses), port=port,
                    listen=listen, role=role, weight=float(weight), metrics=metrics)


def spec_from_flags(*, sites: tuple[str, str], nodes_per_site: int, backup_nodes_per_site: int,
                    ports: list[int], host: str, tenant: str) -> ClusterSpec:
    """What the flag form of ``hdsd init`` means, as a spec: storage nodes ``SITE-nN`` then
    backup nodes ``SITE-bN`` per site, *ports* in that order (site by site for storage nodes,
    then site by site for backup nodes, as ``hdsd init`` always numbered them)."""
    addresses = tuple(dict.fromkeys([host, "127.0.0.1", "localhost"]))
    port = iter(ports)
    nodes = [NodeSpec(name=f"{s}-n{i}", site=s, addresses=addresses, port=next(port),
                      listen=host)
             for s in sites for i in range(1, nodes_per_site + 1)]
    nodes += [NodeSpec(name=f"{s}-b{i}", site=s, addresses=addresses, port=next(port),
                       listen=host, role="backup")
              for s in sites for i in range(1, backup_nodes_per_site + 1)]
    raw: dict[str, Any] = {"cluster": {"operator_tenant": tenant}, "sites": [
        {"name": s, "nodes": [_node_table(n) for n in nodes if n.site == s]} for s in sites]}
    return parse_spec(raw, where="hdsd init")


def _node_table(n: NodeSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": n.name, "addresses": list(n.addresses), "port": n.port,
                           "listen": n.listen, "role": n.role}
    if n.metrics:
        out["metrics"] = n.metrics
    return out
