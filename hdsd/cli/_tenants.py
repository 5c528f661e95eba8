"""Tenant administration: ``hdsd tenant``, ``hdsd bucket``, ``hdsd hold``.

They use the client profile like every command. Tenants are managed by the *operator*: an
``admin`` certificate of the operator tenant (``[cluster] operator_tenant`` in every node.toml;
``hdsd init`` makes its admin profile ``client.toml`` the operator). Buckets and holds may also
be managed by an ``admin`` of the tenant concerned.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import click
import trio

from .._errors import InvalidRequest, TenantPending
from ..client import AsyncClient
from ..wire import TenantCreated, TenantCreation, TenantRow
from ._data import _run, json_option
from ._main import main
from ._table import print_rows

_ROUND_PAUSE_S = 1.0  # between two confirmation rounds while waiting


def _when(ms: int | None) -> str:
    if not ms:  # None, or 0: a tenant seeded by `hdsd init` / `cert issue` (no creation time)
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _report(reply: Mapping[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        click.echo(json.dumps(reply, sort_keys=True))
        return
    click.echo(line)
    if reply.get("pending"):
        click.echo(f"  not yet on {', '.join(reply['pending'])} (they catch up at their next "
                   "catalog sync)")


def _tenant_bucket(target: str) -> tuple[str, str]:
    tenant, _, bucket = target.partition("/")
    if not tenant or not bucket or "/" in bucket:
        raise InvalidRequest(f"{target!r}: expected TENANT/BUCKET")
    return tenant, bucket


@main.group()
def tenant() -> None:
    """Create, list and shred tenants (operator)."""


def _waiting(reply: TenantCreated | TenantCreation) -> str:
    return "; ".join(f"{n}: {why}" for n, why in reply.get("waiting", {}).items())


async def _until_confirmed(c: AsyncClient, name: str, reply: TenantCreated | TenantCreation,
                           wait: float, progress: bool) -> TenantCreated | TenantCreation:
    """Confirmation rounds until the creation is confirmed, lost (TenantConflict), or *wait*
    seconds have passed (TenantPending naming the nodes it waits for)."""
    deadline = time.monotonic() + wait
    shown = ""
    while reply["state"] != "confirmed":
        line = (f"tenant {name}: creation {reply['creation'][:8]} held by "
                f"{', '.join(reply['acked'])}; waiting for {_waiting(reply)}")
        if progress and line != shown:
            click.echo(line, err=True)
            shown = line
        if time.monotonic() >= deadline:
            raise TenantPending(
                f"tenant {name} is not confirmed after {wait:g} s: creation "
                f"{reply['creation'][:8]} waits for {_waiting(reply)}; nothing can be written "
                f"to it until every node holds it. `hdsd tenant create --resume {name}` goes on "
                f"waiting (its node also retries at each catalog sync); `hdsd tenant abandon "
                f"{name} --confirm {name}` drops it")
        await trio.sleep(_ROUND_PAUSE_S)
        reply = await c.tenant_confirm(name, reply["creation"])
    return reply


@tenant.command("create")
@click.argument("name")
@click.option("--quota", type=click.IntRange(0), default=0, show_default=True,
              help="bytes of current versions the tenant may hold (0: no quota); "
                   "on an existing tenant, sets the quota")
@click.option("--plan", type=click.Choice(["standard", "backup"]), default=None,
              help="where the tenant's data lives, fixed at creation: standard (storage "
                   "nodes, the default) or backup (backup nodes only; both sites need one)")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=60, show_default=True,
              metavar="SECONDS",
              help="how long to wait for every node of both sites to confirm the new keys")
@click.option("--resume", is_flag=True,
              help="wait for the pending creation of NAME (after an interrupted or timed-out "
                   "create) instead of making a new one")
@json_option
@click.pass_context
def tenant_create(ctx: click.Context, name: str, quota: int, plan: str | None, wait_s: float,
                  resume: bool, as_json: bool) -> None:
    """Create tenant NAME with fresh keys (wrapped, to every node of both sites). It accepts
    no request until every node has confirmed holding those keys: the command waits for it
    (--wait) and says where it is pending; exit 12 if not confirmed, or if another creation
    of NAME won."""
    progress = sys.stderr.isatty() and not as_json

    async def go(c: AsyncClient) -> TenantCreated | TenantCreation:
        reply: TenantCreated | TenantCreation = await (
            c.tenant_confirm(name) if resume else c.tenant_create(name, quota, plan or ""))
        if "creation" in reply:  # a creation (not a new quota)
            confirmed = await _until_confirmed(c, name, reply, wait_s, progress)
            confirmed["created"] = reply["created"]
            return confirmed
        return reply

    reply = _run(ctx, go)
    if resume:
        line = f"tenant {name} confirmed (creation {reply['creation'][:8]})"
    else:
        verb = "created" if reply["created"] else "updated"
        line = (f"tenant {name} {verb} (quota {quota or 'none'}, plan "
                f"{reply.get('plan', 'standard')})")
    _report(reply, as_json, line)


@tenant.command("abandon")
@click.argument("name")
@click.option("--confirm", required=True, metavar="NAME", help="repeat the tenant name")
@json_option
@click.pass_context
def tenant_abandon(ctx: click.Context, name: str, confirm: str, as_json: bool) -> None:
    """Abandon the unconfirmed creation of tenant NAME in both sites (every node must answer;
    nothing was ever written under its keys). The name can then be created again. A confirmed
    tenant cannot be abandoned: `hdsd tenant shred` destroys it."""
    if confirm != name:
        raise InvalidRequest(f"--confirm must repeat the tenant name {name!r} exactly")
    reply = _run(ctx, lambda c: c.tenant_abandon(name, confirm=confirm))
    _report(reply, as_json, f"tenant {name}: creation {reply['creation'][:8]} abandoned")


@tenant.command("ls")
@json_option
@click.pass_context
def tenant_ls(ctx: click.Context, as_json: bool) -> None:
    """List tenants: state, quota, usage seen by this site, buckets (with data or created;
    "N+" when a node of the site did not answer)."""
    def line(r: TenantRow) -> str:
        quota = str(r["quota_bytes"]) if r["quota_bytes"] else "-"
        # "3+": a node of the site did not answer, so buckets only it holds are not counted.
        count = f"{r['buckets']}{'+' if r.get('buckets_incomplete') else ''}"
        return (f"{r['tenant']:24} {r['state']:9} {r.get('plan', 'standard'):8} "
                f"{quota:>14} {r['usage_bytes']:>14} {count:>7}  {_when(r['created_ms'])}")

    print_rows(_run(ctx, lambda c: c.tenant_list()), as_json,
               f"{'TENANT':24} {'STATE':9} {'PLAN':8} {'QUOTA':>14} {'USAGE':>14} "
               f"{'BUCKETS':>7}  CREATED", line)


@tenant.command("shred")
@click.argument("name")
@click.option("--confirm", required=True, metavar="NAME", help="repeat the tenant name")
@json_option
@click.pass_context
def tenant_shred(ctx: click.Context, name: str, confirm: str, as_json: bool) -> None:
    """Destroy tenant NAME's keys on every node of both sites (crypto-shredding): all its data
    becomes unreadable, for good. There is no undo."""
    if confirm != name:
        raise InvalidRequest(f"--confirm must repeat the tenant name {name!r} exactly")
    reply = _run(ctx, lambda c: c.tenant_shred(name, confirm=confirm))
    _report(reply, as_json, f"tenant {name} shredded on {', '.join(reply['applied_on'])}")


@main.group()
def bucket() -> None:
    """Create buckets and set their retention lock (admin)."""


def _set_retention(ctx: click.Context, target: str, retention_days: int, as_json: bool) -> None:
    tenant_name, name = _tenant_bucket(target)
    reply = _run(ctx, lambda c: c.bucket_create(tenant_name, name, retention_days))
    _report(reply, as_json, f"bucket {tenant_name}/{name}: retention "
                            f"{reply['retention_days']} days")


@bucket.command("create")
@click.argument("target", metavar="TENANT/BUCKET")
@click.option("--retention-days", type=click.IntRange(0, 36500), default=0, show_default=True,
              help="forbid deleting or overwriting versions younger than this (WORM)")
@json_option
@click.pass_context
def bucket_create(ctx: click.Context, target: str, retention_days: int, as_json: bool) -> None:
    """Create a bucket, or extend its retention (it can never be shortened)."""
    _set_retention(ctx, target, retention_days, as_json)


@bucket.command("extend")
@click.argument("target", metavar="TENANT/BUCKET")
@click.option("--retention-days", type=click.IntRange(0, 36500), required=True)
@json_option
@click.pass_context
def bucket_extend(ctx: click.Context, target: str, retention_days: int, as_json: bool) -> None:
    """Extend a bucket's retention (shortening is refused)."""
    _set_retention(ctx, target, retention_days, as_json)


@bucket.command("ls")
@click.argument("tenant_name", metavar="[TENANT]", required=False, default="")
@json_option
@click.pass_context
def bucket_ls(ctx: click.Context, tenant_name: str, as_json: bool) -> None:
    """List buckets (of TENANT, or every tenant's for the operator) with retention and holds."""
    print_rows(_run(ctx, lambda c: c.bucket_list(tenant_name)), as_json,
               f"{'TENANT/BUCKET':40} {'RETENTION':>9}  {'HOLDS':>5}  CREATED",
               lambda r: f"{r['tenant'] + '/' + r['bucket']:40} {r['retention_days']:>8}d  "
                         f"{len(r['holds']):>5}  {_when(r['created_ms'])}")


@main.group()
def hold() -> None:
    """Set, clear or list legal holds on keys (admin)."""


def _hold(ctx: click.Context, target: str, held: bool, as_json: bool) -> None:
    tenant_name, _, rest = target.partition("/")
    bucket_name, _, key = rest.partition("/")
    if not tenant_name or not bucket_name or not key:
        raise InvalidRequest(f"{target!r}: expected TENANT/BUCKET/KEY")
    reply = _run(ctx, lambda c: c.hold_set(tenant_name, bucket_name, key, held))
    _report(reply, as_json, f"{target}: legal hold {'set' if held else 'cleared'}")


@hold.command("set")
@click.argument("target", metavar="TENANT/BUCKET/KEY")
@json_option
@click.pass_context
def hold_set(ctx: click.Context, target: str, as_json: bool) -> None:
    """Block deletion and overwrite of the key until the hold is cleared."""
    _hold(ctx, target, True, as_json)


@hold.command("clear")
@click.argument("target", metavar="TENANT/BUCKET/KEY")
@json_option
@click.pass_context
def hold_clear(ctx: click.Context, target: str, as_json: bool) -> None:
    """Lift the legal hold on the key."""
    _hold(ctx, target, False, as_json)


@hold.command("ls")
@click.argument("target", metavar="[TENANT[/BUCKET]]", required=False, default="")
@json_option
@click.pass_context
def hold_ls(ctx: click.Context, target: str, as_json: bool) -> None:
    """List keys under legal hold: of TENANT (of one BUCKET), or every tenant's for the
    operator; with who set each hold and when."""
    tenant_name, _, bucket_name = target.partition("/")
    if "/" in bucket_name or (target and not tenant_name) or (target.endswith("/")):
        raise InvalidRequest(f"{target!r}: expected TENANT or TENANT/BUCKET")
    print_rows(_run(ctx, lambda c: c.hold_list(tenant_name, bucket_name)), as_json,
               f"{'SET':20}  {'BY':24}  TENANT/BUCKET/KEY",
               lambda r: f"{_when(r['set_ms']):20}  {r['by']:24}  "
                         f"{r['tenant']}/{r['bucket']}/{r['key']}")


@main.group()
def key() -> None:
    """Master key management (per node, offline)."""


@key.command("rotate-master")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the node's TOML configuration (the node must be stopped)")
@click.option("--new-key-file", type=click.Path(dir_okay=False), default=None,
              help="the new master key (created, mode 0600, if missing: give the same file to "
                   "every node); it then replaces the configured master_key_file")
@click.option("--new-passphrase-env", default=None, metavar="VAR",
              help="passphrase mode: derive the new key from the passphrase in $VAR "
                   "(same salt file); then set the node's passphrase variable to it")
def key_rotate_master(config_path: str, new_key_file: str | None,
                      new_passphrase_env: str | None) -> None:
    """Rewrap every tenant's keys of one node under a new master key, without touching data.

    Refused while the node runs (it takes the store's lock, as `hdsd serve` does). Crash-safe
    and idempotent: if interrupted, run the same command again. The old key file is kept as
    MASTER_KEY_FILE.old-<date> until `hdsd key confirm-rotation`. Rotate every node of both
    sites to the same new key; until then, nodes with different keys refuse each other's
    catalog entries (and `hdsd status` exits 10, naming them)."""
    from pathlib import Path

    from ..catalog import create_master_key, load_master_key
    from ..node import (
        keep_old_key,
        load_master,
        load_node_config,
        master_key_check,
        node_stopped,
        passphrase_master,
        replace_key_file,
        rotate_master,
        set_key_check,
    )

    if (new_key_file is None) == (new_passphrase_env is None):
        raise InvalidRequest("give exactly one of --new-key-file or --new-passphrase-env")
    config = load_node_config(config_path)
    with node_stopped(config):
        old = load_master(config)
        if new_key_file is not None:
            if config.master_key_file is None:
                raise InvalidRequest("this node uses a passphrase; rotate with "
                                     "--new-passphrase-env")
            path = Path(new_key_file)
            if not path.exists():
                create_master_key(path)
            new = load_master_key(path)
        else:
            assert new_passphrase_env is not None
            if config.master_salt_file is None:
                raise InvalidRequest("this node uses a key file; rotate with --new-key-file")
            new = passphrase_master(new_passphrase_env, config.master_salt_file)
        count = rotate_master(config.data_dir, old, new)
        kept = None
        if new_key_file is not None and config.master_key_file is not None and new != old:
            kept = keep_old_key(config.master_key_file)
            # last: a crash before it is re-run safely
            replace_key_file(config.master_key_file, new)
        if config.master_key_check:
            set_key_check(config.path, master_key_check(new, config.cluster_id))
    click.echo(f"node {config.name}: {count} wrapped tenant keys rewrapped under the new "
               "master key")
    if kept is not None:
        click.echo(f"old key kept as {kept}: once every node runs with the new key, "
                   f"hdsd key confirm-rotation --config {config.path}")


@key.command("confirm-rotation")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the node's TOML configuration")
def key_confirm_rotation(config_path: str) -> None:
    """Delete the old master-key files kept by rotate-master, once this node's key opens its
    keyring and catalog (run it after every node of both sites was rotated and restarted)."""
    from ..node import kept_old_keys, load_master, load_node_config, verify_master

    config = load_node_config(config_path)
    if config.master_key_file is None:
        raise InvalidRequest("this node uses a passphrase: no key file is kept")
    verify_master(config, load_master(config))
    kept = kept_old_keys(config.master_key_file)
    for path in kept:
        path.unlink()
    click.echo(f"node {config.name}: the current key opens its keyring and catalog; "
               f"{len(kept)} old key file(s) deleted")
