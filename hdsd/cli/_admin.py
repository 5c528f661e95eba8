"""Operator commands: ``hdsd init``, ``hdsd serve`` (``hdsd cert`` is in :mod:`._certs`)."""

from __future__ import annotations

import secrets
import shutil
import signal
import sys
from pathlib import Path

import click
import trio

from .._errors import ConfigError
from .._groups import single_error
from ..audit import load_or_create_signing_key
from ..node import Node, load_node_config, serve_node
from ..node._config import NAME_RE
from ..node._keyring import (
    KEYRING_FILE,
    Keyring,
    create_master_key,
    load_master_key,
)
from ..node._logging import configure_logging
from ..pipeline import tune_allocator
from ..transport import create_ca, issue_client_cert, issue_node_cert
from ._main import main

_NODE_TOML = """\
# hdsd node {name} (site {site}); start with: hdsd serve --config {node_dir}/node.toml
# Relative paths are relative to this file. Every node of the cluster must have the same
# [cluster] replicas_per_site and [[sites]] (addresses may differ, e.g. behind NAT).

[node]
name = "{name}"
site = "{site}"
{role_line}listen = "{host}:{port}"        # address:port clients and the other nodes connect to
data_dir = "data"               # the log, its index, hints; keep it on a local disk
# segment_mib = 256             # log segment size; each is preallocated (and zero-filled)
# on_corrupt_log = "repair"     # damaged log range at start: set it aside (kept as a file)
#                               # and refetch from the other site; "refuse": stay down

[tls]                           # mutual TLS 1.3; issued by `hdsd init` / `hdsd cert issue`
ca = "../ca/ca.crt"
cert = "{crt}"
key = "{key}"

[keys]
master_key_file = "../master.key"   # 32 bytes, mode 0600: wraps every tenant key; back it up

[cluster]
id = "{cluster_id}"
chunk_size = 1048576            # bytes per chunk (64 KiB .. 4 MiB)
compression_level = 1           # zstd level; chunks that do not shrink are stored raw
inline_max = 16384              # blobs up to this size travel inside the version record
replicas_per_site = 1           # copies of each key in each site
write_policy = "each-site"      # ack once fsynced in every site (RPO 0); or majority, local
on_peer_site_loss = "refuse"    # or "degrade": accept writes alone, keep hints, say so
write_timeout_s = 10            # a write not acknowledged by then is refused (QuorumNotReached)
operator_tenant = "{tenant}"    # admin certificates of this tenant manage tenants (hdsd tenant)
# catalog_sync_s = 5            # how often nodes compare catalogs (tenants, buckets, holds)

# [repair]                      # optional: anti-entropy and scrub
# interval_s = 3600             # Merkle comparison with every peer (0: only `hdsd repair`)
# rate_mib_s = 64               # repair traffic budget, so client writes are not starved
# scrub_interval_h = 168        # re-read and verify every record (0: only `hdsd scrub`)
# scrub_rate_mib_s = 32

# [limits]                      # optional; see configs/two-site-local.toml for each
# max_connections = 1024
# request_timeout_s = 60
# shutdown_grace_s = 30
# max_requests_per_connection = 16
# max_unsent_mib = 8
# max_body_mib_per_connection = 64
# max_requests_in_flight = 512
# min_upload_rate_kib_s = 64
# max_handshakes = 64
# max_handshakes_per_source = 16
# handshake_timeout_s = 5
# max_sessions_per_identity = 32
# max_sessions_per_tenant = 256
# peer_slots = 64
# idle_timeout_s = 300
{sites}"""


_BACKUP_ROLE = """\
role = "backup"                 # as in [[sites]]: holds backup-plan tenants' data only,
                                # serves restores, refuses client writes (WrongRole)
"""


def _make_private(data_dir: Path) -> None:
    """Directories 0700 and files 0600 under a node's data directory, whatever the umask: the
    node refuses a data directory open to others, and serves with umask 077 thereafter."""
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes-per-site", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=7400, show_default=True,
              help="first node's port; the others follow")
@click.option("--ports", default=None, metavar="P1,P2,...",
              help="explicit port of each node, in order (overrides --base-port)")
@click.option("--sites", default="dc1,dc2", show_default=True,
              help="the two site names, comma-separated")
@click.option("--host", default="127.0.0.1", show_default=True, help="address nodes listen on")
@click.option("--tenant", default="default", show_default=True,
              help="tenant of the admin client certificate")
@click.option("--backup-nodes-per-site", type=click.IntRange(0, 16), default=0,
              show_default=True,
              help="backup nodes (SITE-b1, ...) per site, after the storage nodes: they hold "
                   "backup-plan tenants' data only and refuse client writes")
def init(directory: str, nodes_per_site: int, base_port: int, ports: str | None, sites: str,
         host: str, tenant: str, backup_nodes_per_site: int) -> None:
    """Create a ready two-site cluster in DIRECTORY: CA, master key, node configs and
    certificates, and an admin client profile DIRECTORY/client.toml (which lists the storage
    nodes only: clients write through them)."""
    root = Path(directory).resolve()
    site_names = [s.strip() for s in sites.split(",")]
    if len(site_names) != 2 or len(set(site_names)) != 2:
        raise ConfigError("--sites takes exactly two distinct site names, e.g. lyon-est,lyon-sud")
    for name in [*site_names, tenant]:
        if not NAME_RE.match(name):
            raise ConfigError(f"name {name!r} must match {NAME_RE.pattern}")
    if (root / "cluster.toml").exists():
        raise ConfigError(f"{root} already holds a cluster (cluster.toml exists); "
                          "choose another directory")
    root.mkdir(parents=True, exist_ok=True)
    cluster_id = f"hdsd-{secrets.token_hex(3)}"
    create_ca(root / "ca", cluster_id)
    master = root / "master.key"
    create_master_key(master)
    # Both sites must share the tenant's keys (they read each other's sealed chunks): create the
    # keyring once and give every node a copy.
    keyring_template = root / KEYRING_FILE
    Keyring(keyring_template, load_master_key(master)).get_or_create(tenant)

    total = 2 * (nodes_per_site + backup_nodes_per_site)
    if ports is not None:
        try:
            port_list = [int(p) for p in ports.split(",")]
        except ValueError:
            raise ConfigError(f"--ports {ports!r}: expected comma-separated numbers") from None
        if len(port_list) != total or not all(0 < p < 65536 for p in port_list):
            raise ConfigError(f"--ports needs {total} ports from 1 to 65535, one per node")
    else:
        port_list = list(range(base_port, base_port + total))
    next_port = iter(port_list)
    layout: list[tuple[str, list[tuple[str, int]]]] = []
    backups: dict[str, list[tuple[str, int]]] = {}
    for site in site_names:
        nodes = []
        for i in range(1, nodes_per_site + 1):
            nodes.append((f"{site}-n{i}", next(next_port)))
        layout.append((site, nodes))
    for site in site_names:
        backups[site] = [(f"{site}-b{i}", next(next_port))
                         for i in range(1, backup_nodes_per_site + 1)]
    sites_toml = "".join(
        f"\n[[sites]]\nname = {_toml_str(site)}\nnodes = ["
        + ", ".join([*(f'{{ name = {_toml_str(n)}, address = "{host}:{p}" }}'
                       for n, p in nodes),
                     *(f'{{ name = {_toml_str(n)}, address = "{host}:{p}", role = "backup" }}'
                       for n, p in backups[site])])
        + "]\n"
        for site, nodes in layout
    )
    for site, nodes in layout:
        for name, node_port in [*nodes, *backups[site]]:
            is_backup = (name, node_port) in backups[site]
            node_dir = root / name
            node_dir.mkdir(parents=True, exist_ok=True)
            # Data directories are the node's alone whatever the umask (key names and metadata
            # in the indexes hold patient identifiers); the node refuses to start otherwise.
            (node_dir / "data").mkdir(mode=0o700, exist_ok=True)
            crt, key = issue_node_cert(
                root / "ca", node_dir, name=name, site=site,
                hosts=tuple(dict.fromkeys([host, "127.0.0.1", "localhost"])))
            shutil.copy2(keyring_template, node_dir / "data" / KEYRING_FILE)
            # The node's audit signing key, made now so the auditor can pin its verify key
            # from commissioning on (`hdsd audit verify --pubkey audit-keys/<node>.pub`).
            (node_dir / "data" / "audit").mkdir(mode=0o700, exist_ok=True)
            signing = load_or_create_signing_key(node_dir / "data" / "audit")
            _make_private(node_dir / "data")
            (root / "audit-keys").mkdir(exist_ok=True)
            (root / "audit-keys" / f"{name}.pub").write_text(
                bytes(signing.verify_key).hex() + "\n", encoding="ascii")
            (node_dir / "node.toml").write_text(_NODE_TOML.format(
                name=name, site=site, node_dir=node_dir, host=host, port=node_port,
                crt=crt.name, key=key.name, cluster_id=cluster_id, sites=sites_toml,
                tenant=tenant, role_line=_BACKUP_ROLE if is_backup else ""),
                encoding="utf-8")
    keyring_template.unlink()
    crt, key = issue_client_cert(root / "ca", root / "clients", name="admin", tenant=tenant,
                                 role="admin")
    _write_profile(root / "client.toml", cluster_id, tenant,
                   (crt.relative_to(root), key.relative_to(root)), layout, host, backups)
    (root / "cluster.toml").write_text(
        f"# written by hdsd init\nid = {_toml_str(cluster_id)}\nsites = "
        f"[{', '.join(_toml_str(s) for s in site_names)}]\n", encoding="utf-8")
    click.echo(f"cluster {cluster_id} initialised in {root}")
    for site, nodes in layout:
        for name, node_port in [*nodes, *backups[site]]:
            click.echo(f"  {site:10} {name:14} {host}:{node_port}  "
                       f"hdsd serve --config {root / name / 'node.toml'}"
                       + ("  (backup)" if (name, node_port) in backups[site] else ""))
    profile = root / "client.toml"
    click.echo(f"  admin profile: {profile}  (export HDSD_PROFILE={profile})")
    click.echo(f"  audit verify keys: {root / 'audit-keys'}  (give them to your auditor)")


def _write_profile(path: Path, cluster_id: str, tenant: str, cert_key: tuple[Path, Path],
                   layout: list[tuple[str, list[tuple[str, int]]]], host: str,
                   backups: dict[str, list[tuple[str, int]]]) -> None:
    sites = ""
    for site, nodes in layout:
        endpoints = ", ".join(_toml_str(f"{host}:{port}") for _, port in nodes)
        sites += f"\n[sites.{site}]\nendpoints = [{endpoints}]\n"
        if backups.get(site):
            # Backup nodes refuse writes: requests never go there, only repair and scrub.
            sites += "backup_endpoints = [" + ", ".join(
                _toml_str(f"{host}:{port}") for _, port in backups[site]) + "]\n"
    path.write_text(
        f"[client]\ncluster_id = {_toml_str(cluster_id)}\ntenant = {_toml_str(tenant)}\n"
        f'ca = "ca/ca.crt"\ncert = {_toml_str(str(cert_key[0]))}\n'
        f"key = {_toml_str(str(cert_key[1]))}\n"
        f"site = {_toml_str(layout[0][0])}\n{sites}", encoding="utf-8")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the node's TOML configuration")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="overrides [log] level (default info)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="overrides [log] format: key=value text lines or one JSON object per line")
def serve(config_path: str, log_level: str | None, log_format: str | None) -> None:
    """Run a node until SIGTERM/SIGINT (graceful; a second signal forces the stop)."""
    config = load_node_config(config_path)
    configure_logging(log_format or config.log_format, log_level or config.log_level)

    forced = False

    async def run() -> None:
        nonlocal forced
        async with trio.open_nursery() as nursery:
            async def serve_then_stop(task_status: trio.TaskStatus[Node]) -> None:
                await serve_node(config, task_status=task_status)
                nursery.cancel_scope.cancel()  # graceful stop done: stop watching signals

            node: Node = await nursery.start(serve_then_stop)
            # Metrics first: "listening on" is the last start-up line (scripts wait for it).
            if node.metrics_port is not None:
                click.echo(f"hdsd: metrics on http://{config.metrics_host}:{node.metrics_port}"
                           "/metrics (/healthz, /readyz)", err=True)
            click.echo(f"hdsd: node {config.name} (site {config.site}) listening on "
                       f"{config.host}:{node.port}", err=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    if node.stopping:
                        forced = True
                        click.echo("hdsd: second signal: stopping now", err=True)
                        nursery.cancel_scope.cancel()
                        return
                    click.echo("hdsd: stopping: finishing in-flight requests "
                               "(signal again to stop now)", err=True)
                    node.shutdown()

    # Fewer page faults per fresh 1 MiB chunk buffer: measured 2x on the seal step.
    tune_allocator()
    with single_error():  # a typed error from inside the nursery: one line, its exit code
        trio.run(run)
    if forced:
        sys.exit(1)
    click.echo(f"hdsd: node {config.name} stopped", err=True)
