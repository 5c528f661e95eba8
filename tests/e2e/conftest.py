from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import NodeProcess, init_cluster


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    init_cluster(root)
    return root


@pytest.fixture(scope="module")
def node(cluster_dir: Path) -> Iterator[NodeProcess]:
    """The node clients talk to (site dc1), with its replica in site dc2 running too."""
    other = NodeProcess(cluster_dir / "dc2-n1" / "node.toml").start()
    proc = NodeProcess(cluster_dir / "dc1-n1" / "node.toml").start()
    try:
        yield proc
    finally:
        proc.kill()
        other.kill()


@pytest.fixture
def profile(cluster_dir: Path, node: NodeProcess) -> Path:
    assert node.alive, node.log()
    return cluster_dir / "client.toml"
