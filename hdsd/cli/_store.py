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
    metadata in clear) with its names sealed under each tenant's key. Offline (refused while
    the node runs), crash-safe and idempotent: run it again after an interruption. Records of
    shredded tenants are dropped. Run it on every node of both sites."""
    from ..node import load_node_config, offline_sealing
    from ..store import migrate_store

    config = load_node_config(config_path)
    report = migrate_store(config.data_dir / "store", offline_sealing(config),
                           segment_bytes=config.segment_mib << 20)
    if not report.migrated:
        click.echo(f"node {config.name}: the store already has names sealed; nothing to do")
        return
    click.echo(f"node {config.name}: store migrated, names sealed ({report.chunks} chunks, "
               f"{report.versions} versions from {report.segments_read} segments; "
               f"{report.dropped} records of shredded tenants dropped)")
