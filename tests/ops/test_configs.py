"""The operator files in configs/ keep working: the local example loads in a real `hdsd init`
tree, and the systemd unit has the keys that matter (and passes systemd-analyze when the
machine has it)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hdsd.node import load_node_config
from tests.helpers.cluster import init_cluster

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_two_site_local_loads_in_an_init_tree(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    node_dir = tmp_path / "dc1-n1"
    shutil.copy(CONFIGS / "two-site-local.toml", node_dir / "node.toml")
    config = load_node_config(node_dir / "node.toml")
    assert (config.name, config.site, config.port) == ("dc1-n1", "dc1", 7400)
    assert config.data_dir == node_dir / "data"
    assert config.master_key_file == node_dir / "master.key"  # the bundle's own copy
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9400)
    assert (config.log_format, config.write_policy) == ("text", "each-site")
    assert [n.name for n in config.layout().nodes] == ["dc1-n1", "dc2-n1"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  (keys are CamelCase)
    parser.read(CONFIGS / "hdsd.service")
    return parser


def test_systemd_unit(tmp_path: Path) -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["User"] == "hdsd" and service["KillSignal"] == "SIGTERM"
    assert int(service["LimitNOFILE"]) >= 4096
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    argv = service["ExecStart"].split()
    assert argv[1:3] == ["serve", "--config"]
    # The stop timeout leaves the graceful stop its whole grace period.
    production = tomllib.loads((CONFIGS / "production-two-site.toml").read_text())
    assert int(service["TimeoutStopSec"]) > production["limits"]["shutdown_grace_s"]
    assert "/var/lib/hdsd" in service["ReadWritePaths"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        # verify wants ExecStart to exist: point it at this environment's hdsd.
        hdsd_bin = Path(sys.executable).with_name("hdsd")
        copy = tmp_path / "hdsd.service"
        copy.write_text((CONFIGS / "hdsd.service").read_text()
                        .replace(argv[0], str(hdsd_bin)))
        proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["production-two-site.toml", "two-site-local.toml"])
def test_examples_declare_metrics_and_log(name: str) -> None:
    raw = tomllib.loads((CONFIGS / name).read_text())
    assert raw["metrics"]["address"] and raw["log"]["format"] in ("text", "json")
