"""Two separate clusters of real processes: the source (2 nodes per site, so listings merge
across nodes) and the target (1 node per site); a fresh target tenant per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import NodeProcess, hdsd, init_cluster


def _start(root: Path) -> list[NodeProcess]:
    procs: list[NodeProcess] = []
    try:
        for config in sorted(root.glob("*/node.toml")):
            procs.append(NodeProcess(config).start())
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The admin profile (tenant ``default``) of a 2 x 2 cluster."""
    root = tmp_path_factory.mktemp("source")
    profile = init_cluster(root, nodes_per_site=2)
    procs = _start(root)
    try:
        yield profile
    finally:
        for p in procs:
            p.kill()


@pytest.fixture(scope="module")
def target_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("target")
    init_cluster(root)
    for config in root.glob("*/node.toml"):
        # An upload the client abandons without telling the node would hold its request id
        # this long: the tests see the client's Cancel instead.
        config.write_text(config.read_text() + "\n[limits]\nrequest_timeout_s = 3600\n")
    procs = _start(root)
    try:
        yield root
    finally:
        for p in procs:
            p.kill()


_tenants = itertools.count(1)


def new_tenant(root: Path) -> Path:
    """A writer profile of the cluster in *root* for a tenant no other test uses."""
    name = f"imp{next(_tenants)}"
    hdsd("cert", "issue", "--client", name, "--tenant", name, "--role", "writer",
         "--cluster-dir", str(root), check=True)
    return root / "clients" / f"{name}.toml"


@pytest.fixture
def target(target_root: Path) -> Path:
    """A profile of the target cluster for a tenant no other test uses."""
    return new_tenant(target_root)
