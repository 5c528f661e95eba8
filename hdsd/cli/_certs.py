"""Certificates: ``hdsd cert renew``, ``revoke`` and ``ls`` (``issue`` is in :mod:`._admin`
and uses :func:`client_records` and :func:`replace_previous` from here).

Two sources of truth, each where it must be:

* **issued** — the CA directory (``CLUSTER_DIR/ca/issued/<serial>.crt``, a copy of every
  certificate the CA signs). Issuing happens where the CA key is, possibly offline; the cluster
  never needs to know a certificate before it is presented (TLS checks the CA's signature).
* **revoked** — the replicated catalog, because every node must enforce it at every handshake.
  A revocation is sent to a node with the operator's profile (``--profile``, else
  ``CLUSTER_DIR/client.toml``) or a tenant admin's, and carries the certificate itself when the
  CA records have it, so a tenant admin's revocation is checked against the real certificate.

Re-issuing a client name (``issue`` or ``renew``) revokes the certificates that name had, once
the new one is written, unless ``--keep-previous``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from .._errors import (
    ConfigError,
    HdsdError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from ..client import AsyncClient
from ..transport import (
    CLIENT_VALIDITY_DAYS,
    IssuedCert,
    issue_client_cert,
    issue_node_cert,
    issued_certificates,
    read_certificate,
)
from ..wire import CertRevoked, CertRow
from ._admin import _write_profile, cert
from ._data import json_option
from ._table import print_rows

T = TypeVar("T")

_CLUSTER_DIR = click.option(
    "--cluster-dir", type=click.Path(file_okay=False), default="hdsd-data", show_default=True,
    help="directory written by hdsd init (its ca/ records what was issued)")
_KEEP = click.option(
    "--keep-previous", is_flag=True,
    help="leave the name's previous certificates valid until they expire (default: revoke "
         "them once the new one is written)")


# -- helpers -----------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _records(root: Path) -> list[IssuedCert]:
    return issued_certificates(root / "ca")


def _of_client(records: list[IssuedCert], name: str, tenant: str | None) -> list[IssuedCert]:
    return [r for r in records if r.identity.kind == "client" and r.identity.name == name
            and (tenant is None or r.identity.tenant == tenant)]


def _of_node(records: list[IssuedCert], name: str) -> list[IssuedCert]:
    return [r for r in records if r.identity.kind == "node" and r.identity.name == name]


def _alive(records: list[IssuedCert]) -> list[IssuedCert]:
    now = _now()
    return [r for r in records if r.not_after > now]


def _describe(c: IssuedCert) -> str:
    i = c.identity
    if i.kind == "node":
        return f"{c.serial} (node {i.name} of site {i.site})"
    return f"{c.serial} (client {i.name} of tenant {i.tenant}, {i.role})"


def _cluster(ctx: click.Context, root: Path, fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run *fn* with a client of the profile given (``--profile``/``$HDSD_PROFILE``), else the
    operator profile ``hdsd init`` wrote in the cluster directory."""
    obj = ctx.find_root().obj
    profile = obj["profile"]
    if profile is None and (root / "client.toml").is_file():
        profile = str(root / "client.toml")

    async def go() -> T:
        async with AsyncClient(profile, site=obj["site"], timeout=obj["timeout"]) as c:
            return await fn(c)

    return trio.run(go)


def _revoke_all(ctx: click.Context, root: Path, certs: list[IssuedCert], reason: str
                ) -> list[CertRevoked]:
    async def go(c: AsyncClient) -> list[CertRevoked]:
        return [await c.cert_revoke(certificate=x.der, reason=reason) for x in certs]

    return _cluster(ctx, root, go)


def _report_revoked(replies: list[CertRevoked], as_json: bool = False) -> None:
    for r in replies:
        if as_json:
            click.echo(json.dumps(r, sort_keys=True))
            continue
        who = (f"{r['kind']} {r['name']}" + (f" of tenant {r['tenant']}" if r["tenant"] else "")
               if r.get("kind") else "unknown certificate")
        state = "already revoked" if r.get("already_revoked") else "revoked"
        click.echo(f"{state} {r['serial']} ({who}) on {', '.join(r['applied_on'])}")
        if r.get("pending"):
            click.echo(f"  not yet on {', '.join(r['pending'])} (they learn it at their next "
                       "catalog sync, before serving if they were down)")


def client_records(root: Path, name: str, tenant: str) -> list[IssuedCert]:
    """What the CA in *root* issued to client *name* of *tenant*, oldest first."""
    return _of_client(_records(root), name, tenant)


def replace_previous(ctx: click.Context, root: Path, previous: list[IssuedCert],
                     new: IssuedCert, keep: bool) -> None:
    """After a re-issue: revoke the name's earlier certificates still alive (unless *keep*)."""
    previous = [p for p in _alive(previous) if p.serial != new.serial]
    if not previous:
        return
    if keep:
        for p in previous:
            click.echo(f"kept {_describe(p)} valid until {p.not_after:%Y-%m-%d} "
                       "(--keep-previous)")
        return
    try:
        replies = _revoke_all(ctx, root, previous, f"replaced by {new.serial}")
    except HdsdError as exc:
        serials = " ".join(p.serial for p in previous)
        raise type(exc)(f"the new certificate {new.serial} is written, but the previous one(s) "
                        f"could not be revoked ({exc.message}); they still work: run `hdsd "
                        f"cert revoke --serial SERIAL` for {serials} once the cluster answers"
                        ) from None
    _report_revoked(replies)


def _issue_client(ctx: click.Context, root: Path, out: str | None, name: str, tenant: str,
                  role: str, days: int, keep: bool) -> None:
    out_dir = Path(out).resolve() if out else root / "clients"
    previous = client_records(root, name, tenant)
    crt, key = issue_client_cert(root / "ca", out_dir, name=name, tenant=tenant, role=role,
                                 days=days)
    new = read_certificate(crt.read_bytes())
    profile = out_dir / f"{name}.toml"
    click.echo(f"issued {crt} and {key} (tenant {tenant}, role {role}, serial {new.serial}, "
               f"valid until {new.not_after:%Y-%m-%d})")
    if _write_profile(root, profile, tenant, crt, key):
        click.echo(f"profile: {profile}")
    replace_previous(ctx, root, previous, new, keep)


# -- commands ----------------------------------------------------------------------------------
@cert.command("renew")
@click.option("--client", "client_name", default=None, help="client name to renew")
@click.option("--tenant", default=None, help="its tenant (needed if the name is in several)")
@click.option("--node", "node_name", default=None,
              help="renew this node's certificate instead (same site and addresses), written "
                   "next to its current one under CLUSTER_DIR; restart the node to use it")
@click.option("--days", type=click.IntRange(1, 730), default=None,
              help=f"lifetime (default {CLIENT_VALIDITY_DAYS} for a client, 730 for a node)")
@_KEEP
@_CLUSTER_DIR
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="where to write the client's files (default CLUSTER_DIR/clients)")
@click.pass_context
def cert_renew(ctx: click.Context, client_name: str | None, tenant: str | None,
               node_name: str | None, days: int | None, keep_previous: bool, cluster_dir: str,
               out: str | None) -> None:
    """A new certificate for the same identity (tenant and role, or node site and addresses),
    from the CA records; the previous one is revoked once the new one is written, unless
    --keep-previous (then it stays valid until its expiry: for a node, restart it on the new
    certificate first)."""
    root = Path(cluster_dir).resolve()
    records = _records(root)
    if (client_name is None) == (node_name is None):
        raise InvalidRequest("give --client NAME or --node NAME")
    if node_name is not None:
        mine = _of_node(records, node_name)
        if not mine:
            raise NotFound(f"the CA records in {root / 'ca'} have no certificate of node "
                           f"{node_name!r}")
        hosts = _hosts_of(mine[-1])
        site = mine[-1].identity.site or ""
        if days is not None and days != 730:
            raise InvalidRequest("a node certificate lives 730 days")
        # Next to the node's current certificate (its bundle), else where `init` puts one.
        current = [p for p in root.glob(f"**/node-{node_name}.crt") if "issued" not in p.parts]
        crt, _ = issue_node_cert(root / "ca", current[0].parent if current else root / node_name,
                                 name=node_name, site=site, hosts=hosts)
        new = read_certificate(crt.read_bytes())
        click.echo(f"issued {crt} (node {node_name}, site {site}, serial {new.serial}, valid "
                   f"until {new.not_after:%Y-%m-%d}); restart the node to use it")
        replace_previous(ctx, root, mine, new, keep_previous)
        return
    assert client_name is not None
    mine = _of_client(records, client_name, tenant)
    tenants = sorted({r.identity.tenant or "" for r in mine})
    if not mine:
        raise NotFound(f"the CA records in {root / 'ca'} have no certificate of client "
                       f"{client_name!r}" + (f" in tenant {tenant!r}" if tenant else "")
                       + "; issue one with `hdsd cert issue`")
    if len(tenants) > 1:
        raise InvalidRequest(f"client {client_name!r} exists in tenants {', '.join(tenants)}; "
                             "say which with --tenant")
    who = mine[-1].identity
    _issue_client(ctx, root, out, client_name, who.tenant or "", who.role or "",
                  days or CLIENT_VALIDITY_DAYS, keep_previous)


def _hosts_of(c: IssuedCert) -> list[str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(c.der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName))


@cert.command("revoke")
@click.option("--client", "client_name", default=None,
              help="revoke every unexpired certificate of this client name (CA records)")
@click.option("--tenant", default=None, help="the client's tenant (if the name is in several)")
@click.option("--node", "node_name", default=None,
              help="revoke this node's certificates (operator; a stolen server disk)")
@click.option("--serial", default=None, help="revoke this serial (hex)")
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="revoke this certificate file (a tenant admin proves it is its tenant's)")
@click.option("--reason", default="", help="recorded with the revocation")
@_CLUSTER_DIR
@json_option
@click.pass_context
def cert_revoke(ctx: click.Context, client_name: str | None, tenant: str | None,
                node_name: str | None, serial: str | None, cert_file: str | None, reason: str,
                cluster_dir: str, as_json: bool) -> None:
    """Revoke certificates on every node, for good: refused at every handshake from now on,
    their open sessions closed. The operator revokes any certificate; a tenant's admin those
    of its own tenant's clients."""
    root = Path(cluster_dir).resolve()
    if sum(x is not None for x in (client_name, node_name, serial, cert_file)) != 1:
        raise InvalidRequest("give exactly one of --client, --node, --serial, --cert")
    bare: str | None = None
    if cert_file is not None:
        targets = [read_certificate(Path(cert_file).read_bytes())]
    elif serial is not None:
        serial = serial.lower().removeprefix("0x").replace(":", "").lstrip("0")
        targets = [r for r in _records(root) if r.serial == serial]
        bare = None if targets else serial  # unknown here: the operator revokes it bare
    else:
        records = _records(root)
        if not records and not (root / "ca").is_dir():
            raise ConfigError(f"no CA records in {root / 'ca'}: give --cluster-dir, or revoke "
                              "with --cert FILE or --serial")
        if node_name is not None:
            targets = _alive(_of_node(records, node_name))
            what = f"node {node_name!r}"
        else:
            assert client_name is not None
            targets = _alive(_of_client(records, client_name, tenant))
            what = f"client {client_name!r}" + (f" of tenant {tenant!r}" if tenant else "")
            tenants = sorted({t.identity.tenant or "" for t in targets})
            if len(tenants) > 1:
                raise InvalidRequest(f"client {client_name!r} exists in tenants "
                                     f"{', '.join(tenants)}; say which with --tenant")
        if not targets:
            raise NotFound(f"no unexpired certificate of {what} in the CA records of "
                           f"{root / 'ca'}")
    if bare is not None:
        async def one(c: AsyncClient) -> list[CertRevoked]:
            return [await c.cert_revoke(serial=bare, reason=reason)]

        replies = _cluster(ctx, root, one)
    else:
        replies = _revoke_all(ctx, root, targets, reason)
    _report_revoked(replies, as_json)


@cert.command("ls")
@click.option("--tenant", default=None, help="only this tenant's certificates")
@click.option("--expiring-days", type=click.IntRange(0), default=14, show_default=True,
              help="flag certificates expiring within this many days")
@click.option("--offline", is_flag=True,
              help="do not ask the cluster: issued certificates only, revocations unknown")
@_CLUSTER_DIR
@json_option
@click.pass_context
def cert_ls(ctx: click.Context, tenant: str | None, expiring_days: int, offline: bool,
            cluster_dir: str, as_json: bool) -> None:
    """Certificates: issued (CA records), expiring, expired, revoked (the cluster's catalog).
    Revoked serials the CA records do not know (revoked by bare serial, or issued before
    records existed) are listed too."""
    root = Path(cluster_dir).resolve()
    revoked: dict[str, CertRow] = {}
    if not offline:
        async def ask(c: AsyncClient) -> tuple[str | None, list[CertRow]]:
            if tenant is not None:
                return tenant, await c.cert_revoked(tenant)
            try:
                return None, await c.cert_revoked("")
            except PermissionDenied:  # a tenant's admin: its own tenant's, then
                return c.profile.tenant, await c.cert_revoked(c.profile.tenant)

        tenant, rows = _cluster(ctx, root, ask)
        revoked = {str(r["serial"]): r for r in rows}
    records = [r for r in _records(root)
               if tenant is None or r.identity.tenant == tenant]
    now = _now()
    soon = now + dt.timedelta(days=expiring_days)
    out: list[dict[str, Any]] = []
    for r in records:
        i = r.identity
        if r.serial in revoked:
            state = "revoked"
        elif r.not_after <= now:
            state = "expired"
        elif r.not_after <= soon:
            state = "expiring"
        else:
            state = "valid" if not offline else "issued"
        gone = revoked.get(r.serial)
        out.append({"serial": r.serial, "kind": i.kind, "tenant": i.tenant or "",
                    "name": i.name, "role": i.role or "", "site": i.site or "",
                    "not_after": r.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "state": state,
                    "revoked_by": gone["by"] if gone else None,
                    "reason": gone["reason"] if gone else None})
    known = {r.serial for r in records}
    for serial, g in sorted(revoked.items()):
        if serial not in known:
            ms = g["not_after_ms"]
            not_after = (dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
                         .strftime("%Y-%m-%dT%H:%M:%SZ") if ms else "")
            out.append({"serial": serial, "kind": g["kind"] or "?", "tenant": g["tenant"],
                        "name": g["name"] or "?", "role": g["role"], "site": "",
                        "not_after": not_after, "state": "revoked", "revoked_by": g["by"],
                        "reason": g["reason"]})
    print_rows(out, as_json, f"{'SERIAL':40} {'KIND':6} {'TENANT':16} {'NAME':20} {'ROLE':8} "
                             f"{'NOT AFTER':20} STATE",
               lambda row: f"{row['serial']:40} {row['kind']:6} {row['tenant'] or '-':16} "
                           f"{row['name']:20} {row['role'] or row['site'] or '-':8} "
                           f"{row['not_after'] or '-':20} {row['state']}")
