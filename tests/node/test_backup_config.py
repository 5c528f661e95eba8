"""Backup nodes in configuration: `hdsd init --backup-nodes-per-site`, the role's one source
of truth ([[sites]]) and its checks, and the annotated example configs/backup-role.toml."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from hdsd import ConfigError
from hdsd.catalog import create_master_key
from hdsd.client import load_profile
from hdsd.node import load_node_config
from hdsd.transport import create_ca, issue_node_cert
from tests.helpers.cluster import init_cluster

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("backup-cfg")
    init_cluster(root, backup_nodes_per_site=1)
    return root


def test_init_writes_backup_nodes(cluster: Path) -> None:
    backup = load_node_config(cluster / "dc2-b1" / "node.toml")
    storage = load_node_config(cluster / "dc2-n1" / "node.toml")
    assert (backup.role, storage.role) == ("backup", "storage")
    assert backup.layout() == storage.layout()  # same [[sites]], so the same layout id
    roles = {n.name: n.role for n in backup.layout().nodes}
    assert roles == {"dc1-n1": "storage", "dc2-n1": "storage", "dc1-b1": "backup",
                     "dc2-b1": "backup"}
    assert backup.cert.is_file() and (cluster / "dc2-b1" / "data" / "keyring.hdsd").is_file()
    # Clients write through storage nodes: the admin profile lists only those.
    profile = tomllib.loads((cluster / "client.toml").read_text())
    ports = {n.name: n.port for n in backup.layout().nodes}
    assert profile["sites"]["dc1"]["endpoints"] == [f"127.0.0.1:{ports['dc1-n1']}"]
    assert profile["sites"]["dc2"]["endpoints"] == [f"127.0.0.1:{ports['dc2-n1']}"]
    # ... and names the backup nodes apart, for the commands that visit every node (repair).
    assert profile["sites"]["dc2"]["backup_endpoints"] == [f"127.0.0.1:{ports['dc2-b1']}"]
    loaded = load_profile(cluster / "client.toml")
    assert loaded.backup_sites == {"dc1": (("127.0.0.1", ports["dc1-b1"]),),
                                   "dc2": (("127.0.0.1", ports["dc2-b1"]),)}


@pytest.mark.parametrize(("node", "old", "new", "expect"), [
    # [node] role disagreeing with the node's [[sites]] entry
    ("dc2-b1", 'role = "backup"                 #', 'role = "storage"                #',
     "[node] role: 'storage' disagrees"),
    ("dc1-n1", 'site = "dc1"\n', 'site = "dc1"\nrole = "backup"\n',
     "[node] role: 'backup' disagrees"),
    # an unknown role in [[sites]]
    ("dc1-n1", 'role = "backup" }]', 'role = "archive" }]', "role 'archive' must be one of"),
])
def test_role_mistakes_are_one_line(cluster: Path, tmp_path: Path, node: str, old: str,
                                    new: str, expect: str) -> None:
    text = (cluster / node / "node.toml").read_text()
    assert old in text, old
    variant = cluster / node / f"variant-{tmp_path.name}.toml"
    variant.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_node_config(variant)
    assert expect in str(info.value)


def test_backup_role_example_loads(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca", "hdsd-chu-lyon")
    crt, key = issue_node_cert(tmp_path / "ca", tmp_path, name="lyon-sud-b1", site="lyon-sud")
    create_master_key(tmp_path / "master.key")
    text = (CONFIGS / "backup-role.toml").read_text()
    for old, new in {"/etc/hdsd/ca.crt": tmp_path / "ca" / "ca.crt",
                     "/etc/hdsd/node-lyon-sud-b1.crt": crt,
                     "/etc/hdsd/node-lyon-sud-b1.key": key,
                     "/etc/hdsd/master.key": tmp_path / "master.key",
                     "/var/lib/hdsd": tmp_path / "data"}.items():
        assert old in text
        text = text.replace(old, str(new))
    copy = tmp_path / "backup-role.toml"
    copy.write_text(text)
    config = load_node_config(copy)
    layout = config.layout()
    assert config.role == "backup" and config.site == "lyon-sud"
    assert layout.sites_without_backup() == []
    assert sorted(n.name for n in layout.nodes if n.role == "backup") == [
        "lyon-est-b1", "lyon-sud-b1"]
    shutil.rmtree(tmp_path / "data")
