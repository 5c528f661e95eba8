"""``hdsd store migrate``: rewrite a node's store of an older format, offline."""

from __future__ import annotations

import click

from ._main import main


@main.group()
def store() -> None:
    """Offline operations on a node's log-structured store (the node stopped)."""


@store.command("migrate")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the node's TOML configuration")
def store_migrate(config_path: str) -> None:
    """Rewrite a store written by an older hdsd (log format 1: bucket names, key names and
    metadata in clear) with its names sealed under each tenant's key, and the catalog's
    retention locks and legal holds with theirs (a node also does the catalog at start).
    Offline (refused while the node runs), crash-safe and idempotent: run it again after an
    interruption. Records of shredded tenants are dropped. Run it on every node of both
    sites."""
    from ..catalog import CATALOG_FILE, Catalog
    from ..node import load_node_config, offline_sealing
    from ..store import migrate_store

    config = load_node_config(config_path)
    sealing = offline_sealing(config)
    report = migrate_store(config.data_dir / "store", sealing,
                           segment_bytes=config.segment_mib << 20)
    if not report.migrated:
        click.echo(f"node {config.name}: the store already has names sealed; nothing to do")
    else:
        click.echo(f"node {config.name}: store migrated, names sealed ({report.chunks} "
                   f"chunks, {report.versions} versions from {report.segments_read} segments; "
                   f"{report.dropped} records of shredded tenants dropped)")
    if not (config.data_dir / CATALOG_FILE).exists():
        return
    catalog = Catalog(config.data_dir / CATALOG_FILE)
    try:
        if not catalog.clear_names():
            click.echo(f"node {config.name}: the catalog already has names sealed; nothing "
                       "to do")
            return
        done = catalog.seal_clear_names(sealing.seal_for)
    finally:
        catalog.close()
    click.echo(f"node {config.name}: catalog migrated, names sealed ({done.buckets} retention "
               f"locks, {done.holds} legal holds; {done.dropped} entries of shredded tenants "
               "dropped)")
