"""The example configurations in configs/ must keep loading (they are documentation)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hdsd.catalog import create_master_key
from hdsd.node import load_node_config
from hdsd.transport import create_ca, issue_node_cert

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("example", sorted(CONFIGS.glob("production-*.toml")), ids=lambda p: p.name)
def test_example_loads(example: Path, tmp_path: Path) -> None:
    # Point the example's files at real ones in a scratch directory, keep everything else.
    create_ca(tmp_path / "ca", "hdsd-chu-lyon")
    crt, key = issue_node_cert(tmp_path / "ca", tmp_path, name="lyon-est-1", site="lyon-est")
    create_master_key(tmp_path / "master.key")
    text = example.read_text()
    for old, new in {"/etc/hdsd/ca.crt": tmp_path / "ca" / "ca.crt",
                     "/etc/hdsd/node-lyon-est-1.crt": crt,
                     "/etc/hdsd/node-lyon-est-1.key": key,
                     "/etc/hdsd/master.key": tmp_path / "master.key",
                     "/var/lib/hdsd": tmp_path / "data"}.items():
        assert old in text
        text = text.replace(old, str(new))
    copy = tmp_path / example.name
    copy.write_text(text)
    config = load_node_config(copy)
    layout = config.layout()
    assert config.replicas_per_site == 2 and len(layout.nodes) == 4
    assert {n.name: n.weight for n in layout.nodes}["lyon-sud-2"] == 2.0
    shutil.rmtree(tmp_path / "data")
