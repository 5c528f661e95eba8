"""Local users: a node's data is its own (issue 13, finding 8).

With the most common umask (022), ``hdsd init`` and a serving node create every data directory
0700 and every data file 0600 — store, indexes, catalog, hints, Merkle snapshot, audit — and a
node refuses to start, with one line and exit 2, on a data directory open to others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import hdsd
from tests.helpers.cluster import hdsd as run_cli
from tests.helpers.cluster import init_cluster, start_all

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    old = os.umask(0o022)  # the processes below inherit it
    try:
        root = tmp_path_factory.mktemp("cluster")
        init_cluster(root)
        yield root
    finally:
        os.umask(old)


def test_data_is_private_whatever_the_umask(cluster_dir: Path) -> None:
    old = os.umask(0o022)
    nodes = start_all([cluster_dir / n / "node.toml" for n in ("dc2-n1", "dc1-n1")])
    try:
        with hdsd.Client(cluster_dir / "client.toml") as client:
            for i in range(5):
                client.put("private", f"patient-{i}", os.urandom(200_000))
            client.start_maintenance("repair")  # writes the Merkle snapshot
            client.status()
    finally:
        for n in nodes:
            n.stop()
        os.umask(old)
    for data in cluster_dir.glob("*/data"):
        seen = {p.name for p in data.rglob("*")}
        for expected in ("index.sqlite3", "catalog.sqlite", "hints.sqlite", "merkle-trees.bin"):
            assert expected in seen, (expected, sorted(seen))
        for path in [data, *data.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & 0o077 == 0, f"{path} is {mode:04o}"


def test_node_refuses_a_data_dir_open_to_others(cluster_dir: Path) -> None:
    data = cluster_dir / "dc1-n1" / "data"
    data.chmod(0o755)
    try:
        proc = run_cli("serve", "--config", str(cluster_dir / "dc1-n1" / "node.toml"),
                       timeout=60)
    finally:
        data.chmod(0o700)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("hdsd: error: "), err
    assert f"chmod 700 {data}" in err
