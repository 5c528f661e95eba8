"""Operator commands: ``hdsd init``, ``hdsd serve``, ``hdsd cert issue``."""

from __future__ import annotations

import secrets
import shutil
import signal
import sys
from pathlib import Path

import click
import trio

from .._errors import ConfigError, TenantShredded
from .._groups import single_error
from ..audit import load_or_create_signing_key
from ..catalog import CATALOG_FILE, Catalog, tenant_state_in_catalog
from ..catalog._model import CONFIRMED
from ..node import Node, load_node_config, serve_node
from ..node._config import NAME_RE
from ..node._keyring import (
    KEYRING_FILE,
    Keyring,
    create_master_key,
    ensure_tenant,
    load_master_key,
)
from ..node._logging import configure_logging
from ..node._tenancy import seed_entry
from ..pipeline import tune_allocator
from ..transport import ROLES, create_ca, issue_client_cert, issue_node_cert
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

# [limits]                      # optional
# max_connections = 1024
# request_timeout_s = 60
# shutdown_grace_s = 30
{sites}"""


_BACKUP_ROLE = """\
role = "backup"                 # as in [[sites]]: holds backup-plan tenants' data only,
                                # serves restores, refuses client writes (WrongRole)
"""


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
    template = Keyring(keyring_template, load_master_key(master))
    operator_keys = template.get_or_create(tenant)
    operator_wrapped = template.wrapped(tenant)
    assert operator_wrapped is not None
    # The operator tenant enters every node's catalog already *confirmed*: init writes every
    # node, offline, so every node holds this very creation before any of them serves.
    operator_entry = seed_entry(tenant, operator_wrapped, operator_keys, state=CONFIRMED)

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
            (node_dir / "data").mkdir(parents=True, exist_ok=True)
            crt, key = issue_node_cert(
                root / "ca", node_dir, name=name, site=site,
                hosts=tuple(dict.fromkeys([host, "127.0.0.1", "localhost"])))
            shutil.copy2(keyring_template, node_dir / "data" / KEYRING_FILE)
            catalog = Catalog(node_dir / "data" / CATALOG_FILE)
            try:
                catalog.apply([operator_entry])
            finally:
                catalog.close()
            # The node's audit signing key, made now so the auditor can pin its verify key
            # from commissioning on (`hdsd audit verify --pubkey audit-keys/<node>.pub`).
            (node_dir / "data" / "audit").mkdir(exist_ok=True)
            signing = load_or_create_signing_key(node_dir / "data" / "audit")
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


@main.group()
def cert() -> None:
    """Issue certificates signed by the cluster CA."""


@cert.command("issue")
@click.option("--client", "client_name", required=True, help="client name (certificate subject)")
@click.option("--tenant", required=True, help="tenant the client belongs to")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--cluster-dir", type=click.Path(file_okay=False, exists=True), default="hdsd-data",
              show_default=True, help="directory written by hdsd init")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="where to write NAME.crt/NAME.key (default CLUSTER_DIR/clients)")
@click.option("--force", is_flag=True,
              help="replace an existing client's key and profile, or issue for a shredded "
                   "tenant (whose requests every node refuses)")
def cert_issue(client_name: str, tenant: str, role: str, cluster_dir: str, out: str | None,
               force: bool) -> None:
    """Issue a client certificate (and a profile next to it) for TENANT with ROLE."""
    root = Path(cluster_dir).resolve()
    out_dir = Path(out).resolve() if out else root / "clients"
    keyrings = sorted(root.glob(f"*/data/{KEYRING_FILE}"))
    if not keyrings:
        raise ConfigError(f"{root} holds no node data directories (was it written by hdsd init?)")
    states = {tenant_state_in_catalog(k.parent / CATALOG_FILE, tenant) for k in keyrings}
    if "shredded" in states and not force:
        raise TenantShredded(f"tenant {tenant} was crypto-shredded: every node refuses its "
                             "requests; nothing issued (--force to issue anyway)")
    # Overwriting would silently lock out whoever holds the current key (and the profile may
    # have been edited): replacing a client is an explicit act.
    existing = [p for p in (out_dir / f"{client_name}.toml",
                            *sorted(out_dir.glob(f"client-{client_name}@*.crt")),
                            *sorted(out_dir.glob(f"client-{client_name}@*.key"))) if p.exists()]
    if existing and not force:
        raise ConfigError(f"client {client_name} already exists ({existing[0]}); nothing "
                          "issued (choose another --client, or --force to replace it)")
    # A tenant made by `hdsd tenant create` already has its keys in the nodes' catalog.
    # New keys are a keyring *seed*: every node imports it as one pending creation (its id
    # derives from the keys), and the tenant serves nothing until every node of both sites has
    # confirmed it — which its first write does when every node answers (or any node's next
    # catalog sync), exactly as for `hdsd tenant create`.
    if states == {None} and \
            ensure_tenant(keyrings, load_master_key(root / "master.key"), tenant):
        click.echo(f"tenant {tenant}: keys created in {len(keyrings)} node keyrings (confirmed "
                   "by every node at its first write)")
    crt, key = issue_client_cert(root / "ca", out_dir, name=client_name, tenant=tenant, role=role)
    profile = out_dir / f"{client_name}.toml"
    admin = root / "client.toml"
    if admin.is_file():
        text = admin.read_text(encoding="utf-8")
        lines = []
        for line in text.splitlines():
            if line.startswith("tenant ="):
                line = f"tenant = {_toml_str(tenant)}"
            elif line.startswith("cert ="):
                line = f"cert = {_toml_str(str(crt))}"
            elif line.startswith("key ="):
                line = f"key = {_toml_str(str(key))}"
            elif line.startswith("ca ="):
                line = f"ca = {_toml_str(str(root / 'ca' / 'ca.crt'))}"
            lines.append(line)
        profile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo(f"issued {crt} and {key} (tenant {tenant}, role {role})")
    if profile.exists():
        click.echo(f"profile: {profile}")


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
