"""S3 access keys: ``hdsd s3 key create TENANT --role ROLE``, ``hdsd s3 key ls [TENANT]``,
``hdsd s3 key revoke ACCESS_KEY_ID``.

The node makes the key and its secret, stores the secret only wrapped under the master key in
the replicated catalog, and sends it back this once: ``create`` prints it and nothing keeps it
in clear. ``--json`` adds what an S3 client needs besides: the S3 endpoints of each site and
the CA bundle to trust (the gateway serves HTTPS with the node's certificate from the cluster
CA). Endpoints come from the profile's ``[sites.NAME] s3_endpoints`` if it lists them, else
from the ``[s3]`` section of the node configurations under ``--cluster-dir`` (``listen``:
HTTPS; ``plain_http``: HTTP).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click
import trio

from .._errors import PermissionDenied
from ..client import AsyncClient, Profile
from ..cluster import parse_address
from ..wire import S3KeyCreated, S3KeyRevoked, S3KeyRow
from ._data import json_option
from ._main import main
from ._table import print_rows

_CLUSTER_DIR = click.option(
    "--cluster-dir", type=click.Path(file_okay=False), default="hdsd-data", show_default=True,
    help="directory written by hdsd init (its client.toml is the default profile, its node "
         "configurations name the S3 endpoints)")
_ROLES = ("admin", "writer", "reader", "auditor")


@main.group("s3")
def s3() -> None:
    """The S3 gateway: access keys for S3 clients (restic, rclone, the AWS CLI...)."""


@s3.group("key")
def s3_key() -> None:
    """S3 access keys: each belongs to a tenant and acts with one role."""


def _profile_path(ctx: click.Context, root: Path) -> str | None:
    profile: str | None = ctx.find_root().obj["profile"]
    if profile is None and (root / "client.toml").is_file():
        profile = str(root / "client.toml")
    return profile


def _run(ctx: click.Context, root: Path, fn: Any) -> Any:
    obj = ctx.find_root().obj
    profile = _profile_path(ctx, root)

    async def go() -> Any:
        async with AsyncClient(profile, site=obj["site"], timeout=obj["timeout"]) as c:
            return await fn(c)

    return trio.run(go)


def _listen_urls(value: object, advertised_host: str, scheme: str = "https") -> list[str]:
    items = value if isinstance(value, list) else [value]
    urls = []
    for item in items:
        if not isinstance(item, str) or not item:
            continue
        if item.startswith(("http://", "https://")):
            urls.append(item.rstrip("/"))
            continue
        host, port = parse_address(item)
        if host in ("0.0.0.0", "::", ""):  # a wildcard: the node's own address
            host = advertised_host
        urls.append(f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}")
    return urls


def s3_endpoints(profile: Profile, root: Path) -> dict[str, list[str]]:
    """Site → S3 URLs: the profile's ``s3_endpoints`` per site, else the ``[s3] listen`` of
    the node configurations found under *root* (``hdsd init``'s layout)."""
    try:
        doc = tomllib.loads(profile.path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        doc = {}
    out: dict[str, list[str]] = {}
    for site, table in (doc.get("sites") or {}).items():
        if isinstance(table, dict) and table.get("s3_endpoints"):
            out[site] = _listen_urls(table["s3_endpoints"], "")
    if out or not root.is_dir():
        return out
    for config in sorted(root.glob("**/node.toml")):
        try:
            node = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        section = node.get("s3")
        info = node.get("node") or {}
        if not isinstance(section, dict) or "site" not in info:
            continue
        host = parse_address(str(info.get("listen", "127.0.0.1:0")))[0]
        urls = out.setdefault(str(info["site"]), [])
        urls.extend(_listen_urls(section.get("listen", []), host))  # HTTPS
        urls.extend(_listen_urls(section.get("plain_http", []), host, "http"))
    return out


@s3_key.command("create")
@click.argument("tenant")
@click.option("--role", type=click.Choice(_ROLES), default="writer", show_default=True,
              help="what the key may do (the certificate roles)")
@_CLUSTER_DIR
@json_option
@click.pass_context
def s3_key_create(ctx: click.Context, tenant: str, role: str, cluster_dir: str,
                  as_json: bool) -> None:
    """Create an S3 access key for TENANT. The secret is printed this once: the cluster keeps
    it only wrapped under the master key."""
    root = Path(cluster_dir).resolve()

    async def go(c: AsyncClient) -> tuple[S3KeyCreated, Profile]:
        return await c.s3_key_create(tenant, role), c.profile

    reply, profile = _run(ctx, root, go)
    if as_json:
        click.echo(json.dumps({
            "access_key_id": reply["access_key_id"],
            "secret_access_key": reply["secret_access_key"],
            "tenant": reply["tenant"], "role": reply["role"],
            "endpoints": s3_endpoints(profile, root), "ca_bundle": str(profile.ca),
            "applied_on": reply["applied_on"], "pending": reply["pending"]}, sort_keys=True))
        return
    click.echo(f"access_key_id:     {reply['access_key_id']}")
    click.echo(f"secret_access_key: {reply['secret_access_key']}")
    click.echo(f"tenant {reply['tenant']}, role {reply['role']}; the secret is shown this once "
               "(hdsd keeps it only wrapped): store it now")
    if reply.get("pending"):
        click.echo(f"not yet on {', '.join(reply['pending'])} (they learn it at their next "
                   "catalog sync)")


@s3_key.command("ls")
@click.argument("tenant", required=False)
@_CLUSTER_DIR
@json_option
@click.pass_context
def s3_key_ls(ctx: click.Context, tenant: str | None, cluster_dir: str, as_json: bool) -> None:
    """S3 access keys (of TENANT, else every tenant's for the operator, else your tenant's),
    revoked ones included; never a secret."""
    root = Path(cluster_dir).resolve()

    async def go(c: AsyncClient) -> list[S3KeyRow]:
        if tenant is not None:
            return await c.s3_keys(tenant)
        try:
            return await c.s3_keys("")
        except PermissionDenied:  # a tenant's admin: its own tenant's keys, then
            return await c.s3_keys(c.profile.tenant)

    rows: list[S3KeyRow] = _run(ctx, root, go)
    print_rows(rows, as_json, f"{'ACCESS KEY ID':24} {'TENANT':16} {'ROLE':8} {'STATE':8} BY",
               lambda row: f"{row['access_key_id']:24} {row['tenant']:16} {row['role']:8} "
                           f"{row['state']:8} {row['revoked_by'] or row['by']}")


@s3_key.command("revoke")
@click.argument("access_key_id")
@_CLUSTER_DIR
@json_option
@click.pass_context
def s3_key_revoke(ctx: click.Context, access_key_id: str, cluster_dir: str,
                  as_json: bool) -> None:
    """Revoke an S3 access key on every node, for good: its next request is refused."""
    root = Path(cluster_dir).resolve()

    async def go(c: AsyncClient) -> S3KeyRevoked:
        return await c.s3_key_revoke(access_key_id)

    reply = _run(ctx, root, go)
    if as_json:
        click.echo(json.dumps(reply, sort_keys=True))
        return
    state = "already revoked" if reply["already_revoked"] else "revoked"
    click.echo(f"{state} {reply['access_key_id']} (tenant {reply['tenant']}) on "
               f"{', '.join(reply['applied_on'])}")
    if reply.get("pending"):
        click.echo(f"  not yet on {', '.join(reply['pending'])} (they learn it at their next "
                   "catalog sync, before serving if they were down)")
