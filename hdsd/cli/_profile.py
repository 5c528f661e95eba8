"""``hdsd profile refresh``: rewrite a client profile's endpoints from the cluster's layout.

The node the profile reaches answers ``status`` for every node of the layout (its address,
site and role); the profile's ``[sites.*]`` then list exactly those nodes — storage nodes as
``endpoints``, backup nodes as ``backup_endpoints`` — and its ``[client]`` table is kept.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from .._atomic import atomic_write
from .._errors import ConfigError
from ..client import load_profile
from ._data import _run
from ._main import main


@main.group()
def profile() -> None:
    """Client profiles."""


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_profile(client: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    """A profile's text: its ``[client]`` table as is, then every site's nodes from
    *nodes* (``status`` entries: node, site, address, role), in layout order."""
    lines = ["[client]", *(f"{k} = {_q(str(v))}" for k, v in client.items())]
    sites: dict[str, dict[str, list[str]]] = {}
    for n in nodes:
        kind = "backup_endpoints" if n.get("role") == "backup" else "endpoints"
        sites.setdefault(str(n["site"]), {}).setdefault(kind, []).append(str(n["address"]))
    for site, kinds in sites.items():
        if not kinds.get("endpoints"):
            raise ConfigError(f"the cluster reports no storage node in site {site}")
        lines += ["", f"[sites.{site}]"]
        for kind in ("endpoints", "backup_endpoints"):
            if kinds.get(kind):
                lines.append(f"{kind} = [" + ", ".join(_q(a) for a in kinds[kind]) + "]")
    return "\n".join(lines) + "\n"


@profile.command("refresh")
@click.option("--dry-run", is_flag=True, help="print the new profile instead of writing it")
@click.pass_context
def profile_refresh(ctx: click.Context, dry_run: bool) -> None:
    """Ask the cluster for its layout (through `status`) and rewrite the profile's endpoints
    (every node of every site); the identity and default site are kept."""
    path = load_profile(ctx.find_root().obj["profile"]).path
    st = _run(ctx, lambda c: c.status())
    nodes = st.get("nodes") or []
    # A node leaving the layout (a migration in progress) serves only until it is done.
    target = (st.get("layout_record") or {}).get("nodes")
    if target:
        nodes = [n for n in nodes if n.get("node") in target]
    if not nodes:
        raise ConfigError("the node answered without a layout (no `nodes` in its status)")
    client = tomllib.loads(path.read_text(encoding="utf-8"))["client"]
    if client.get("site") not in {n.get("site") for n in nodes}:
        client["site"] = nodes[0]["site"]
    text = render_profile(client, nodes)
    if dry_run:
        click.echo(text, nl=False)
        return
    atomic_write(Path(path), text.encode(), 0o600)
    count = sum(1 for _ in nodes)
    click.echo(f"{path}: {count} nodes in {len({n['site'] for n in nodes})} sites "
               f"(layout {st.get('layout', '?')})")
