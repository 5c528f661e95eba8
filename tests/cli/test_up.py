"""`hdsd up`: the README's first command, run for real."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hdsd
from hdsd.cli._up import hdsd_command
from tests.helpers.cluster import free_ports
from tests.helpers.signals import default_sigint

pytestmark = pytest.mark.e2e


def _path_without(directory: Path) -> str:
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != directory.resolve())


def test_up_initialises_serves_and_stops_cleanly(tmp_path: Path) -> None:
    base = free_ports(1)[0]
    # Two consecutive free ports are likely but not certain; retry with another base if not.
    for _ in range(5):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                break
            except OSError:
                base = free_ports(1)[0]
    # As after the README's install line: the venv's bin/ is not on PATH.
    env = {**os.environ, "PATH": _path_without(Path(sys.executable).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdsd", "up", str(tmp_path / "data"), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        preexec_fn=default_sigint)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops both nodes" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stdout.readline().decode())
        # The banner's commands, pasted into a shell as they are printed, work.
        tried = [line[2:].rstrip("\n") for line in lines[lines.index("try, in another "
                                                                     "terminal:\n") + 1:]
                 if line.startswith("  ")]
        assert len(tried) == 4, lines
        # Each node's S3 gateway, on its port + 80.
        s3 = [line.split()[2] for line in lines if line.startswith("S3 (")]
        assert s3 == [f"https://127.0.0.1:{base + 80}", f"https://127.0.0.1:{base + 81}"], lines
        assert not any(t.split()[0] == "hdsd" for t in tried if "|" not in t), tried
        shell = subprocess.run(["bash", "-ec", "\n".join(tried)], env=env, capture_output=True,
                               timeout=120, stdin=subprocess.DEVNULL)
        assert shell.returncode == 0, (tried, shell.stderr.decode())
        assert b"hello\n" in shell.stdout
        profile = tmp_path / "data" / "client.toml"
        with hdsd.Client(profile) as c:
            c.put("demo", "hello.txt", b"hello\n")
        with hdsd.Client(profile, site="dc2") as c:
            assert c.get("demo", "hello.txt") == b"hello\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b"hdsd is down" in out
        assert b"[dc1-n1]" in err and b"[dc2-n1]" in err  # both logs, prefixed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # A second run reuses the data.
    assert (tmp_path / "data" / "cluster.toml").exists()
    assert os.path.isdir(tmp_path / "data" / "dc1-n1" / "data")


def test_banner_command_is_bare_hdsd_only_when_path_finds_this_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "hdsd").is_file()  # the test venv has the entry point
    monkeypatch.setenv("PATH", _path_without(bindir))
    cmd, hint = hdsd_command()
    assert cmd == shlex.quote(str(bindir / "hdsd")) and "not on your PATH" in hint
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{_path_without(bindir)}")
    assert hdsd_command() == ("hdsd", "")
