"""Users' commands: put, get, ls, stat, rm, versions, status."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from .._alloc import tune_allocator
from .._errors import InvalidRequest
from ..client import AsyncClient, ObjectInfo, load_profile
from ..cluster import HybridClock
from ..wire import SiteModeSet
from ._main import main

T = TypeVar("T")


def _split(target: str, *, key_required: bool = True) -> tuple[str, str]:
    bucket, _, key = target.partition("/")
    if not bucket or (key_required and not key):
        raise InvalidRequest(f"{target!r}: expected BUCKET/KEY")
    return bucket, key


def _run(ctx: click.Context, fn: Callable[[AsyncClient], Awaitable[T]], *,
         tune: bool = False) -> T:
    """``fn(client)`` on a client of the command line's profile and site. *tune*: a command
    that receives objects' bytes (get, export) tunes the allocator first (the CLI owns its
    process): each megabyte read otherwise costs ~130 page faults, ~0.6 ms of CPU per MiB of
    a get (docs/performance.md, eighth round — client). Puts were measured without a fault
    to save, and the other commands move little: they leave the allocator as it is."""
    obj = ctx.find_root().obj
    if tune:
        tune_allocator()

    async def go() -> T:
        async with AsyncClient(obj["profile"], site=obj["site"], timeout=obj["timeout"]) as c:
            return await fn(c)

    return trio.run(go)


def _when(hlc: int) -> str:
    ms = HybridClock.wall_ms(hlc)
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _print_info(info: ObjectInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), sort_keys=True))
        return
    click.echo(f"{info.bucket}/{info.key}")
    click.echo(f"  version       {info.version}{'  (delete marker)' if info.deleted else ''}")
    click.echo(f"  size          {info.size}")
    click.echo(f"  written       {_when(info.hlc)} by {info.node}")
    if info.content_hash:
        click.echo(f"  content hash  {info.content_hash}")
    for k, v in sorted(info.metadata.items()):
        click.echo(f"  meta {k} = {v}")


PROGRESS_MIN_BYTES = 4 << 20  # smaller transfers end before a bar would tell anything


class _Progress:
    """A progress bar on stderr when it is a terminal and the transfer is large; silent
    otherwise (scripts, pipes, logs get no control characters)."""

    def __init__(self, total: int | None, label: str) -> None:
        self._bar: Any = None
        self._done = 0
        if sys.stderr.isatty() and total and total >= PROGRESS_MIN_BYTES:
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self._bar.__enter__()

    def __call__(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@main.command()
@click.argument("target", metavar="BUCKET/KEY")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--meta", "meta", multiple=True, metavar="NAME=VALUE", help="user metadata")
@click.option("--request-id", default=None, metavar="HEX32",
              help="idempotency id: running the command again with the same id stores once, "
                   "the first attempt looked for at both sites")
@json_option
@click.pass_context
def put(ctx: click.Context, target: str, source: str, meta: tuple[str, ...],
        request_id: str | None, as_json: bool) -> None:
    """Store FILE (or standard input) as BUCKET/KEY."""
    bucket, key = _split(target)
    metadata = {}
    for item in meta:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidRequest(f"--meta {item!r}: expected NAME=VALUE")
        metadata[name] = value
    rid = None
    if request_id is not None:
        try:
            rid = bytes.fromhex(request_id)
            if len(rid) != 16:
                raise ValueError
        except ValueError:
            raise InvalidRequest("--request-id must be 32 hex digits") from None
    data: Any = sys.stdin.buffer if source == "-" else Path(source)
    if source != "-" and not os.path.isfile(source):
        raise InvalidRequest(f"{source}: no such file")
    total = None if source == "-" else os.path.getsize(source)
    progress = _Progress(total, f"put {target}")
    try:
        # A script passing its own id runs it again after an unknown outcome: each run is
        # sent as a retry, so a first attempt that reached only the other site is found.
        info = _run(ctx, lambda c: c.put(bucket, key, data, metadata=metadata, request_id=rid,
                                         progress=progress, retry=rid is not None))
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(info.as_dict(), sort_keys=True))
    else:
        click.echo(f"stored {info.bucket}/{info.key} version {info.version} ({info.size} bytes)"
                   + (" (already stored by an earlier attempt)" if info.replayed else ""))


def _parse_range(text: str | None) -> tuple[int | None, int | None]:
    """``--range FIRST-LAST`` (inclusive, as HTTP and S3 ranges) as the clients' ``(offset,
    length)``; ``FIRST-`` reads to the end."""
    if text is None:
        return None, None
    first, sep, last = text.partition("-")
    try:
        if not sep or not first:
            raise ValueError
        offset = int(first)
        length = int(last) - offset + 1 if last else None
        if offset < 0 or (length is not None and length < 1):
            raise ValueError
    except ValueError:
        raise InvalidRequest(f"--range {text!r}: expected FIRST-LAST or FIRST- "
                             "(byte offsets, inclusive)") from None
    return offset, length


@main.command()
@click.argument("target", metavar="BUCKET/KEY")
@click.option("-o", "--output", default="-", metavar="FILE|-",
              help="where to write (default stdout)")
@click.option("--version", "version", default=None, help="a version id (default: current)")
@click.option("--range", "byte_range", default=None, metavar="FIRST-LAST",
              help="inclusive byte range, e.g. 0-1023 or 4096-")
@click.option("--to-dir", "to_dir", default=None, metavar="DIR",
              help="TARGET is BUCKET[/PREFIX]: write the current version of every key under "
                   "it to DIR/<key>, read in bulk")
@click.pass_context
def get(ctx: click.Context, target: str, output: str, version: str | None,
        byte_range: str | None, to_dir: str | None) -> None:
    """Read BUCKET/KEY to standard output or a file (or a whole prefix: --to-dir)."""
    if to_dir is not None:
        if version is not None or byte_range is not None or output != "-":
            raise InvalidRequest("--to-dir takes no --version, --range or --output")
        bucket, prefix = _split(target, key_required=False)
        files, size = _run(ctx, lambda c: c.get_to_dir(bucket, prefix, Path(to_dir)), tune=True)
        click.echo(f"{files} objects, {size} bytes written under {to_dir}", err=True)
        return
    bucket, key = _split(target)
    offset, length = _parse_range(byte_range)
    if output != "-":
        async def to_file(c: AsyncClient) -> None:
            st = await c.stat(bucket, key, version=version)
            progress = _Progress(st.size, f"get {target}")
            try:
                await c.get_to_file(bucket, key, output, version=version or st.version,
                                    offset=offset, length=length, progress=progress)
            finally:
                progress.close()
        _run(ctx, to_file, tune=True)
        return

    out = sys.stdout.buffer

    async def to_stdout(c: AsyncClient) -> None:
        async with c.open_get(bucket, key, version=version, offset=offset,
                              length=length) as stream:
            progress = _Progress(stream.end - stream.start, f"get {target}")
            try:
                async for piece in stream:
                    await trio.to_thread.run_sync(out.write, piece)
                    progress(stream.received)
            finally:
                progress.close()
        await trio.to_thread.run_sync(out.flush)
    _run(ctx, to_stdout, tune=True)


@main.command("ls")
@click.argument("target", metavar="BUCKET[/PREFIX]")
@click.option("--versions", is_flag=True, help="every version, delete markers included")
@json_option
@click.pass_context
def ls(ctx: click.Context, target: str, versions: bool, as_json: bool) -> None:
    """List keys (current versions) of BUCKET starting with PREFIX."""
    bucket, prefix = _split(target, key_required=False)

    # Printed page by page as they arrive (following `next`): memory stays one page however
    # long the listing; an error on a later page ends the output there, with its exit code.
    async def show(c: AsyncClient) -> None:
        async for e in c.list_all(bucket, prefix, versions=versions):
            if as_json:
                click.echo(json.dumps(e.as_dict(), sort_keys=True))
            elif versions:
                click.echo(f"{_when(e.hlc)}  {e.size:>12}  {e.version}  {e.key}"
                           + ("  (deleted)" if e.deleted else ""))
            else:
                click.echo(f"{_when(e.hlc)}  {e.size:>12}  {e.key}")
    _run(ctx, show)


@main.command()
@click.argument("target", metavar="BUCKET/KEY")
@click.option("--version", "version", default=None)
@json_option
@click.pass_context
def stat(ctx: click.Context, target: str, version: str | None, as_json: bool) -> None:
    """Show the size, version and metadata of BUCKET/KEY."""
    bucket, key = _split(target)
    _print_info(_run(ctx, lambda c: c.stat(bucket, key, version=version)), as_json)


@main.command()
@click.argument("target", metavar="BUCKET/KEY")
@click.option("--version-id", "version", default=None,
              help="delete this version (or delete marker) for good, once no legal hold or "
                   "retention protects it")
@json_option
@click.pass_context
def rm(ctx: click.Context, target: str, version: str | None, as_json: bool) -> None:
    """Delete BUCKET/KEY: writes a delete marker (every version stays); with --version-id,
    deletes that one version for good, at both sites."""
    bucket, key = _split(target)
    info = _run(ctx, lambda c: c.delete(bucket, key, version=version))
    if as_json:
        click.echo(json.dumps(info.as_dict(), sort_keys=True))
    elif version is not None:
        what = "delete marker" if info.deleted else "version"
        click.echo(f"purged {bucket}/{key} {what} {info.version}")
    else:
        click.echo(f"deleted {bucket}/{key} (delete marker {info.version})")


@main.command()
@click.argument("target", metavar="BUCKET/KEY")
@json_option
@click.pass_context
def versions(ctx: click.Context, target: str, as_json: bool) -> None:
    """List every version of BUCKET/KEY, oldest first."""
    bucket, key = _split(target)
    for v in _run(ctx, lambda c: c.versions(bucket, key)):
        if as_json:
            click.echo(json.dumps(v.as_dict(), sort_keys=True))
        else:
            click.echo(f"{_when(v.hlc)}  {v.size:>12}  {v.version}"
                       + ("  (delete marker)" if v.deleted else ""))


@main.group()
def site() -> None:
    """Degrade or restore a site (admin)."""


def _set_mode(ctx: click.Context, site_name: str, mode: str, reason: str, as_json: bool) -> None:
    obj = ctx.find_root().obj
    profile = load_profile(obj["profile"])
    endpoints = profile.endpoints(site_name)

    async def go() -> list[SiteModeSet]:
        replies = []
        # Every node of the site must switch: talk to each endpoint in turn.
        for host, port in endpoints:
            async with AsyncClient(profile.pinned(site_name, host, port),
                                   timeout=obj["timeout"]) as c:
                replies.append(await c.set_site_mode(site_name, mode, reason))
        return replies
    for reply in trio.run(go):
        if as_json:
            click.echo(json.dumps(reply, sort_keys=True))
        else:
            click.echo(f"{reply['node']}: {reply['mode']} (write policy {reply['write_policy']})")


@site.command("degrade")
@click.argument("site_name", metavar="SITE")
@click.option("--reason", required=True, help="why (recorded and shown in hdsd status)")
@json_option
@click.pass_context
def site_degrade(ctx: click.Context, site_name: str, reason: str, as_json: bool) -> None:
    """Let SITE accept writes alone (policy local); every write is kept as a hint for the
    other site and replayed when it is back, then the site returns to normal by itself."""
    _set_mode(ctx, site_name, "degraded", reason, as_json)


@site.command("restore")
@click.argument("site_name", metavar="SITE")
@json_option
@click.pass_context
def site_restore(ctx: click.Context, site_name: str, as_json: bool) -> None:
    """Return SITE to the configured write policy now."""
    _set_mode(ctx, site_name, "normal", "restored by an operator", as_json)
