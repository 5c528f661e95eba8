"""``hdsd export`` and ``hdsd import``: a tenant's data out of and into a cluster, as a tar.

A file output is written as ``OUT.partial`` and renamed only when complete, so a file named
like the export is always a whole one; likewise the import's ``--report``. On standard output
a failed export stops without the tar's end-of-archive blocks, which every reader reports.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import click

from .._errors import InvalidRequest
from ..client import AsyncClient, export_tenant, import_archive
from ._data import _run, json_option
from ._main import main

_MIB = 1 << 20


class _Status:
    """One self-overwriting progress line on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        self._on = sys.stderr.isatty()
        self._shown = False

    def line(self, text: str) -> None:
        if self._on:
            sys.stderr.write(f"\r\x1b[K{text}")
            sys.stderr.flush()
            self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def export(self, phase: str, done: int, total: int) -> None:
        if phase == "hash":
            self.line(f"export: hashing {done / _MIB:,.1f} MiB")
        else:
            self.line(f"export: writing {done / _MIB:,.1f} / {total / _MIB:,.1f} MiB")

    def load(self, done: int, total: int) -> None:
        self.line(f"import: {done / _MIB:,.1f} / {total / _MIB:,.1f} MiB")


class _AtomicOutput:
    """A file written as ``PATH.partial``, renamed to PATH by :meth:`commit`, else removed."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.file: IO[bytes] = open(self.partial, "wb")  # closed by commit or abort
        except OSError as exc:
            raise InvalidRequest(f"{self.partial}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


def _echo_summary(summary: Any, as_json: bool, text: str, to_stderr: bool) -> None:
    if as_json:
        doc = {f: getattr(summary, f) for f in summary.__dataclass_fields__}
        click.echo(json.dumps(doc, sort_keys=True), err=to_stderr)
    else:
        click.echo(text, err=to_stderr)


_without_retention = click.option(
    "--without-retention", is_flag=True,
    help="leave out the buckets' retention locks and the legal holds (they need the tenant's "
         "admin role)")


@main.command("export")
@click.argument("tenant")
@click.argument("output", metavar="OUT.tar|-")
@_without_retention
@click.option("--spool", "spool", default=None, metavar="DIR",
              type=click.Path(file_okay=False, exists=True, writable=True),
              help="read every object from the cluster once, not twice, keeping a copy in "
                   "DIR until it is in the tar (needs free space there for the tenant's data; "
                   "the fastest restore)")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, tenant: str, output: str, without_retention: bool,
               spool: str | None, as_json: bool) -> None:
    """Write every bucket, key and version of TENANT — original bytes, metadata, delete
    markers, and a manifest with SHA-256 of every object — as a tar to OUT.tar or standard
    output. TENANT must be the tenant of the profile's certificate (a client only ever sees
    its own tenant). The buckets' retention locks and the legal holds are carried too (role
    admin; see --without-retention). The format is in docs/export-format.md: tar and
    sha256sum read it."""
    if output == "-" and sys.stdout.isatty():
        raise InvalidRequest("refusing to write a tar to a terminal; give a file or a pipe")
    status = _Status()
    target: _AtomicOutput | None = None
    out: IO[bytes] = sys.stdout.buffer
    if output != "-":
        target = _AtomicOutput(output)
        out = target.file

    async def go(c: AsyncClient) -> Any:
        return await export_tenant(c, out, tenant=tenant, progress=status.export,
                                   retention=not without_retention,
                                   spool=Path(spool) if spool is not None else None)
    try:
        summary = _run(ctx, go, tune=True)
    except BaseException:
        if target is not None:
            target.abort()
        raise
    finally:
        status.close()
    if target is not None:
        target.commit()
    _echo_summary(summary, as_json,
                  f"exported tenant {summary.tenant}: {summary.buckets} buckets, {summary.keys} "
                  f"keys, {summary.versions} versions ({summary.objects} objects, "
                  f"{summary.delete_markers} delete markers), {summary.total_bytes} bytes, "
                  f"{summary.retention_locks} retention locks, {summary.holds} legal holds",
                  to_stderr=output == "-")


@main.command("import")
@click.argument("source", metavar="IN.tar|-")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="write the old → new version id map here (JSON lines), only on success")
@_without_retention
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, source: str, report_path: str | None,
               without_retention: bool, as_json: bool) -> None:
    """Load an export (a file or standard input) into the tenant of the profile's certificate.
    Versions are recreated oldest first (the current version stays current) with new version
    ids; every object is checked against the manifest's SHA-256 before it is stored. Re-running
    an interrupted import stores nothing twice. Each version keeps its original write time as
    metadata hdsd-original-created. The export's retention locks and legal holds are set once
    every version is stored (role admin; see --without-retention)."""
    if source != "-" and not os.path.isfile(source):
        raise InvalidRequest(f"{source}: no such file")
    status = _Status()
    report = _AtomicOutput(report_path) if report_path else None

    async def go(c: AsyncClient) -> Any:
        if source == "-":
            return await import_archive(c, sys.stdin.buffer,
                                        report=report.file if report else None,
                                        progress=status.load, retention=not without_retention)
        with open(source, "rb") as f:
            return await import_archive(c, f, report=report.file if report else None,
                                        progress=status.load, retention=not without_retention)
    try:
        summary = _run(ctx, go)
    except BaseException:
        if report is not None:
            report.abort()
        raise
    finally:
        status.close()
    if report is not None:
        report.commit()
    _echo_summary(summary, as_json,
                  f"imported {summary.versions} versions ({summary.objects} objects, "
                  f"{summary.total_bytes} bytes, {summary.delete_markers} delete markers) from "
                  f"tenant {summary.source_tenant} of {summary.source_cluster} into tenant "
                  f"{summary.tenant}"
                  + (f"; {summary.replayed} already stored by an earlier run"
                     if summary.replayed else "")
                  + (f"; {summary.skipped} delete markers had nothing to delete"
                     if summary.skipped else "")
                  + (f"; {summary.retention_locks} retention locks and {summary.holds} legal "
                     "holds set" if summary.retention_locks or summary.holds else ""),
                  to_stderr=False)
