"""``hdsd status``: one table for every node of both sites.

The node the profile reaches answers for the whole cluster: it asks every other node
concurrently (a bounded timeout; a node that does not answer is shown down, with the reason),
so one command works from anywhere a client can reach one node. ``--json`` prints the node's
reply as is (its own status at top level, every node under ``nodes``), for scripts.

The exit code serves monitoring scripts (table and ``--json`` alike): :data:`EXIT_OK` (0) all
nodes up and well; :data:`EXIT_DEGRADED` (10) every node answers but one is not well — its
site degraded, its disk full, its live RPO not zero (``rpo.zero``: a backlog, or a peer not
yet compared), its catalog sync failing (e.g. a master key that does not open a peer's
entries); :data:`EXIT_DOWN` (11) a node does not answer or its store stopped (fail-stop).
No node reachable at all is the usual error exit (6, ``Unavailable``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ._data import _run, json_option
from ._main import main

EXIT_OK = 0
EXIT_DEGRADED = 10
EXIT_DOWN = 11

_TIME_KEYS = ("finished", "at", "when", "time", "ended", "started")
_RESULT_KEYS = ("result", "status", "outcome", "summary")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h" if seconds < 172800 else f"{seconds / 86400:.0f}d"


def last_run(value: Any, now: float) -> str:
    """A ``last_repair``/``last_scrub`` entry in a few characters (its shape is the repair
    module's: a dict with a time and a result, or a plain value)."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        parts = []
        when = next((value[k] for k in _TIME_KEYS if isinstance(value.get(k), (int, float))),
                    None)
        if when is not None:
            parts.append(human_age(max(0.0, now - when)) + " ago")
        result = next((value[k] for k in _RESULT_KEYS if value.get(k) is not None), None)
        if result is None:
            result = _outcome(value)
        if result is not None:
            parts.append(str(result))
        return " ".join(parts) or "yes"
    return str(value)[:24]


def _outcome(value: dict[str, Any]) -> str | None:
    """A scrub report (corrupt/missing/repaired counts) or a repair run (a report per peer)
    in a word or two."""
    if value.get("error"):
        return "error"
    if "corrupt" in value:
        bad = sum(int(value.get(k) or 0) for k in ("corrupt", "missing",
                                                    "damaged_version_records"))
        if not bad:
            return "clean"
        return f"{bad} bad, {int(value.get('unrepaired') or 0)} unrepaired"
    peers = value.get("peers")
    if isinstance(peers, list):
        if any(isinstance(p, dict) and p.get("error") for p in peers):
            return "error"
        moved = sum(int(p.get("versions_received") or 0) + int(p.get("versions_sent") or 0)
                    for p in peers if isinstance(p, dict))
        return f"{moved} fixed" if moved else "in sync"
    return None


def rpo_line(nodes: list[dict[str, Any]]) -> str:
    """The cluster's live RPO: every node's hinted backlog added up; "0" only when every node
    answered, owes nothing and has no peer left to compare with (see PeerDoubts)."""
    up = [n for n in nodes if n.get("up")]
    rpos = [n.get("rpo") or {} for n in up]
    versions = sum(int(r.get("versions", 0)) for r in rpos)
    size = sum(int(r.get("bytes", 0)) for r in rpos)
    age = max((float(r.get("age_s", 0)) for r in rpos), default=0.0)
    doubted = sorted({f"{n.get('node')}~{p}" for n, r in zip(up, rpos, strict=True)
                      for p in (r.get("peers_in_doubt") or {})})
    down = len(nodes) - len(up)
    if versions == 0 and not doubted and not down:
        return "live RPO: 0 (every version is on every replica its placement names)"
    parts = [f"{versions} versions, {human_bytes(size)} not yet on every replica"]
    if doubted:
        parts.append(f"{len(doubted)} node pairs not yet compared ({', '.join(doubted[:4])}"
                     + (", ..." if len(doubted) > 4 else "") + ")")
    if down:
        parts.append(f"{down} node(s) down, their backlog unknown")
    return f"live RPO: {'; '.join(parts)}; oldest {age:.1f} s"


def rebuild_line(entry: dict[str, Any]) -> str | None:
    """One line for a node that is rebuilding (its store was emptied or damaged), else None:
    progress through the current peer's data, bytes received, rate and ETA."""
    rb = entry.get("rebuild") or {}
    state = rb.get("state")
    if state not in ("running", "checking"):
        return None
    name = entry.get("node", "?")
    if state == "checking":
        return f"{name}: started empty, comparing with its peers (rebuild or new node?)"
    done, total = int(rb.get("leaves_done") or 0), int(rb.get("leaves_total") or 0)
    received = int(rb.get("bytes_received") or 0) + int(rb.get("bytes_received_this_peer") or 0)
    versions = (int(rb.get("versions_received") or 0)
                + int(rb.get("versions_received_this_peer") or 0))
    eta = rb.get("eta_s")
    limit = float(rb.get("rate_limit_mib_s") or 0)
    peers = f"peer {len(rb.get('peers_done') or []) + 1}/{rb.get('peers_total', '?')}"
    return (f"{name}: rebuilding from {rb.get('peer', '?')} ({peers}): "
            f"{100 * done / total if total else 0:.0f} %, {versions:,} versions, "
            f"{human_bytes(received)} at {float(rb.get('rate_mib_s') or 0):.1f} MiB/s, "
            f"ETA {human_age(float(eta)) if eta is not None else '?'}"
            f" (limit {f'{limit:g} MiB/s' if limit else 'none'})")


def node_row(entry: dict[str, Any], now: float) -> dict[str, str]:
    """The table cells of one node (strings; '-' where unknown)."""
    name = str(entry.get("node", "?")) + (" (backup)" if entry.get("role") == "backup" else "")
    if not entry.get("up"):
        return {"site": entry.get("site", "?"), "node": name, "state": "down"}
    disk = entry.get("disk") or {}
    fsync = entry.get("fsync") or {}
    rpo = entry.get("rpo") or {}
    mode = (entry.get("mode") or {}).get("mode", "?")
    state = "up" if not (entry.get("store") or {}).get("failed") else "failed"
    if entry.get("disk_full"):
        state = "disk full"
    return {
        "site": entry.get("site", "?"), "node": name, "state": state,
        "version": str(entry.get("software", "?")),
        "disk used/free": (f"{human_bytes(disk.get('used'))}/{human_bytes(disk.get('free'))}"
                           if disk else "-"),
        "data dir": human_bytes(disk["data_dir_bytes"]) if "data_dir_bytes" in disk else "-",
        "fsync p50/p99 ms": (f"{fsync['p50_ms']:.2f}/{fsync['p99_ms']:.2f}"
                             if fsync.get("samples") else "-"),
        "mode": mode, "policy": str(entry.get("write_policy", "?")),
        "backlog (rpo)": (f"{rpo.get('versions', 0)} v/{human_bytes(rpo.get('bytes', 0))}"
                          + (f" {human_age(rpo.get('age_s', 0))}" if rpo.get("versions")
                             else "")
                          + (f" +{len(rpo['peers_in_doubt'])} unchecked"
                             if rpo.get("peers_in_doubt") else "")),
        "last repair": last_run(entry.get("last_repair"), now),
        "last scrub": last_run(entry.get("last_scrub"), now),
        "sessions": _sessions(entry.get("limits") or {}),
        "rss (malloc free)": _memory(entry.get("memory") or {}),
    }


def _memory(memory: dict[str, Any]) -> str:
    """Resident memory, and what glibc holds freed in it (docs/operations.md, Memory)."""
    if memory.get("rss") is None:
        return "-"
    held = (memory.get("malloc") or {}).get("free")
    return human_bytes(memory["rss"]) + (f" ({human_bytes(held)})" if held is not None else "")


def _sessions(limits: dict[str, Any]) -> str:
    """Client sessions open/max, peer sessions, and connections refused for lack of a slot."""
    if not limits:
        return "-"
    clients, peers = limits["client_sessions"], limits["peer_sessions"]
    return (f"{clients['open']}/{clients['max']} +{peers['open']}p"
            f" {sum(limits['refused'].values())} refused")


COLUMNS = ("site", "node", "state", "version", "disk used/free", "data dir", "fsync p50/p99 ms",
           "mode", "policy", "backlog (rpo)", "last repair", "last scrub", "sessions",
           "rss (malloc free)")
_STATE_COLOURS = {"up": "green", "down": "red", "failed": "red", "disk full": "red"}


def render_table(rows: list[dict[str, str]]) -> list[str]:
    """Aligned lines; colour codes only around the state (click.echo drops them when piped)."""
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS).rstrip()]
    for r in rows:
        cells = []
        for c in COLUMNS:
            text = r.get(c, "-").ljust(widths[c])
            if c == "state":
                text = click.style(text, fg=_STATE_COLOURS.get(r["state"], "yellow"))
            elif c == "mode" and r.get(c) == "degraded":
                text = click.style(text, fg="yellow")
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    return lines


def problems(entry: dict[str, Any]) -> tuple[int, list[str]]:
    """(exit code, reasons) for one node's status entry; ``(0, [])`` when it is well."""
    if not entry.get("up"):
        return EXIT_DOWN, [f"down: {entry.get('error', 'no answer')}"]
    if (entry.get("store") or {}).get("failed"):
        return EXIT_DOWN, ["store stopped after a storage failure (fail-stop)"]
    reasons = []
    if (entry.get("mode") or {}).get("mode", "normal") != "normal":
        reasons.append(f"site {entry.get('site')} {entry['mode'].get('mode')}")
    if entry.get("disk_full"):
        reasons.append("data disk full")
    rpo = entry.get("rpo") or {}
    if not rpo.get("zero", True):
        reasons.append(f"behind: live RPO {rpo.get('versions', 0)} versions"
                       + (f", {len(rpo['peers_in_doubt'])} peers not yet compared"
                          if rpo.get("peers_in_doubt") else ""))
    failures = (entry.get("catalog") or {}).get("sync_failures") or {}
    for peer, error in sorted(failures.items()):
        reasons.append(f"catalog sync with {peer} failed: {error}")
    return (EXIT_DEGRADED if reasons else EXIT_OK), reasons


def exit_code(nodes: list[dict[str, Any]]) -> int:
    return max((problems(n)[0] for n in nodes), default=EXIT_OK)


@main.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show every node of both sites: up/down, version, disk, fsync latency, site mode and
    write policy, replication backlog (live RPO), last repair and scrub.

    Exit code: 0 all well, 10 a node degraded/behind/failing its catalog sync, 11 a node down
    (6: no node reachable)."""
    st = _run(ctx, lambda c: c.status())
    nodes = st.get("nodes") or [{"up": True, **st}]
    if as_json:
        click.echo(json.dumps(st, sort_keys=True, default=str))
        sys.exit(exit_code(nodes))
    now = time.time()
    up = sum(1 for n in nodes if n.get("up"))
    lr = st.get("layout_record") or {}
    version = f" v{lr['version']} {lr['phase']}" if lr else ""
    click.echo(f"cluster {st['cluster']}  layout {st.get('layout', '?')}{version}  "
               f"{up}/{len(nodes)} nodes up  (asked {st['node']}, site {st['site']})")
    if lr.get("phase") not in (None, "stable"):
        click.echo(f"layout change in progress: {lr.get('change')} (hdsd layout status)")
    mode = st.get("mode", {})
    line = f"site {st['site']}: mode {mode.get('mode', '?')}  write policy " \
           f"{st.get('write_policy', '?')}"
    if mode.get("mode") == "degraded":
        line += f"  (degraded by {mode.get('by')}: {mode.get('reason')})"
    click.echo(line)
    if "rpo" in st:
        click.echo(rpo_line(nodes))
    for n in nodes:
        if n.get("up") and (text := rebuild_line(n)) is not None:
            click.echo(text)
    if st.get("scope") == "tenant":  # anyone but the operator: its own tenant, no addresses
        t = st.get("tenant") or {}
        quota = human_bytes(t.get("quota_bytes")) if t.get("quota_bytes") else "no quota"
        click.echo(f"tenant {t.get('tenant')}: {human_bytes(t.get('usage_bytes'))} used, "
                   f"{quota}, plan {t.get('plan')}")
    click.echo("")
    for text in render_table([node_row(n, now) for n in nodes]):
        click.echo(text)
    for n in nodes:
        for reason in problems(n)[1]:
            click.echo(f"  {n.get('node')}: {reason}")
    sys.exit(exit_code(nodes))
