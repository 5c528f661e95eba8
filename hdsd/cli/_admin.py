"""Operator commands: ``hdsd init``, ``hdsd serve``, ``hdsd cert issue``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import click
import trio
from click.core import ParameterSource

from .._errors import ConfigError, TenantShredded
from .._groups import single_error
from ..transport import CLIENT_VALIDITY_DAYS, ROLES, issue_client_cert, read_certificate
from ._main import main

# The node's packages (node, catalog, pipeline: with the S3 gateway, metrics and the store,
# most of a second of start-up) are imported by the commands that use them, not by every
# `hdsd` command: a client command never needs them (tests/cli/test_startup.py).
if TYPE_CHECKING:
    from ..node import ClusterSpec


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="cluster spec (TOML: sites, nodes, addresses, roles; see "
                   "configs/cluster-spec.example.toml) instead of the flags below")
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
@click.option("--archive", is_flag=True, help="also write DIRECTORY/NODE.tar per node")
@click.option("--prefix", default=None, metavar="/etc/hdsd",
              help="install layout: node.toml paths absolute under PREFIX (configuration) and "
                   "--state-dir (data); the bundle mirrors the file system (tar -C / -xf)")
@click.option("--state-dir", default=None, metavar="/var/lib/hdsd",
              help="data directory with --prefix (default /var/lib/hdsd)")
@click.pass_context
def init(ctx: click.Context, directory: str, spec_file: str | None, nodes_per_site: int,
         base_port: int, ports: str | None, sites: str, host: str, tenant: str,
         backup_nodes_per_site: int, archive: bool = False, prefix: str | None = None,
         state_dir: str | None = None) -> None:
    """Create a cluster in DIRECTORY: the CA, the master key, one self-contained bundle per
    node (DIRECTORY/NODE: node.toml, certificate, CA certificate, its master-key file, data/),
    and an admin client profile DIRECTORY/client.toml listing every node of both sites. The CA
    key stays in DIRECTORY/ca. The layout comes from --spec FILE, or from the flags."""
    from ..node import load_spec, write_cluster

    root = Path(directory).resolve()
    if spec_file is not None:
        flags = [f"--{name.replace('_', '-')}" for name in (
            "nodes_per_site", "base_port", "ports", "sites", "host", "tenant",
            "backup_nodes_per_site")
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
        if flags:
            raise ConfigError(f"--spec describes the whole cluster; drop {', '.join(flags)}")
        spec = load_spec(Path(spec_file))
    else:
        spec = _spec_from_flags(nodes_per_site, base_port, ports, sites, host, tenant,
                                backup_nodes_per_site)
    if state_dir is not None and prefix is None:
        raise ConfigError("--state-dir goes with --prefix")
    bundles = write_cluster(spec, root, archive=archive,
                            prefix=PurePosixPath(prefix) if prefix else None,
                            state_dir=PurePosixPath(state_dir) if state_dir else None)
    click.echo(f"cluster {spec.cluster_id} initialised in {root} "
               f"(replicas_per_site = {spec.replicas_per_site})")
    for b in bundles:
        where = b.archive or b.directory
        click.echo(f"  {b.node.site:10} {b.node.name:14} {b.node.address:22} bundle {where}"
                   + ("  (backup)" if b.node.role == "backup" else ""))
    click.echo(f"  start a node: hdsd serve --config "
               f"{(bundles[0].config if prefix is None else Path(prefix) / 'node.toml')}")
    profile = root / "client.toml"
    click.echo(f"  admin profile: {profile}  (export HDSD_PROFILE={profile})")
    click.echo(f"  audit verify keys: {root / 'audit-keys'}  (give them to your auditor)")
    click.echo(f"  keep {root / 'ca' / 'ca.key'} and {root / 'master.key'} here, offline: "
               "no bundle holds the CA key")


def _spec_from_flags(nodes_per_site: int, base_port: int, ports: str | None, sites: str,
                     host: str, tenant: str, backup_nodes_per_site: int) -> ClusterSpec:
    from ..node import NAME_RE, spec_from_flags

    site_names = [s.strip() for s in sites.split(",")]
    if len(site_names) != 2 or len(set(site_names)) != 2:
        raise ConfigError("--sites takes exactly two distinct site names, e.g. lyon-est,lyon-sud")
    for name in [*site_names, tenant]:
        if not NAME_RE.match(name):
            raise ConfigError(f"name {name!r} must match {NAME_RE.pattern}")
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
    return spec_from_flags(sites=(site_names[0], site_names[1]), nodes_per_site=nodes_per_site,
                           backup_nodes_per_site=backup_nodes_per_site, ports=port_list,
                           host=host, tenant=tenant)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@main.group()
def cert() -> None:
    """Issue, renew, revoke and list certificates of the cluster CA."""


@cert.command("issue")
@click.option("--client", "client_name", required=True, help="client name (certificate subject)")
@click.option("--tenant", required=True, help="tenant the client belongs to")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--cluster-dir", type=click.Path(file_okay=False, exists=True), default="hdsd-data",
              show_default=True, help="directory written by hdsd init")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="where to write NAME.crt/NAME.key (default CLUSTER_DIR/clients)")
@click.option("--force", is_flag=True,
              help="replace an existing client's key and profile (its previous certificates "
                   "are revoked, unless --keep-previous), or issue for a shredded tenant "
                   "(whose requests every node refuses)")
@click.option("--days", type=click.IntRange(1, 730), default=CLIENT_VALIDITY_DAYS,
              show_default=True, help="lifetime of the certificate")
@click.option("--keep-previous", is_flag=True,
              help="with --force: leave the client's previous certificates valid until they "
                   "expire (default: revoke them once the new one is written)")
@click.pass_context
def cert_issue(ctx: click.Context, client_name: str, tenant: str, role: str, cluster_dir: str,
               out: str | None, force: bool, days: int, keep_previous: bool) -> None:
    """Issue a client certificate (and a profile next to it) for TENANT with ROLE.

    Replacing an existing client needs --force (or `hdsd cert renew`); its previous
    certificates are then revoked through the cluster once the new one is written, unless
    --keep-previous (see :mod:`._certs`)."""
    from ..catalog import CATALOG_FILE, tenant_state_in_catalog
    from ._certs import client_records, replace_previous  # (it imports this module)

    root = Path(cluster_dir).resolve()
    out_dir = Path(out).resolve() if out else root / "clients"
    keyrings = _bundle_keyrings(root)
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
    if states == {None} and (message := _provision_tenant(root, keyrings, tenant)):
        click.echo(message)
    previous = client_records(root, client_name, tenant)
    crt, key = issue_client_cert(root / "ca", out_dir, name=client_name, tenant=tenant, role=role,
                                 days=days)
    profile = out_dir / f"{client_name}.toml"
    _write_profile(root, profile, tenant, crt, key)
    new = read_certificate(crt.read_bytes())
    click.echo(f"issued {crt} and {key} (tenant {tenant}, role {role}, serial {new.serial}, "
               f"valid until {new.not_after:%Y-%m-%d})")
    if profile.exists():
        click.echo(f"profile: {profile}")
    replace_previous(ctx, root, previous, new, keep_previous)


# --- cert issue helpers (deployment): the cluster's layout, and where a tenant's keys go -------


def _bundle_keyrings(root: Path) -> list[Path]:
    """The keyring seed files of the bundles under *root* (relative or --prefix layout)."""
    from ..catalog import KEYRING_FILE

    return sorted(root.glob(f"*/**/{KEYRING_FILE}"))


def _provision_tenant(root: Path, keyrings: list[Path], tenant: str) -> str:
    """Make *tenant*'s keys known to the cluster; a line to print ('' if nothing was done).

    Once the bundles are deployed their copies under *root* are stale: a key written there
    never reaches the machines. So the running cluster is asked first (its catalog is the
    truth, and a tenant created there reaches every node); only when no node answers — the
    cluster is not started yet — are the bundles' keyring seeds written, to ship with them.
    """
    from ..catalog import ensure_tenant, load_master_key

    created = _create_in_cluster(root / "client.toml", tenant)
    if created is not None:
        return f"tenant {tenant}: keys created in the cluster's catalog" if created else ""
    if not (root / "master.key").is_file():
        raise ConfigError("no node answers and this cluster uses a master passphrase: start "
                          f"the cluster, then run `hdsd tenant create {tenant}`")
    if ensure_tenant(keyrings, load_master_key(root / "master.key"), tenant):
        return (f"tenant {tenant}: no node answers; keys created in {len(keyrings)} bundle "
                "keyrings (ship the bundles, or start the cluster and use hdsd tenant create)")
    return ""


def _create_in_cluster(admin_profile: Path, tenant: str) -> bool | None:
    """True: created through the cluster; False: it already knew the tenant; None: no node
    answered (or there is no admin profile)."""
    from .._errors import HdsdError, Unavailable
    from ..client import AsyncClient, load_profile

    if not admin_profile.is_file():
        return None

    async def create(site: str) -> bool:
        async with AsyncClient(admin_profile, site=site, timeout=5.0, retries=0) as admin:
            if any(t.get("name") == tenant for t in await admin.tenant_list()):
                return False
            await admin.tenant_create(tenant)
            return True

    for site in load_profile(admin_profile).sites:  # either site will do: the catalog is one
        try:
            return trio.run(create, site)
        except Unavailable:
            continue
        except HdsdError as exc:
            raise ConfigError(f"creating tenant {tenant} through the cluster failed: "
                              f"{exc}") from None
    return None


def _write_client_profile(root: Path, profile: Path, tenant: str, crt: Path, key: Path) -> bool:
    """A profile listing every node of every site, from the spec ``hdsd init`` kept (False if
    there is none: a directory written before specs)."""
    from ..node import SPEC_FILE, load_spec, write_profile

    if not (root / SPEC_FILE).is_file():
        return False
    spec = load_spec(root / SPEC_FILE)
    write_profile(profile, spec, tenant=tenant, ca=root / "ca" / "ca.crt", cert=crt, key=key)
    return True


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the node's TOML configuration")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="overrides [log] level (default info)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="overrides [log] format: key=value text lines or one JSON object per line")
def serve(config_path: str, log_level: str | None, log_format: str | None) -> None:
    """Run a node until SIGTERM/SIGINT (graceful; a second signal forces the stop)."""
    from ..node import Node, configure_logging, load_node_config, serve_node
    from ..pipeline import tune_allocator

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
            for endpoint in node.s3_endpoints:
                click.echo(f"hdsd: s3 gateway on {endpoint.url}", err=True)
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


def _write_profile(root: Path, profile: Path, tenant: str, crt: Path, key: Path) -> bool:
    """As ``cert issue`` writes it: from the cluster's spec, else from the admin profile."""
    if _write_client_profile(root, profile, tenant, crt, key):
        return True
    admin = root / "client.toml"
    if not admin.is_file():
        return False
    lines = []
    for line in admin.read_text(encoding="utf-8").splitlines():
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
    return True
