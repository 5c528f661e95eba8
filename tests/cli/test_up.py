"""`hdsd up`: the README's first command, run for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hdsd
from tests.helpers.cluster import free_ports

pytestmark = pytest.mark.e2e


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdsd", "up", str(tmp_path / "data"), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while not any("hdsd is up" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stdout.readline().decode())
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
