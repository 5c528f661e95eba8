"""Entry point of the ``hdsd`` command: the group, global options and error mapping.

Every :class:`HdsdError` that ends a command becomes one line on stderr (``hdsd: error: ...``)
and the exit code of its class (see :mod:`hdsd._errors`); no traceback for anything a user or the
situation caused. A bug still shows its traceback, because hiding it would help nobody.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .._errors import HdsdError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HdsdError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"hdsd: error: {line}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("hdsd: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hdsd")
@click.option("--profile", "profile", envvar="HDSD_PROFILE", type=click.Path(dir_okay=False),
              help="client profile (TOML); default $HDSD_PROFILE or ./hdsd-data/client.toml")
@click.option("--site", "site", default=None, help="talk to a node of this site")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for the node on each request")
@click.pass_context
def main(ctx: click.Context, profile: str | None, site: str | None, timeout: float) -> None:
    """hdsd: storage daemon for health-data hosts, two sites synchronised in real time."""
    ctx.obj = {"profile": profile, "site": site, "timeout": timeout}


def _register() -> None:
    from . import (  # noqa: F401  (commands register on `main`)
        _admin,
        _audit,
        _bench,
        _certs,
        _data,
        _export,
        _layout,
        _profile,
        _repair,
        _s3keys,
        _status,
        _store,
        _tenants,
        _up,
    )


_register()
