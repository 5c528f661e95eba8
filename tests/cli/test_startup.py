"""A client command starts without the node's packages.

``hdsd export`` (or get, put, ls) talks to a node as a client: importing the node, its S3
gateway, metrics, catalog, store and audit log cost most of a second of CPU before the first
byte (measured with ``python -X importtime -m hdsd --help``). The CLI imports them in the
commands that use them; this holds it, from the real command's ``-X importtime`` output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Server-side packages a client command must not import.
NODE_SIDE = ["node", "s3", "catalog", "store", "audit", "repair", "replication", "peers",
             "pipeline"]


def _imported(*args: str) -> set[str]:
    """The ``hdsd.*`` packages and modules the real CLI imported for *args*."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hdsd", *args],
                          capture_output=True, timeout=120, env={**os.environ,
                                                                "HDSD_PROFILE": ""})
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "hdsd.cli" in names, proc.stderr.decode()[-2000:]
    return {n for n in names if n.startswith("hdsd.")}


@pytest.mark.parametrize("args", [
    ("--help",),
    ("export", "--help"),
    # The command's body runs (and fails: no such profile) after its imports.
    ("--profile", "/nonexistent/hdsd-profile.toml", "export", "t", "-"),
    ("--profile", "/nonexistent/hdsd-profile.toml", "get", "b/k"),
])
def test_client_commands_do_not_import_the_node(args: tuple[str, ...]) -> None:
    imported = _imported(*args)
    assert "hdsd.client" in imported or args[-1] == "--help"
    assert sorted(n for n in imported if n.split(".")[1] in NODE_SIDE) == []


def test_a_node_command_still_finds_its_packages(tmp_path: Path) -> None:
    # `hdsd init` imports the node package in its body: a cluster is written as before.
    imported = _imported("init", str(tmp_path / "c"), "--ports", "7001,7002")
    assert "hdsd.node" in imported
    assert (tmp_path / "c" / "client.toml").is_file()
