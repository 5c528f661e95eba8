"""``hdsd layout``: change the layout of a running cluster, one staged change at a time.

``add-node``, ``remove-node``, ``replace-node`` and ``set`` *stage* a change in the operator
directory (``layout-staged.json``, next to the CA and ``cluster-spec.toml``); ``show`` prints
the running version and what is staged; ``apply`` makes the staged changes one new layout
version: bundles for the nodes that join (certificate for their addresses, master key file,
``layout.json``), the version handed to every node (each adopts it live, no restart), the
operator's ``cluster-spec.toml`` and admin profile rewritten. ``status`` follows the migration
(every node's phase, the peers it still has to compare with, the space reclaimed) until it is
stable (``--wait``). See ``hdsd.cluster._record`` for the phases and the two-layout write rule.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click
import trio

from .._atomic import atomic_write
from .._errors import ConfigError, InvalidRequest, Unavailable
from ..client import AsyncClient, load_profile
from ..cluster import (
    Layout,
    LayoutRecord,
    NodeInfo,
    replacing_node,
    with_changes,
    with_node,
    without_node,
)
from ._data import _run, json_option
from ._main import main

# The node package is imported where used: `hdsd` client commands start without it.
if TYPE_CHECKING:
    from ..node import ClusterSpec

STAGED_FILE = "layout-staged.json"


@main.group()
def layout() -> None:
    """Change the cluster's layout while it runs (operator): stage, apply, follow."""


def _ops_dir(ctx: click.Context, cluster_dir: str | None) -> Path:
    if cluster_dir:
        return Path(cluster_dir).resolve()
    return load_profile(ctx.find_root().obj["profile"]).path.parent


def _staged(ops: Path) -> list[dict[str, Any]]:
    path = ops / STAGED_FILE
    if not path.exists():
        return []
    try:
        ops_list = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; discard it (hdsd layout discard)") from None
    return list(ops_list)


def _stage(ops: Path, op: dict[str, Any]) -> None:
    from ..node import SPEC_FILE, load_spec

    if not (ops / SPEC_FILE).exists():
        raise ConfigError(f"{ops} is not an operator directory ({SPEC_FILE} missing); pass "
                          "--cluster-dir (the directory hdsd init wrote)")
    staged = [*_staged(ops), op]
    # Check the whole list now, against the spec, so a mistake is said at once (the running
    # layout is checked again at apply).
    spec = load_spec(ops / SPEC_FILE)
    _spec_after(spec, staged)
    _layout_after(LayoutRecord(cluster_id=spec.cluster_id, version=0,
                               layout=_spec_layout(spec)), staged)
    atomic_write(ops / STAGED_FILE, json.dumps(staged, indent=1).encode() + b"\n", 0o600)
    click.echo(f"staged: {_describe(op)} ({len(staged)} change(s) staged; "
               "hdsd layout apply makes them one layout version)")


def _spec_layout(spec: ClusterSpec) -> Layout:
    return Layout(sites=spec.sites, replicas_per_site=spec.replicas_per_site,
                  nodes=tuple(NodeInfo(name=n.name, site=n.site, host=n.addresses[0],
                                       port=n.port, weight=n.weight,
                                       role="backup" if n.role == "backup" else "storage")
                              for n in spec.nodes))


def _describe(op: dict[str, Any]) -> str:
    kind = op["op"]
    if kind == "add":
        return f"add {op['name']} to site {op['site']} at {op['addresses'][0]}:{op['port']}"
    if kind == "remove":
        return f"remove {op['name']}" + (" (gone)" if op.get("gone") else "")
    if kind == "replace":
        return (f"replace {op['old']} by {op['name']} at {op['addresses'][0]}:{op['port']}"
                + (" (old one gone)" if op.get("gone") else ""))
    changes = ", ".join(f"{k} {op[k]}" for k in ("addresses", "port", "weight") if op.get(k))
    return f"set {op['name']}: {changes}"


def _spec_after(spec: ClusterSpec, staged: list[dict[str, Any]]) -> ClusterSpec:
    """The spec with the staged changes, in order; ConfigError naming the first that cannot
    apply."""
    from ..node import NodeSpec

    nodes = list(spec.nodes)
    for op in staged:
        names = [n.name for n in nodes]
        kind = op["op"]
        if kind in ("add", "replace"):
            if op["name"] in names:
                raise ConfigError(f"{_describe(op)}: {op['name']} is already in the layout")
        if kind in ("remove", "replace", "set"):
            key = op["old"] if kind == "replace" else op["name"]
            if key not in names:
                raise ConfigError(f"{_describe(op)}: no node {key} in the layout")
        if kind == "add":
            if op["site"] not in spec.sites:
                raise ConfigError(f"{_describe(op)}: site must be one of "
                                  f"{', '.join(spec.sites)}")
            nodes.append(NodeSpec(name=op["name"], site=op["site"],
                                  addresses=tuple(op["addresses"]), port=op["port"],
                                  listen=op.get("listen") or op["addresses"][0],
                                  role=op.get("role", "storage"),
                                  weight=op.get("weight", 1.0)))
        elif kind == "remove":
            nodes = [n for n in nodes if n.name != op["name"]]
        elif kind == "replace":
            old = next(n for n in nodes if n.name == op["old"])
            nodes = [NodeSpec(name=op["name"], site=old.site, addresses=tuple(op["addresses"]),
                              port=op["port"], listen=op.get("listen") or op["addresses"][0],
                              role=old.role, weight=old.weight)
                     if n.name == op["old"] else n for n in nodes]
        elif kind == "set":
            nodes = [replace(n, addresses=tuple(op["addresses"]) if op.get("addresses")
                             else n.addresses, port=op.get("port") or n.port,
                             listen=(op["addresses"][0] if op.get("addresses") else n.listen),
                             weight=op["weight"] if op.get("weight") else n.weight)
                     if n.name == op["name"] else n for n in nodes]
    return replace(spec, nodes=tuple(nodes))


def _layout_after(record: LayoutRecord, staged: list[dict[str, Any]]
                  ) -> tuple[LayoutRecord, list[str]]:
    """The next version: the running layout with the staged changes; and the nodes that join."""
    layout = record.layout
    joining: list[str] = []
    gone: list[str] = []
    try:
        for op in staged:
            kind = op["op"]
            if kind == "add":
                layout = with_node(layout, NodeInfo(
                    name=op["name"], site=op["site"], host=op["addresses"][0], port=op["port"],
                    weight=op.get("weight", 1.0), role=op.get("role", "storage")))
                joining.append(op["name"])
            elif kind == "remove":
                layout = without_node(layout, op["name"])
                if op.get("gone"):
                    gone.append(op["name"])
            elif kind == "replace":
                old = layout.node(op["old"])
                layout = replacing_node(layout, op["old"], NodeInfo(
                    name=op["name"], site=old.site, host=op["addresses"][0], port=op["port"],
                    weight=old.weight, role=old.role))
                joining.append(op["name"])
                if op.get("gone"):
                    gone.append(op["old"])
            else:
                layout = with_changes(layout, op["name"],
                                      host=(op["addresses"][0] if op.get("addresses") else None),
                                      port=op.get("port"), weight=op.get("weight"))
        change = "; ".join(_describe(op) for op in staged)
        return record.changed_to(layout, change, tuple(gone)), joining
    except KeyError as exc:
        raise InvalidRequest(f"no node {exc} in the running layout") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _node_options(fn: Any) -> Any:
    fn = click.option("--address", "addresses", multiple=True, required=True,
                      help="an IP or DNS name of the node (repeat: the certificate covers "
                           "each; the first is dialled)")(fn)
    fn = click.option("--port", type=click.IntRange(1, 65535), required=True)(fn)
    fn = click.option("--listen", default=None,
                      help="host the node binds (default: its first address)")(fn)
    return fn


_DIR = click.option("--cluster-dir", default=None, type=click.Path(file_okay=False),
                    help="the operator directory hdsd init wrote (default: the admin "
                         "profile's directory)")


@layout.command("add-node")
@click.argument("name")
@click.option("--site", required=True)
@_node_options
@click.option("--weight", type=float, default=1.0, show_default=True)
@click.option("--role", type=click.Choice(["storage", "backup"]), default="storage",
              show_default=True)
@_DIR
@click.pass_context
def add_node(ctx: click.Context, name: str, site: str, addresses: tuple[str, ...], port: int,
             listen: str | None, weight: float, role: str, cluster_dir: str | None) -> None:
    """Stage: NAME joins SITE (it gets the keys its rendezvous scores win)."""
    _stage(_ops_dir(ctx, cluster_dir), {"op": "add", "name": name, "site": site,
                                        "addresses": list(addresses), "port": port,
                                        "listen": listen, "weight": weight, "role": role})


@layout.command("remove-node")
@click.argument("name")
@click.option("--gone", is_flag=True,
              help="the node is dead for good: nobody waits for it, its keys are copied "
                   "from their other replicas")
@_DIR
@click.pass_context
def remove_node(ctx: click.Context, name: str, gone: bool, cluster_dir: str | None) -> None:
    """Stage: NAME leaves (refused if its site would keep fewer storage nodes than
    replicas_per_site); it keeps serving until the migration is done."""
    _stage(_ops_dir(ctx, cluster_dir), {"op": "remove", "name": name, "gone": gone})


@layout.command("replace-node")
@click.argument("old")
@click.argument("name")
@_node_options
@click.option("--gone", is_flag=True, help="OLD is dead for good (see remove-node --gone)")
@_DIR
@click.pass_context
def replace_node(ctx: click.Context, old: str, name: str, addresses: tuple[str, ...], port: int,
                 listen: str | None, gone: bool, cluster_dir: str | None) -> None:
    """Stage: NAME (a new machine) takes OLD's place, site, role and weight. To replace a
    node's disk and keep its name, see the README (no layout change)."""
    _stage(_ops_dir(ctx, cluster_dir), {"op": "replace", "old": old, "name": name,
                                        "addresses": list(addresses), "port": port,
                                        "listen": listen, "gone": gone})


@layout.command("set")
@click.argument("name")
@click.option("--address", "addresses", multiple=True, help="new address(es) of the node")
@click.option("--port", type=click.IntRange(1, 65535), default=None)
@click.option("--weight", type=float, default=None)
@_DIR
@click.pass_context
def set_node(ctx: click.Context, name: str, addresses: tuple[str, ...], port: int | None,
             weight: float | None, cluster_dir: str | None) -> None:
    """Stage: NAME's address (no data moves) or weight (its share of keys changes)."""
    if not (addresses or port or weight):
        raise click.UsageError("say what changes: --address, --port or --weight")
    _stage(_ops_dir(ctx, cluster_dir), {"op": "set", "name": name,
                                        "addresses": list(addresses), "port": port,
                                        "weight": weight})


@layout.command("discard")
@_DIR
@click.pass_context
def discard(ctx: click.Context, cluster_dir: str | None) -> None:
    """Drop the staged changes."""
    path = _ops_dir(ctx, cluster_dir) / STAGED_FILE
    path.unlink(missing_ok=True)
    click.echo("nothing staged")


def _cluster_view(ctx: click.Context) -> dict[str, Any]:
    st = _run(ctx, lambda c: c.status())
    if "layout_record" not in st:
        raise InvalidRequest("the node answered without a layout record (an older version?)")
    return st


def _latest(st: dict[str, Any]) -> LayoutRecord:
    """The highest layout version any node reports."""
    best = st["layout_record"]["record"]
    for n in st.get("nodes") or []:
        rec = (n.get("layout_record") or {}).get("record")
        if rec is not None and rec["version"] > best["version"]:
            best = rec
    return LayoutRecord.from_wire(best)


@layout.command("show")
@_DIR
@json_option
@click.pass_context
def show(ctx: click.Context, cluster_dir: str | None, as_json: bool) -> None:
    """The running layout version, each node's phase, and what is staged."""
    st = _cluster_view(ctx)
    record = _latest(st)
    staged = _staged(_ops_dir(ctx, cluster_dir))
    if as_json:
        click.echo(json.dumps({"record": record.to_wire(), "staged": staged,
                               "nodes": _progress(st)}, sort_keys=True))
        return
    click.echo(f"layout version {record.version} ({record.phase}) id {record.layout.layout_id}"
               + (f": {record.change}" if record.change else ""))
    for n in record.layout.nodes:
        click.echo(f"  {n.site:8} {n.name:16} {n.host}:{n.port}  weight {n.weight:g}"
                   + ("  backup" if n.role == "backup" else ""))
    for name in record.leaving():
        click.echo(f"  leaving  {name}" + ("  (gone)" if name in record.gone else ""))
    _print_progress(st)
    for op in staged:
        click.echo(f"staged: {_describe(op)}")


def _progress(st: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for n in st.get("nodes") or [{"up": True, **st}]:
        lr = n.get("layout_record") or {}
        out.append({"node": n.get("node"), "up": bool(n.get("up")),
                    "version": lr.get("version"), "phase": lr.get("phase"),
                    "trees_ready": lr.get("trees_ready"),
                    "peers_compared": lr.get("peers_compared"),
                    "peers_to_compare": lr.get("peers_to_compare"),
                    "waiting_for": lr.get("waiting_for") or {},
                    "in_layout": lr.get("in_layout", True),
                    "reclaim": lr.get("reclaim") or {},
                    "store_bytes": (n.get("store") or {}).get("disk_bytes"),
                    "error": n.get("error")})
    return out


def _print_progress(st: dict[str, Any]) -> None:
    for p in _progress(st):
        if not p["up"]:
            click.echo(f"  {p['node']}: down ({p['error']})")
            continue
        line = f"  {p['node']}: version {p['version']} {p['phase']}"
        if p["phase"] == "syncing":
            line += f", compared with {p['peers_compared']}/{p['peers_to_compare']} peers"
        reclaim = p["reclaim"]
        if reclaim.get("state") not in (None, "idle"):
            line += (f", reclaim {reclaim['state']}"
                     + (f" ({reclaim.get('keys_forgotten', 0)} keys forgotten, "
                        f"{reclaim.get('keys_waiting', 0)} waiting)"
                        if "keys_forgotten" in reclaim else ""))
        if not p["in_layout"]:
            line += ", left the layout: stop it once the migration is stable"
        click.echo(line)
        for who, why in sorted(p["waiting_for"].items()):
            click.echo(f"      waiting for {who}: {why}")


def _done(st: dict[str, Any], version: int) -> bool:
    """Every node of the layout runs a stable version ≥ *version* with its reclaim done."""
    for p in _progress(st):
        if not p["in_layout"]:
            continue
        if not p["up"] or p["phase"] != "stable" or (p["version"] or 0) < version:
            return False
        if p["reclaim"].get("state") == "pending":
            return False
    return True


@layout.command("apply")
@_DIR
@click.option("--prefix", default=None, help="bundle paths for new nodes (as hdsd init)")
@click.option("--state-dir", default=None, help="data directory for new nodes (as hdsd init)")
@click.option("--archive", is_flag=True, help="also write <node>.tar for each new node")
@click.option("--node-toml-extra", default="", hidden=True)
@click.option("--wait", "wait_s", type=float, default=None,
              help="then wait (at most this many seconds) until the migration is stable")
@click.option("--now", is_flag=True, help="do not wait for joining nodes to be started")
@click.pass_context
def apply(ctx: click.Context, cluster_dir: str | None, prefix: str | None,
          state_dir: str | None, archive: bool, node_toml_extra: str,
          wait_s: float | None, now: bool) -> None:
    """Make the staged changes one layout version and hand it to every node.

    A node joining gets its bundle first; the version is handed out once it listens (run
    apply again after starting it), so no write placed on it is refused."""
    from ..node import SPEC_FILE, load_spec, write_node_bundle

    ops = _ops_dir(ctx, cluster_dir)
    staged = _staged(ops)
    if not staged:
        raise InvalidRequest("nothing staged (hdsd layout add-node|remove-node|replace-node|set)")
    spec = load_spec(ops / SPEC_FILE)
    new_spec = _spec_after(spec, staged)
    st = _cluster_view(ctx)
    current = _latest(st)
    record, joining = _layout_after(current, staged)
    waiting = []
    for name in joining:
        node = next(n for n in new_spec.nodes if n.name == name)
        if not (ops / name).exists():
            bundle = write_node_bundle(
                new_spec, ops, node, record, archive=archive, node_toml_extra=node_toml_extra,
                prefix=PurePosixPath(prefix) if prefix else None,
                state_dir=PurePosixPath(state_dir) if state_dir else None)
            click.echo(f"bundle for {name}: {bundle.archive or bundle.directory} "
                       f"(start it with: hdsd serve --config {bundle.config})")
        if not _listening(node.addresses[0], node.port):
            waiting.append(f"{name} ({node.address})")
    if waiting and not now:
        # Until it runs, a joining node cannot confirm the writes placed on it, and the
        # policy must hold in the new layout too: start it first, then hand out the version.
        click.echo(f"start {', '.join(waiting)} (it waits for the others), then run hdsd "
                   "layout apply again (--now: apply anyway; writes of keys placed on it are "
                   "refused until it runs)")
        sys.exit(10)
    replies = _push_everywhere(ctx, record)
    reached = [r for r in replies if "error" not in r]
    if not reached:
        raise Unavailable("no node took the new layout version: "
                          + "; ".join(f"{r['node']}: {r['error']}" for r in replies))
    (ops / SPEC_FILE).write_text(new_spec.to_toml(), encoding="utf-8")
    _refresh_admin_profile(ops, new_spec)
    (ops / STAGED_FILE).unlink(missing_ok=True)
    click.echo(f"layout version {record.version} ({record.phase}): {record.change}")
    for r in replies:
        click.echo(f"  {r['node']}: " + (f"version {r['version']} {r['phase']}"
                                         if "error" not in r else
                                         f"not reached ({r['error']}); it learns from its "
                                         "peers"))
    if wait_s is not None:
        _wait(ctx, record.version, wait_s)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _push_everywhere(ctx: click.Context, record: LayoutRecord) -> list[dict[str, Any]]:
    obj = ctx.find_root().obj
    profile = load_profile(obj["profile"])
    wire = record.to_wire()

    async def one(info: NodeInfo, out: list[dict[str, Any]]) -> None:
        try:
            with trio.fail_after(min(obj["timeout"], 15.0)):
                async with AsyncClient(profile.pinned(info.site, info.host, info.port),
                                       timeout=obj["timeout"], retries=0) as c:
                    out.append({"node": info.name, **await c.layout_push(wire)})
        except (trio.TooSlowError, OSError) as exc:
            out.append({"node": info.name, "error": str(exc) or "no answer"})
        except Exception as exc:  # an HdsdError from this node: say it, try the others
            out.append({"node": info.name, "error": str(exc)})

    async def go() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            for info in record.all_nodes():
                if info.name not in record.gone:
                    nursery.start_soon(one, info, out)
        return out

    return sorted(trio.run(go), key=lambda r: str(r["node"]))


def _refresh_admin_profile(ops: Path, spec: ClusterSpec) -> None:
    """The admin profile lists the new layout's nodes (other profiles: hdsd profile
    refresh)."""
    from ..node import write_profile

    path = ops / "client.toml"
    if not path.exists():
        return
    prof = load_profile(path)
    write_profile(path, spec, tenant=prof.tenant, ca=_rel(prof.ca, ops),
                  cert=_rel(prof.cert, ops), key=_rel(prof.key, ops), site=prof.site)


def _rel(path: Path, ops: Path) -> Path:
    try:
        return Path(path).resolve().relative_to(ops)
    except ValueError:
        return Path(path)


def _wait(ctx: click.Context, version: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        st = _cluster_view(ctx)
        if _done(st, version):
            click.echo(f"layout stable (version ≥ {version}); space reclaimed on every node")
            return
        if time.monotonic() > deadline:
            _print_progress(st)
            click.echo("still migrating: follow with hdsd layout status", err=True)
            sys.exit(10)
        time.sleep(1.0)


@layout.command("status")
@click.option("--wait", "wait_s", type=float, default=None,
              help="wait (at most this many seconds) until stable with space reclaimed")
@json_option
@click.pass_context
def layout_status(ctx: click.Context, wait_s: float | None, as_json: bool) -> None:
    """The migration's progress on every node. Exit 0 once stable with space reclaimed
    everywhere, 10 while it migrates."""
    st = _cluster_view(ctx)
    record = _latest(st)
    if wait_s is not None:
        _wait(ctx, record.version if record.phase == "stable" else record.version + 2, wait_s)
        st = _cluster_view(ctx)
        record = _latest(st)
    done = _done(st, record.version)
    if as_json:
        click.echo(json.dumps({"record": record.to_wire(), "done": done,
                               "nodes": _progress(st)}, sort_keys=True, default=str))
    else:
        click.echo(f"layout version {record.version} ({record.phase})"
                   + (f": {record.change}" if record.change else "")
                   + ("  — done" if done else "  — migrating"))
        _print_progress(st)
    sys.exit(0 if done else 10)
