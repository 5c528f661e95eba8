"""``hdsd repair`` and ``hdsd scrub``: start maintenance on every node, optionally wait for it,
and print what it found and moved."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import trio

from .._errors import HdsdError, Unavailable
from ..client import AsyncClient, Profile, load_profile
from ..wire import MaintenanceStarted
from ._main import main

_POLL_S = 0.5
#: How long --wait waits for a node that does not answer yet (a node just restarted).
_NODE_WAIT_S = 30.0


_STATE = {"compact": "compaction"}  # the status key of a task, where it is not its name


def _endpoints(profile: Profile) -> list[tuple[str, str, int]]:
    # Backup nodes too: they repair and scrub their own copies like any node.
    return [(site, host, port) for sites in (profile.sites, profile.backup_sites)
            for site, eps in sites.items() for host, port in eps]


async def _run(profile: Profile, task: str, wait: bool, request_timeout: float,
               progress: bool) -> list[dict[str, Any]]:
    started: list[tuple[Profile, MaintenanceStarted]] = []
    results: list[dict[str, Any]] = []
    for site, host, port in _endpoints(profile):
        one = profile.pinned(site, host, port)
        # A node restarted a moment ago may not listen yet: an operator waiting for the
        # repair (--wait) would rather wait a little than see it fail.
        deadline = trio.current_time() + (_NODE_WAIT_S if wait else 0)
        while True:
            try:
                async with AsyncClient(one, timeout=request_timeout) as c:
                    started.append((one, await c.start_maintenance(task)))
                break
            except Unavailable as exc:
                if trio.current_time() >= deadline:
                    results.append({"endpoint": f"{host}:{port}", "site": site,
                                    "error": str(exc)})
                    break
                if progress:
                    click.echo(f"\r\033[K{task}: waiting for {host}:{port} ({site}) to answer",
                               nl=False, err=True)
                await trio.sleep(_POLL_S)
    if not wait:
        return [*results, *(dict(reply) for _, reply in started)]
    for one, reply in started:
        async with AsyncClient(one, timeout=request_timeout) as c:
            while True:
                st = await c.status()
                state = st["maintenance"][_STATE.get(task, task)]
                if state["runs_completed"] >= reply["run"]:
                    results.append({"node": st["node"], "site": st["site"], **state["last"]})
                    break
                if progress:
                    _show_progress(st["node"], task, state)
                await trio.sleep(_POLL_S)
    if progress:
        click.echo("\r\033[K", nl=False, err=True)
    return results


def _show_progress(node: str, task: str, state: dict[str, Any]) -> None:
    p = state.get("progress") or {}
    if task == "repair" and p.get("waiting_for_link"):
        detail = (f"waiting for the link to {p.get('peer', '?')} ({p.get('waited_s', 0):.0f} s: "
                  f"{p.get('link_error', '')})")
    elif task == "repair":
        total = p.get("leaves_total") or 0
        detail = (f"with {p.get('peer', '?')}: {p.get('leaves_done', 0)}/{total} differing "
                  "leaves" if total else "comparing trees")
    else:
        detail = (f"{100 * p.get('progress', 0):5.1f}%  {p.get('chunks_checked', 0)} chunks  "
                  f"{p.get('corrupt', 0)} corrupt")
    click.echo(f"\r\033[K{task} {node}: {detail}", nl=False, err=True)


def _print_repair(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "error" in r and "peers" not in r:
            click.echo(f"{r.get('node') or r.get('endpoint')}: unreachable: {r['error']}")
            continue
        if "peers" not in r:
            click.echo(f"{r['node']}: repair run {r['run']} started")
            continue
        if not r["peers"]:
            click.echo(f"{r['node']}: no peers to compare (each pair is compared by its "
                       "lower-named node)")
        for p in r["peers"]:
            head = f"{r['node']} ↔ {p['peer']}"
            if p["error"]:
                click.echo(f"{head}: FAILED {p['error']}")
                continue
            click.echo(f"{head}: {p['versions_compared']} versions compared, "
                       f"{p['leaves_differing']} leaves differed, {p['versions_received']} "
                       f"versions received, {p['versions_sent']} sent, "
                       f"{p['bytes_sent']} B out / {p['bytes_received']} B in, "
                       f"{p['duration_s']:.2f} s")


def _print_scrub(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "chunks_checked" not in r:
            if "error" in r:
                click.echo(f"{r.get('endpoint')}: unreachable: {r['error']}")
            else:
                click.echo(f"{r['node']}: scrub run {r['run']} started")
            continue
        verdict = "FAILED " + r["error"] if r["error"] else (
            "clean" if not (r["corrupt"] or r["missing"]) else
            f"{r['corrupt']} corrupt, {r['missing']} missing, {r['repaired']} repaired, "
            f"{r['unrepaired']} unrepaired")
        click.echo(f"{r['node']}: {r['chunks_checked']} chunks / {r['versions_checked']} "
                   f"versions / {r['bytes_checked']} B checked in {r['duration_s']:.2f} s: "
                   f"{verdict}")


def _print_compact(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "segments_removed" not in r:
            if "error" in r and "node" not in r:
                click.echo(f"{r.get('endpoint')}: unreachable: {r['error']}")
            elif "error" in r:
                click.echo(f"{r['node']}: FAILED {r['error']}")
            else:
                click.echo(f"{r['node']}: compaction run {r['run']} started")
            continue
        click.echo(f"{r['node']}: {r['segments_removed']} segments removed, "
                   f"{r['bytes_freed']} B freed, {r['records_moved']} records moved, "
                   f"{r.get('chunks_released', 0)} chunks of purged versions released")


def _failed(task: str, results: list[dict[str, Any]]) -> bool:
    if task == "repair":
        return any("error" in r and "peers" not in r for r in results) or any(
            p["error"] for r in results for p in r.get("peers", []))
    return any(r.get("error") or r.get("unrepaired") for r in results)


def _command(ctx: click.Context, task: str, wait: bool, as_json: bool) -> None:
    obj = ctx.find_root().obj
    profile = load_profile(obj["profile"])
    progress = wait and not as_json and sys.stderr.isatty()
    results = trio.run(_run, profile, task, wait, obj["timeout"], progress)
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))
    elif task == "repair":
        _print_repair(results)
    elif task == "compact":
        _print_compact(results)
    else:
        _print_scrub(results)
    if _failed(task, results):
        raise HdsdError(f"{task} did not complete everywhere (see above)")


@main.command()
@click.option("--wait", is_flag=True, help="wait for the end and print the report")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def repair(ctx: click.Context, wait: bool, as_json: bool) -> None:
    """Compare every pair of replicas (Merkle trees) and copy what one lacks (admin).

    Each node compares itself with the peers whose names sort after its own, so every pair
    is compared once; the merge is a union of versions, tombstones included."""
    _command(ctx, "repair", wait, as_json)


@main.command()
@click.option("--wait", is_flag=True, help="wait for the end and print the report")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def scrub(ctx: click.Context, wait: bool, as_json: bool) -> None:
    """Re-read and verify every record on every node; heal bad ones from a replica (admin)."""
    _command(ctx, "scrub", wait, as_json)


@main.command()
@click.option("--wait", is_flag=True, help="wait for the end and print the report")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def compact(ctx: click.Context, wait: bool, as_json: bool) -> None:
    """Reclaim log space now on every node (admin): records of shredded tenants, and versions
    purged (their chunks once the node's [repair] purge_grace_h has passed). Compaction also
    runs every 6 hours on its own."""
    _command(ctx, "compact", wait, as_json)
