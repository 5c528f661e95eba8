"""``hdsd up``: a local two-site cluster in one command (initialised on first run)."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click

from .._errors import ConfigError, HdsdError
from ._admin import init
from ._main import main

_START_TIMEOUT = 60.0


class _Child:
    def __init__(self, config: Path) -> None:
        self.name = config.parent.name
        self.listening = threading.Event()
        self.last_line = ""
        self.s3: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hdsd", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)  # Ctrl-C reaches us; we stop the nodes in order
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.last_line = line
                if line.startswith("hdsd: s3 gateway on "):
                    self.s3.append(line.rsplit(" ", 1)[-1])
                if "listening on" in line:
                    self.listening.set()
                click.echo(f"[{self.name}] {line}", err=True)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hdsd_command() -> tuple[str, str]:
    """How to type ``hdsd`` in another terminal, and a hint line (or "") when that is not the
    bare word: a venv's ``bin/`` is on nobody's PATH until it is activated, so the banner of
    the README's install line must name the script itself."""
    script = Path(sys.executable).parent / "hdsd"
    if not script.is_file():  # run as `python -m hdsd` from a tree without the entry point
        return f"{shlex.quote(sys.executable)} -m hdsd", ""
    found = shutil.which("hdsd")
    if found is not None and Path(found).resolve() == script.resolve():
        return "hdsd", ""
    activate = script.parent / "activate"
    hint = "(hdsd is not on your PATH" + (
        f"; or first run: source {shlex.quote(str(activate))})" if activate.is_file() else ")")
    return shlex.quote(str(script)), hint


@main.command()
@click.argument("directory", default="hdsd-data", type=click.Path(file_okay=False))
@click.option("--base-port", type=click.IntRange(1024, 65000), default=7400, show_default=True,
              help="first node's port when initialising")
@click.pass_context
def up(ctx: click.Context, directory: str, base_port: int) -> None:
    """Run a local two-site cluster (one node per site) in DIRECTORY, creating it on the first
    run; stream both nodes' logs; Ctrl-C stops both cleanly."""
    root = Path(directory).resolve()
    if not (root / "cluster.toml").exists():
        ctx.invoke(init, directory=str(root), nodes_per_site=1, base_port=base_port,
                   ports=None, sites="dc1,dc2", host="127.0.0.1", tenant="default")
    configs = sorted(root.glob("*/node.toml"))
    if not configs:
        raise ConfigError(f"{root} has no node configurations (*/node.toml)")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    children = [_Child(cfg) for cfg in configs]
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        for child in children:
            while not child.listening.wait(0.1):
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    raise HdsdError(f"node {child.name} did not start: {child.last_line}")
        profile = root / "client.toml"
        cmd, hint = hdsd_command()
        click.echo(f"\nhdsd is up: {len(children)} nodes in {root}")
        click.echo(f"client profile: {profile}")
        if hint:
            click.echo(hint)
        click.echo("try, in another terminal:")
        click.echo(f"  export HDSD_PROFILE={shlex.quote(str(profile))}")
        click.echo(f"  echo 'hello' | {cmd} put demo/hello.txt -")
        click.echo(f"  {cmd} --site dc2 get demo/hello.txt     # read back from the other site")
        click.echo(f"  {cmd} status")
        for child in children:
            for url in child.s3:
                click.echo(f"S3 ({child.name}): {url}  (CA bundle: {root / 'ca' / 'ca.crt'}; keys: "
                           f"{cmd} s3 key create default --role writer)")
        click.echo("(Ctrl-C stops both nodes)\n")
        while not stopping.is_set():
            for child in children:
                if child.proc.poll() is not None:
                    raise HdsdError(f"node {child.name} exited ({child.proc.returncode}): "
                                    f"{child.last_line}")
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        click.echo("stopping both nodes...", err=True)
        for child in children:
            child.stop()
    click.echo("hdsd is down")
