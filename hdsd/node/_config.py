"""Node configuration: a TOML file, validated entirely at start.

Every mistake is reported, one clear line each (``path: [section] key: what is wrong``), in a
single :class:`ConfigError`, so an operator fixes them all in one go. Relative paths are resolved
against the directory of the configuration file, so a node directory can be moved as a whole.

Example (``hdsd init`` writes one per node)::

    [node]
    name = "lyon-est-1"
    site = "lyon-est"
    listen = "127.0.0.1:7401"
    data_dir = "data"
    on_corrupt_log = "repair"      # damage met at start: set it aside, refetch (or "refuse")
    segment_read_fds = 64          # log segment read descriptors kept open (least recent closed)

    [tls]
    ca = "../ca/ca.crt"
    cert = "node.crt"
    key = "node.key"

    [keys]
    master_key_file = "../master.key"

    [cluster]
    id = "hdsd-3f2a9c"
    chunk_size = 1048576
    compression_level = 1
    inline_max = 16384
    replicas_per_site = 1          # copies in each site
    write_policy = "each-site"     # ack when fsynced in every site (RPO 0); or majority, local
    on_peer_site_loss = "refuse"   # or "degrade": accept writes alone, keep hints
    write_timeout_s = 10

    [repair]                       # optional
    interval_s = 3600              # Merkle anti-entropy with every peer (0: only hdsd repair)
    rate_mib_s = 64                # repair traffic budget, so client writes are not starved
    rebuild_rate_mib_s = 0         # a wiped node's rebuild (0: as fast as disk and link allow)
    scrub_interval_h = 168         # re-read and verify every record weekly (0: hdsd scrub)
    scrub_rate_mib_s = 32
    purge_grace_h = 192            # chunks a purge left unnamed are reclaimed after this
    snapshot_s = 30                # Merkle trees follow the index and are saved this often

    [s3]                           # optional: the S3 gateway (docs/s3.md)
    listen = ["127.0.0.1:7480"]    # HTTPS with this node's certificate
    plain_http = []                # plain HTTP: only loopback, unless
    plain_http_beyond_loopback = false  # ... the operator forces it
    region = "us-east-1"           # the SigV4 region clients must sign for
    # domain = "s3.example.org"    # also virtual-host style: BUCKET.s3.example.org
    multipart_expire_h = 168       # unfinished multipart uploads are reclaimed after this

    [[sites]]
    name = "lyon-est"
    nodes = [{ name = "lyon-est-1", address = "127.0.0.1:7401" },
             { name = "lyon-est-b1", address = "127.0.0.1:7411", role = "backup" }]

A node's role (``storage``, the default, or ``backup``) is its ``[[sites]]`` entry's; a backup
node's own ``[node]`` may repeat it (``role = "backup"``), and must then agree.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ..cluster import NODE_ROLES, Layout, NodeInfo, NodeRole, parse_address
from ..replication import WRITE_POLICIES, WritePolicy

__all__ = ["NAME_RE", "NodeConfig", "SiteConfig", "load_node_config"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str
    nodes: tuple[tuple[str, str, int, float], ...]  # (node name, host, port, weight)
    roles: tuple[NodeRole, ...] = ()  # each node's role, in the order of nodes ("storage" if empty)

    def role_of(self, index: int) -> NodeRole:
        return self.roles[index] if index < len(self.roles) else "storage"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    name: str
    site: str
    host: str
    port: int
    data_dir: Path
    ca: Path
    cert: Path
    key: Path
    master_key_file: Path | None  # None: master key derived from a passphrase
    cluster_id: str
    chunk_size: int = 1 << 20
    compression_level: int = 1
    inline_max: int = 16 << 10
    max_connections: int = 1024  # client sessions (peers have their own peer_slots)
    request_timeout_s: float = 60.0
    # Memory bounds per connection and per node (see [limits] in configs/ and the README).
    max_requests_per_connection: int = 16
    max_requests_in_flight: int = 512
    max_unsent_mib: int = 8
    max_body_mib_per_connection: int = 64
    max_body_mib_in_flight: int = 32  # node-wide: see hdsd/node/_budget.py
    min_upload_rate_kib_s: float = 64.0
    # Connection slots: handshakes apart from sessions, caps per identity and tenant.
    max_handshakes: int = 64
    max_handshakes_per_source: int = 16
    handshake_timeout_s: float = 5.0
    max_sessions_per_identity: int = 32
    max_sessions_per_tenant: int = 256
    peer_slots: int = 64
    idle_timeout_s: float = 300.0
    malloc_trim_s: float = 5.0  # freed memory handed back to the system this often
    shutdown_grace_s: float = 30.0
    sites: tuple[SiteConfig, ...] = field(default_factory=tuple)
    replicas_per_site: int = 1
    write_policy: WritePolicy = "each-site"
    on_peer_site_loss: str = "refuse"
    write_timeout_s: float = 10.0
    segment_mib: int = 256
    segment_read_fds: int = 64  # bounded cache of segment read descriptors (see store._fds)
    on_corrupt_log: str = "repair"  # or "refuse": stay down for an operator to look first
    repair_interval_s: float = 3600.0  # 0: only on demand (hdsd repair)
    repair_rate_mib_s: float = 64.0
    rebuild_rate_mib_s: float = 0.0  # 0: unlimited (the disk and the link set the pace)
    scrub_interval_h: float = 168.0  # 0: only on demand (hdsd scrub)
    scrub_rate_mib_s: float = 32.0
    # Chunks a purge left unnamed are reclaimed by the first compaction after this: longer
    # than any upload (a put or a multipart upload that found such a chunk stored before the
    # purge names it in its version when it completes; S3 uploads expire after 168 h).
    purge_grace_h: float = 192.0
    # The Merkle trees catch up with the index and are saved (merkle-trees.bin, only when
    # something was indexed since) this often: what a restart after a crash replays.
    repair_snapshot_s: float = 30.0
    audit_checkpoint_records: int = 1000
    audit_checkpoint_s: float = 10.0
    audit_retention_days: int = 365
    audit_segment_mib: int = 64
    audit_commit_ms: float = 10.0
    audit_refusals_interval_s: float = 60.0  # refused connections: one record per source each
    operator_tenant: str = "default"
    catalog_sync_s: float = 5.0
    master_passphrase_env: str = ""  # with master_salt_file, instead of master_key_file
    master_salt_file: Path | None = None
    metrics_host: str | None = None  # None: no metrics/health endpoint
    metrics_port: int = 0  # 0: a free port, chosen at start (Node.metrics_port)
    log_format: str = "text"
    log_level: str = "info"
    # [s3]: the gateway's HTTPS and plain-HTTP listen addresses (none: no gateway)
    s3_https: tuple[tuple[str, int], ...] = ()
    s3_http: tuple[tuple[str, int], ...] = ()
    s3_region: str = "us-east-1"
    s3_domain: str = ""  # virtual-host-style addressing: BUCKET.<domain> ("": path-style only)
    s3_multipart_expire_h: float = 168.0
    # --- deployment (hdsd init bundles) ---
    master_key_check: str = ""  # [keys] master_key_check: the key's fingerprint; "": unchecked

    def layout(self) -> Layout:
        return Layout(sites=tuple(s.name for s in self.sites), nodes=_node_infos(self.sites),
                      replicas_per_site=self.replicas_per_site)

    @property
    def role(self) -> NodeRole:
        """This node's role (``storage`` or ``backup``): its entry in ``[[sites]]`` says."""
        return self.layout().node(self.name).role


def _node_infos(sites: tuple[SiteConfig, ...]) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(name=n, site=s.name, host=h, port=p, weight=w, role=s.role_of(i))
                 for s in sites for i, (n, h, p, w) in enumerate(s.nodes))


# [limits] keys beyond the first three: name -> (default, minimum, type); all in NodeConfig.
_LIMIT_DEFAULTS: dict[str, tuple[float, float, type]] = {
    "max_requests_per_connection": (16, 1, int),
    "max_requests_in_flight": (512, 1, int),
    "max_unsent_mib": (8, 1, int),
    "max_body_mib_per_connection": (64, 1, int),
    "max_body_mib_in_flight": (32, 1, int),
    "min_upload_rate_kib_s": (64.0, 1, float),
    "max_handshakes": (64, 1, int),
    "max_handshakes_per_source": (16, 1, int),
    "handshake_timeout_s": (5.0, 0.1, float),
    "max_sessions_per_identity": (32, 1, int),
    "max_sessions_per_tenant": (256, 1, int),
    "peer_slots": (64, 1, int),
    "idle_timeout_s": (300.0, 1, float),
    "malloc_trim_s": (5.0, 1, float),
}
_LIMITS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    k: ((int, float) if kind is float else int, False) for k, (_, _, kind) in
    _LIMIT_DEFAULTS.items()}

# section -> key -> (type, required)
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "node": {"name": (str, True), "site": (str, True), "listen": (str, True),
             "data_dir": (str, True), "segment_mib": (int, False),
             "segment_read_fds": (int, False),
             "on_corrupt_log": (str, False), "role": (str, False)},
    "tls": {"ca": (str, True), "cert": (str, True), "key": (str, True)},
    "keys": {"master_key_file": (str, False), "master_passphrase_env": (str, False),
             "master_salt_file": (str, False),
             "master_key_check": (str, False)},  # deployment: see _masterkey.master_key_check
    "cluster": {"id": (str, True), "chunk_size": (int, False), "compression_level": (int, False),
                "inline_max": (int, False), "replicas_per_site": (int, False),
                "write_policy": (str, False), "on_peer_site_loss": (str, False),
                "write_timeout_s": ((int, float), False), "operator_tenant": (str, False),
                "catalog_sync_s": ((int, float), False)},
    "repair": {"interval_s": ((int, float), False), "rate_mib_s": ((int, float), False),
               "rebuild_rate_mib_s": ((int, float), False),
               "scrub_interval_h": ((int, float), False),
               "scrub_rate_mib_s": ((int, float), False),
               "purge_grace_h": ((int, float), False),
               "snapshot_s": ((int, float), False)},
    "limits": {"max_connections": (int, False), "request_timeout_s": ((int, float), False),
               "shutdown_grace_s": ((int, float), False), **_LIMITS},
    "audit": {"checkpoint_records": (int, False), "checkpoint_s": ((int, float), False),
              "retention_days": (int, False), "segment_mib": (int, False),
              "commit_ms": ((int, float), False),
              "refusals_interval_s": ((int, float), False)},
    "metrics": {"address": (str, False)},
    "s3": {"listen": (list, False), "plain_http": (list, False),
           "plain_http_beyond_loopback": (bool, False), "region": (str, False),
           "domain": (str, False), "multipart_expire_h": ((int, float), False)},
    "log": {"format": (str, False), "level": (str, False)},
}
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_REQUIRED_SECTIONS = ("node", "tls", "keys", "cluster")


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self.fatal = False  # a value the rest of the checks need is missing or mistyped

    def add(self, where: str, what: str, *, fatal: bool = False) -> None:
        self.lines.append(f"{self.path}: {where}: {what}")
        self.fatal = self.fatal or fatal

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(self.lines))


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node configuration file; :class:`ConfigError` lists every mistake."""
    cfg_path = Path(path).resolve()
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: cannot read configuration: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None

    p = _Problems(cfg_path)
    base = cfg_path.parent
    sections = _check_schema(raw, p)
    if p.fatal:
        p.raise_if_any()

    node, tls, keys, cluster = (sections[s] for s in _REQUIRED_SECTIONS)
    limits = sections.get("limits", {})
    for where, value in (("[node] name", node["name"]), ("[node] site", node["site"])):
        if not NAME_RE.match(value):
            p.add(where, f"{value!r} must match {NAME_RE.pattern}")
    host, port = "", 0
    try:
        host, port = parse_address(node["listen"])
    except ValueError as exc:
        p.add("[node] listen", str(exc))

    def file_path(where: str, value: str) -> Path:
        resolved = (base / value).resolve()
        if not resolved.is_file():
            p.add(where, f"file {resolved} does not exist")
        elif not os.access(resolved, os.R_OK):
            p.add(where, f"file {resolved} is not readable")
        return resolved

    ca = file_path("[tls] ca", tls["ca"])
    cert = file_path("[tls] cert", tls["cert"])
    key = file_path("[tls] key", tls["key"])
    master: Path | None = None
    salt: Path | None = None
    passphrase_env = keys.get("master_passphrase_env", "")
    if ("master_key_file" in keys) == bool(passphrase_env):
        p.add("[keys]", "set either master_key_file or master_passphrase_env (with "
                        "master_salt_file), not both")
    elif passphrase_env:
        if "master_salt_file" not in keys:
            p.add("[keys] master_salt_file", "required with master_passphrase_env (the same "
                                             "16 bytes on every node)")
        else:
            salt = file_path("[keys] master_salt_file", keys["master_salt_file"])
    else:
        master = file_path("[keys] master_key_file", keys["master_key_file"])

    data_dir = (base / node["data_dir"]).resolve()
    _check_writable_dir(data_dir, p)

    chunk_size = cluster.get("chunk_size", 1 << 20)
    if not (64 << 10) <= chunk_size <= (4 << 20):
        p.add("[cluster] chunk_size", f"{chunk_size} must be between 65536 and 4194304")
    level = cluster.get("compression_level", 1)
    if not 1 <= level <= 19:
        p.add("[cluster] compression_level", f"{level} must be between 1 and 19")
    inline_max = cluster.get("inline_max", 16 << 10)
    if not 0 <= inline_max <= min(chunk_size, 64 << 10):
        p.add("[cluster] inline_max", f"{inline_max} must be between 0 and 65536 and <= chunk_size")
    max_conn = limits.get("max_connections", 1024)
    if max_conn < 1:
        p.add("[limits] max_connections", "must be at least 1")
    timeout = float(limits.get("request_timeout_s", 60.0))
    if timeout <= 0:
        p.add("[limits] request_timeout_s", "must be positive")
    grace = float(limits.get("shutdown_grace_s", 30.0))
    if grace < 0:
        p.add("[limits] shutdown_grace_s", "must be >= 0")
    bounds: dict[str, Any] = {}
    for k, (default, least, kind) in _LIMIT_DEFAULTS.items():
        bounds[k] = kind(limits.get(k, default))
        if bounds[k] < least:
            p.add(f"[limits] {k}", f"{bounds[k]:g} must be at least {least:g}")
    # Every upload in flight may hold one partial chunk that waits for more of its body: the
    # connection's body bound must leave room for all of them, or reading would stop for good.
    if bounds["max_body_mib_per_connection"] << 20 < \
            bounds["max_requests_per_connection"] * chunk_size:
        p.add("[limits] max_body_mib_per_connection",
              f"{bounds['max_body_mib_per_connection']} MiB must hold at least one chunk "
              f"({chunk_size} bytes) per request of max_requests_per_connection "
              f"({bounds['max_requests_per_connection']})")
    sites = _parse_sites(raw.get("sites", []), p)
    replicas = cluster.get("replicas_per_site", 1)
    if not 1 <= replicas <= 8:
        p.add("[cluster] replicas_per_site", f"{replicas} must be between 1 and 8")
    policy = cluster.get("write_policy", "each-site")
    if policy not in WRITE_POLICIES:
        p.add("[cluster] write_policy", f"{policy!r} must be one of {', '.join(WRITE_POLICIES)}")
    on_loss = cluster.get("on_peer_site_loss", "refuse")
    if on_loss not in ("refuse", "degrade"):
        p.add("[cluster] on_peer_site_loss", f"{on_loss!r} must be refuse or degrade")
    write_timeout = float(cluster.get("write_timeout_s", 10.0))
    if write_timeout <= 0:
        p.add("[cluster] write_timeout_s", "must be positive")
    segment_mib = node.get("segment_mib", 256)
    if not 4 <= segment_mib <= 4096:
        p.add("[node] segment_mib", f"{segment_mib} must be between 4 and 4096")
    read_fds = node.get("segment_read_fds", 64)
    if not 1 <= read_fds <= 65536:
        p.add("[node] segment_read_fds", f"{read_fds} must be between 1 and 65536")
    on_corrupt = node.get("on_corrupt_log", "repair")
    if on_corrupt not in ("repair", "refuse"):
        p.add("[node] on_corrupt_log", f"{on_corrupt!r} must be repair or refuse")
    repair = sections.get("repair", {})
    repair_values = {k: float(repair.get(k, d)) for k, d in (
        ("interval_s", 3600.0), ("rate_mib_s", 64.0), ("scrub_interval_h", 168.0),
        ("scrub_rate_mib_s", 32.0), ("rebuild_rate_mib_s", 0.0), ("purge_grace_h", 192.0))}
    for k, v in repair_values.items():
        # A rebuild may run unpaced (0); the other rates are budgets that must exist.
        if v < 0 or (k.endswith("rate_mib_s") and k != "rebuild_rate_mib_s" and v == 0):
            p.add(f"[repair] {k}", "must be positive" if k.endswith("rate_mib_s")
                  else "must be >= 0" if k == "purge_grace_h"
                  else "must be >= 0 (0: only on demand)")
    snapshot_s = float(repair.get("snapshot_s", 30.0))
    if not 1 <= snapshot_s <= 86400:
        p.add("[repair] snapshot_s", f"{snapshot_s:g} must be between 1 and 86400")
    audit = sections.get("audit", {})
    audit_records = audit.get("checkpoint_records", 1000)
    if not 1 <= audit_records <= 1_000_000:
        p.add("[audit] checkpoint_records", f"{audit_records} must be between 1 and 1000000")
    audit_s = float(audit.get("checkpoint_s", 10.0))
    if not 0 < audit_s <= 3600:
        p.add("[audit] checkpoint_s", f"{audit_s:g} must be > 0 and <= 3600")
    audit_days = audit.get("retention_days", 365)
    if audit_days < 1:
        p.add("[audit] retention_days", f"{audit_days} must be at least 1")
    audit_mib = audit.get("segment_mib", 64)
    if not 1 <= audit_mib <= 4096:
        p.add("[audit] segment_mib", f"{audit_mib} must be between 1 and 4096")
    audit_commit_ms = float(audit.get("commit_ms", 10.0))
    if not 0 <= audit_commit_ms <= 1000:
        p.add("[audit] commit_ms", f"{audit_commit_ms:g} must be between 0 and 1000")
    audit_refusals_s = float(audit.get("refusals_interval_s", 60.0))
    if not 0.1 <= audit_refusals_s <= 3600:
        p.add("[audit] refusals_interval_s", f"{audit_refusals_s:g} must be between 0.1 and 3600")
    operator = cluster.get("operator_tenant", "default")
    if not NAME_RE.match(operator):
        p.add("[cluster] operator_tenant", f"{operator!r} must match {NAME_RE.pattern}")
    catalog_sync = float(cluster.get("catalog_sync_s", 5.0))
    if not 0 < catalog_sync <= 3600:
        p.add("[cluster] catalog_sync_s", "must be in (0, 3600]")
    metrics_host, metrics_port = _metrics_address(sections.get("metrics", {}), p)
    s3 = _s3_section(sections.get("s3", {}), p)
    log_section = sections.get("log", {})
    log_format = log_section.get("format", "text")
    if log_format not in LOG_FORMATS:
        p.add("[log] format", f"{log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    log_level = log_section.get("level", "info")
    if log_level not in LOG_LEVELS:
        p.add("[log] level", f"{log_level!r} must be one of {', '.join(LOG_LEVELS)}")
    if len(sites) != 2:
        p.add("[[sites]]", f"a cluster has exactly two sites, {len(sites)} declared")
    elif not any(n[0] == node["name"] and s.name == node["site"] for s in sites for n in s.nodes):
        p.add("[[sites]]", f"this node ({node['name']} in site {node['site']}) is not listed")
    else:
        try:
            layout = Layout(sites=tuple(s.name for s in sites), nodes=_node_infos(sites),
                            replicas_per_site=replicas)
        except ValueError as exc:
            p.add("[[sites]]", str(exc))
        else:
            # [[sites]] is the source of truth (every node must see every node's role); the
            # optional [node] role only guards against a node.toml edited in one place only.
            listed = layout.node(node["name"]).role
            if node.get("role", listed) != listed:
                p.add("[node] role", f"{node['role']!r} disagrees with this node's [[sites]] "
                                     f"entry (role = {listed!r}); set the same in both")
    p.raise_if_any()
    return NodeConfig(
        path=cfg_path, name=node["name"], site=node["site"], host=host, port=port,
        data_dir=data_dir, ca=ca, cert=cert, key=key, master_key_file=master,
        cluster_id=cluster["id"], chunk_size=chunk_size, compression_level=level,
        inline_max=inline_max, max_connections=max_conn, request_timeout_s=timeout,
        shutdown_grace_s=grace, sites=sites, replicas_per_site=replicas, write_policy=policy,
        on_peer_site_loss=on_loss, write_timeout_s=write_timeout, segment_mib=segment_mib,
        segment_read_fds=read_fds,
        on_corrupt_log=on_corrupt, repair_interval_s=repair_values["interval_s"],
        repair_rate_mib_s=repair_values["rate_mib_s"],
        rebuild_rate_mib_s=repair_values["rebuild_rate_mib_s"],
        scrub_interval_h=repair_values["scrub_interval_h"],
        scrub_rate_mib_s=repair_values["scrub_rate_mib_s"],
        purge_grace_h=repair_values["purge_grace_h"], repair_snapshot_s=snapshot_s,
        audit_checkpoint_records=audit_records, audit_checkpoint_s=audit_s,
        audit_retention_days=audit_days, audit_segment_mib=audit_mib,
        audit_commit_ms=audit_commit_ms, audit_refusals_interval_s=audit_refusals_s,
        operator_tenant=operator, catalog_sync_s=catalog_sync,
        master_passphrase_env=passphrase_env, master_salt_file=salt,
        metrics_host=metrics_host, metrics_port=metrics_port, log_format=log_format,
        log_level=log_level, **bounds, **s3,
        master_key_check=keys.get("master_key_check", ""),  # deployment
    )


def _check_schema(raw: dict[str, Any], p: _Problems) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in raw:
        if name not in _SCHEMA and name != "sites":
            p.add(f"[{name}]", f"unknown section (known: {', '.join([*_SCHEMA, 'sites'])})")
    for name, schema in _SCHEMA.items():
        section = raw.get(name)
        if section is None:
            if name in _REQUIRED_SECTIONS:
                p.add(f"[{name}]", "missing section", fatal=True)
            continue
        if not isinstance(section, dict):
            p.add(f"[{name}]", "must be a table", fatal=True)
            continue
        for key in section:
            if key not in schema:
                p.add(f"[{name}] {key}", f"unknown key (known: {', '.join(schema)})")
        for key, (kind, required) in schema.items():
            if key not in section:
                if required:
                    p.add(f"[{name}] {key}", "missing", fatal=True)
                continue
            value = section[key]
            if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
                want = kind.__name__ if isinstance(kind, type) else "number"
                p.add(f"[{name}] {key}", f"must be a {want}, not {type(value).__name__}",
                      fatal=True)
        out[name] = section
    return out


def _check_writable_dir(path: Path, p: _Problems) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)  # the node's alone (see serve_node)
    except OSError as exc:
        p.add("[node] data_dir", f"cannot create {path}: {exc.strerror}")
        return
    if not os.access(path, os.W_OK | os.X_OK):
        p.add("[node] data_dir", f"directory {path} is not writable")


def _parse_sites(raw: Any, p: _Problems) -> tuple[SiteConfig, ...]:
    if not isinstance(raw, list):
        p.add("[[sites]]", "must be an array of tables")
        return ()
    sites: list[SiteConfig] = []
    for i, site in enumerate(raw):
        where = f"[[sites]] #{i + 1}"
        if not isinstance(site, dict) or set(site) - {"name", "nodes"}:
            p.add(where, "must be a table with keys name, nodes")
            continue
        name, nodes = site.get("name"), site.get("nodes", [])
        if not isinstance(name, str) or not NAME_RE.match(name):
            p.add(where, f"name {name!r} must match {NAME_RE.pattern}")
            continue
        parsed: list[tuple[str, str, int, float]] = []
        roles: list[NodeRole] = []
        for node in nodes if isinstance(nodes, list) else []:
            if (not isinstance(node, dict) or not {"name", "address"} <= set(node)
                    or set(node) - {"name", "address", "weight", "role"}
                    or not isinstance(node["name"], str) or not isinstance(node["address"], str)
                    or not isinstance(node.get("weight", 1.0), (int, float))
                    or node.get("weight", 1.0) <= 0):
                p.add(where, "each node must be {name = \"...\", address = \"HOST:PORT\"} "
                             "with an optional positive weight and role")
                continue
            role = node.get("role", "storage")
            if role not in NODE_ROLES:
                p.add(where, f"node {node['name']}: role {role!r} must be one of "
                             f"{', '.join(NODE_ROLES)}")
                continue
            try:
                host, port = parse_address(node["address"])
                parsed.append((node["name"], host, port, float(node.get("weight", 1.0))))
                roles.append(role)
            except ValueError as exc:
                p.add(where, str(exc))
        sites.append(SiteConfig(name=name, nodes=tuple(parsed), roles=tuple(roles)))
    return tuple(sites)


def _metrics_address(section: dict[str, Any], p: _Problems) -> tuple[str | None, int]:
    if "address" not in section:
        return None, 0
    try:
        return parse_address(section["address"])
    except ValueError as exc:
        p.add("[metrics] address", str(exc))
        return None, 0


_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _s3_section(section: dict[str, Any], p: _Problems) -> dict[str, Any]:
    """[s3]: HTTPS addresses, and plain-HTTP ones only on loopback unless forced (requests
    are signed, but bodies and the objects read back are not encrypted on the way)."""
    out: dict[str, Any] = {}
    force = section.get("plain_http_beyond_loopback", False)
    for name, field_name in (("listen", "s3_https"), ("plain_http", "s3_http")):
        addresses = []
        for raw in section.get(name, []):
            if not isinstance(raw, str):
                p.add(f"[s3] {name}", f"{raw!r} must be a \"HOST:PORT\" string")
                continue
            try:
                host, port = parse_address(raw)
            except ValueError as exc:
                p.add(f"[s3] {name}", str(exc))
                continue
            if name == "plain_http" and not force and not _loopback(host):
                p.add("[s3] plain_http", f"{raw} is not a loopback address: plain HTTP would "
                                         "carry health data unencrypted; use listen (HTTPS), "
                                         "or set plain_http_beyond_loopback = true behind a "
                                         "TLS-terminating proxy")
                continue
            addresses.append((host, port))
        out[field_name] = tuple(addresses)
    region = section.get("region", "us-east-1")
    if not _REGION_RE.match(region):
        p.add("[s3] region", f"{region!r} must match {_REGION_RE.pattern}")
    out["s3_region"] = region
    domain = section.get("domain", "").strip(".").lower()
    if domain and not _DOMAIN_RE.match(domain):
        p.add("[s3] domain", f"{domain!r} must be a DNS name (e.g. s3.example.org)")
    out["s3_domain"] = domain
    expire = float(section.get("multipart_expire_h", 168.0))
    if not 0 < expire <= 24 * 365:
        p.add("[s3] multipart_expire_h", f"{expire:g} must be > 0 and at most 8760")
    out["s3_multipart_expire_h"] = expire
    return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
