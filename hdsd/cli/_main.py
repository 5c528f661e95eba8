"""Entry point of the ``hdsd`` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="hdsd")
def main() -> None:
    """hdsd: storage daemon for health-data hosts, two sites synchronised in real time."""
