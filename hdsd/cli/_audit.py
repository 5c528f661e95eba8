"""``hdsd audit verify|export|pubkey``: offline commands over a node's audit log directory.

They read files only (no node needs to run, no network): an auditor may run them on a copy of
the data directory. Which key the signatures are checked against, in order: ``--pubkey FILE``
(a key pinned when the node was commissioned); for ``--origin`` copies, the key the receiving
node pinned at the first batch it accepted; otherwise the ``verify.key`` next to the log itself,
which proves only that the log is self-consistent — the command says so.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .._errors import ConfigError, HdsdError
from ._main import main

# The audit package is imported by the audit commands only: `hdsd` client commands start
# without it.
if TYPE_CHECKING:
    from ..audit import VerifyReport


def _log_dir(data_dir: str, origin: str | None) -> Path:
    from ..audit import copy_dir

    base = Path(data_dir)
    audit = base / "audit" if (base / "audit").is_dir() else base
    directory = copy_dir(audit, origin) if origin else audit
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no audit log here (give the node's data directory)")
    return directory


def _key(directory: Path, pubkey: str | None) -> tuple[bytes, str]:
    from ..audit import VERIFY_KEY_FILE, read_verify_key

    if pubkey is not None:
        return read_verify_key(Path(pubkey)), "pinned key " + pubkey
    key_file = directory / VERIFY_KEY_FILE
    if not key_file.exists():
        raise ConfigError(f"{key_file}: no verify key; give the node's key with --pubkey FILE")
    how = ("the key pinned by the receiving node" if directory.name.startswith("from-") else
           "the log's own verify.key (NOT pinned: pass --pubkey to prove who signed)")
    return read_verify_key(key_file), how


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


@main.group()
def audit() -> None:
    """Audit log: verify the chain and signatures, export a tenant's accesses (offline)."""


_data_dir = click.option("--data-dir", "data_dir", required=True,
                         type=click.Path(file_okay=False, exists=True),
                         help="the node's data directory (or its audit/ directory)")
_origin = click.option("--origin", default=None, metavar="NODE",
                       help="the copy of NODE's log kept here (audit/from-NODE)")
_pubkey = click.option("--pubkey", default=None, type=click.Path(dir_okay=False, exists=True),
                       help="verify key to check signatures with (hex, as in verify.key)")


@audit.command("verify")
@_data_dir
@_origin
@_pubkey
def verify(data_dir: str, origin: str | None, pubkey: str | None) -> None:
    """Check chain hashes, seq continuity and checkpoint signatures; name the first broken
    record. Exit 0 if intact — the last line, ``verdict: signed`` or ``verdict: unsigned
    tail`` (records after the last checkpoint, normal on a live node), says how far the
    signatures reach — and 5 on tampering."""
    from ..audit import fingerprint, verify_log

    directory = _log_dir(data_dir, origin)
    key, how = _key(directory, pubkey)
    report = verify_log(directory, key)
    resumed_here = bool(report.resumed) and report.resumed[0][0] == report.first_seq
    pruned = (f"; records before {report.first_seq} removed by retention"
              if report.first_seq > 1 and not resumed_here else "")
    click.echo(f"ok: audit log of {report.node} in {directory}: seq {report.first_seq}.."
               f"{report.last_seq} ({report.records} records, {report.checkpoints} checkpoints, "
               f"{report.segments} segments), last at {_when(report.last_time_ns)}, "
               f"last hash {report.last_hash.hex()[:16]}{pruned}")
    click.echo(f"signatures checked with {how}, fingerprint {fingerprint(key)}")
    for line in continuity(report):
        click.echo(line)
    click.echo(verdict(report))


def continuity(report: VerifyReport) -> list[str]:
    """How the log went on across a replaced disk (see hdsd.node._continuity): the node
    resumed its chain after the other site's copy, under the same signing key."""
    lines = []
    for seq, note in report.resumed:
        lines.append(f"continuity: seq {seq}: the node {note}; the chain and the key go on "
                     "(every checkpoint after it is signed by the same key)")
    if report.resumed and report.first_seq == report.resumed[0][0]:
        lines.append(f"continuity: records 1..{report.first_seq - 1} are in the other site's "
                     f"copy: verify it there with --origin {report.node}")
    return lines


def verdict(report: VerifyReport, now_ns: int | None = None) -> str:
    """The one line that tells a fully signed log from one with an unsigned tail."""
    if report.fully_signed:
        return (f"verdict: signed: every record up to seq {report.last_seq} is covered by the "
                f"checkpoint at seq {report.signed_seq}")
    signed = (f"verified up to checkpoint seq {report.signed_seq}" if report.signed_seq else
              "no checkpoint yet")
    parts = []
    if report.unsigned_records:
        age = ((now_ns if now_ns is not None else time.time_ns()) - report.unsigned_since_ns)
        after = " after it" if report.signed_seq else ""
        parts.append(f"{report.unsigned_records} records{after} (seq "
                     f"{report.last_seq - report.unsigned_records + 1}..{report.last_seq}) not "
                     f"yet checkpointed, the oldest {max(age, 0) / 1e9:.0f} s old")
    if report.torn_bytes:
        parts.append(f"an incomplete record of {report.torn_bytes} bytes at the end (being "
                     "written, or cut by a crash)")
    return (f"verdict: unsigned tail: {signed}; {'; '.join(parts)}. Normal on a live node or on "
            "a copy whose origin has not shipped its next checkpoint; nothing after the "
            "checkpoint is proven yet: verify again later (a live node signs within "
            "checkpoint_s), or compare with the other site's copy")


def _since(value: str | None) -> int:
    if value is None:
        return 0
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r}: expected an ISO date such as 2026-01-31 or "
                          "2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


@audit.command("export")
@_data_dir
@click.option("--tenant", required=True, help="export this tenant's records")
@click.option("--since", default=None, metavar="DATE", help="only records at or after (UTC)")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl",
              show_default=True)
@_origin
@_pubkey
@click.option("--config", "config_path", default=None,
              type=click.Path(dir_okay=False, exists=True),
              help="a node.toml whose master key and catalog open the tenant's sealed bucket "
                   "and key names (without it they are printed sealed)")
def export(data_dir: str, tenant: str, since: str | None, fmt: str, origin: str | None,
           pubkey: str | None, config_path: str | None) -> None:
    """Print a tenant's audit records as JSON lines (verifying the log first). Bucket and key
    names are sealed under the tenant's key in the log: --config opens them."""
    from ..audit import SEALED_PREFIX, open_audit_names, read_records, verify_log

    directory = _log_dir(data_dir, origin)
    seal = None
    if config_path is not None:
        from ..node import load_node_config, offline_name_seal
        seal = offline_name_seal(load_node_config(Path(config_path)), tenant)
    key, _ = _key(directory, pubkey)
    report = verify_log(directory, key)
    if not report.fully_signed:
        click.echo(f"hdsd: note: {verdict(report)}", err=True)
    floor = _since(since)
    out = sys.stdout
    for record in read_records(directory):
        if record.kind != "request" or record.time_ns < floor:
            continue
        doc = {**record.to_json(), "time": _when(record.time_ns)}
        names: tuple[str, str] | None = None
        if seal is not None and record.bucket.startswith(SEALED_PREFIX) \
                and record.bucket != SEALED_PREFIX + "-":  # "-": nothing could seal them
            try:
                names = open_audit_names(seal, tenant, record.bucket, record.key)
            except HdsdError:
                names = None  # sealed under another tenant's key (an operator's request)
        if names is not None:
            doc["bucket"], doc["key"] = names
        # The tenant's own requests, and (with its key) those of others on its objects: an
        # operator's hold or retention lock on them, whose names only its key opens.
        if record.tenant == tenant or names is not None:
            out.write(json.dumps(doc, sort_keys=True) + "\n")


@audit.command("pubkey")
@_data_dir
def pubkey_cmd(data_dir: str) -> None:
    """Print the node's audit verify key (to pin it) and its fingerprint."""
    from ..audit import VERIFY_KEY_FILE, fingerprint, read_verify_key

    directory = _log_dir(data_dir, None)
    key = read_verify_key(directory / VERIFY_KEY_FILE)
    click.echo(f"{key.hex()}  fingerprint {fingerprint(key)}")
