"""A test PKI shared by the whole transport suite: two CAs (ours and a stranger's) with node and
client certificates, generated once per session (EC keys make this a few milliseconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hdsd.transport import create_ca, issue_client_cert, issue_node_cert


@dataclass(frozen=True, slots=True)
class Pki:
    ca_dir: Path
    ca: Path                       # our ca.crt
    node_a: tuple[Path, Path]      # (cert, key): node "a" in site "s1"
    node_b: tuple[Path, Path]      # node "b" in site "s2"
    client: tuple[Path, Path]      # client "alice", tenant "t1", role "writer"
    other_ca_dir: Path
    other_ca: Path
    other_node: tuple[Path, Path]  # same names, issued by the stranger's CA
    other_client: tuple[Path, Path]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ca", "c1")
    create_ca(root / "other-ca", "c1")
    out = root / "certs"
    other = root / "other-certs"
    return Pki(
        ca_dir=root / "ca",
        ca=root / "ca" / "ca.crt",
        node_a=issue_node_cert(root / "ca", out, name="a", site="s1"),
        node_b=issue_node_cert(root / "ca", out, name="b", site="s2"),
        client=issue_client_cert(root / "ca", out, name="alice", tenant="t1", role="writer"),
        other_ca_dir=root / "other-ca",
        other_ca=root / "other-ca" / "ca.crt",
        other_node=issue_node_cert(root / "other-ca", other, name="a", site="s1"),
        other_client=issue_client_cert(
            root / "other-ca", other, name="alice", tenant="t1", role="writer"
        ),
    )
