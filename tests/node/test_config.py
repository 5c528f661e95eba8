"""Node configuration: one clear line per mistake, no traceback, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdsd import ConfigError
from hdsd.node import load_node_config
from tests.helpers.cluster import hdsd, init_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cfg")
    init_cluster(root)
    return root


def _variant(cluster: Path, tmp_path: Path, old: str, new: str) -> Path:
    src = cluster / "dc1-n1" / "node.toml"
    text = src.read_text()
    assert old in text, old
    dst = cluster / "dc1-n1" / f"variant-{tmp_path.name}.toml"
    dst.write_text(text.replace(old, new))
    return dst


def test_generated_config_loads(cluster: Path) -> None:
    cfg = load_node_config(cluster / "dc1-n1" / "node.toml")
    assert cfg.name == "dc1-n1" and cfg.site == "dc1"
    assert [s.name for s in cfg.sites] == ["dc1", "dc2"]
    assert cfg.cert.is_file() and cfg.data_dir.is_dir()


@pytest.mark.parametrize(("old", "new", "expect"), [
    ('data_dir = "data"', 'data_dir = "data"\ncolour = "blue"', "[node] colour: unknown key"),
    ('listen = "127.0.0.1:', 'listen = "127.0.0.1:99999', "[node] listen: port"),
    ('cert = "node-dc1-n1.crt"', 'cert = "missing.crt"', "[tls] cert: file"),
    ("chunk_size = 1048576", "chunk_size = 12", "[cluster] chunk_size"),
    ("[keys]", "[keyz]", "[keyz]: unknown section"),
])
def test_each_mistake_is_one_line(cluster: Path, tmp_path: Path, old: str, new: str,
                                  expect: str) -> None:
    path = _variant(cluster, tmp_path, old, new)
    with pytest.raises(ConfigError) as exc:
        load_node_config(path)
    assert expect in str(exc.value)
    proc = hdsd("serve", "--config", str(path))
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert all(line.startswith("hdsd: error: ") for line in err.strip().splitlines())
    assert expect in err


def test_several_mistakes_reported_together(cluster: Path, tmp_path: Path) -> None:
    path = _variant(cluster, tmp_path, 'cert = "node-dc1-n1.crt"', 'cert = "nope.crt"\nbogus = 1')
    with pytest.raises(ConfigError) as exc:
        load_node_config(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 2


def test_uncreatable_data_dir(cluster: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = _variant(cluster, tmp_path, 'data_dir = "data"', f'data_dir = "{blocker}/sub"')
    with pytest.raises(ConfigError, match=r"\[node\] data_dir: cannot create"):
        load_node_config(path)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_node_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(bad)


def test_limits_are_read_and_checked(cluster: Path, tmp_path: Path) -> None:
    ok = _variant(cluster, tmp_path, "[tls]", "[limits]\nmax_requests_per_connection = 4\n"
                  "min_upload_rate_kib_s = 128\nidle_timeout_s = 30\nmalloc_trim_s = 10\n"
                  "max_body_mib_in_flight = 8\n\n[tls]")
    cfg = load_node_config(ok)
    assert (cfg.max_requests_per_connection, cfg.min_upload_rate_kib_s,
            cfg.idle_timeout_s, cfg.malloc_trim_s,
            cfg.max_body_mib_in_flight) == (4, 128.0, 30.0, 10.0, 8)
    default = load_node_config(cluster / "dc1-n1" / "node.toml")
    assert (default.malloc_trim_s, default.max_body_mib_in_flight) == (5.0, 32)
    bad = _variant(cluster, tmp_path, "[tls]", "[limits]\nmax_requests_per_connection = 128"
                   "\nmax_body_mib_per_connection = 64\npeer_slots = 0\nmalloc_trim_s = 0.5"
                   "\nmax_body_mib_in_flight = 0\n\n[tls]")
    with pytest.raises(ConfigError) as exc:
        load_node_config(bad)
    lines = str(exc.value).splitlines()
    assert len(lines) == 4
    assert "max_body_mib_in_flight: 0 must be at least 1" in lines[0]
    assert "peer_slots: 0 must be at least 1" in lines[1]
    assert "malloc_trim_s: 0.5 must be at least 1" in lines[2]
    assert "max_body_mib_per_connection: 64 MiB must hold at least one chunk" in lines[3]


def test_the_merkle_snapshot_interval_is_read_and_checked(cluster: Path, tmp_path: Path) -> None:
    default = load_node_config(cluster / "dc1-n1" / "node.toml")
    assert default.repair_snapshot_s == 30.0
    ok = _variant(cluster, tmp_path, "[tls]", "[repair]\nsnapshot_s = 600\n\n[tls]")
    assert load_node_config(ok).repair_snapshot_s == 600.0
    for value in ("0", "0.5", "100000"):
        bad = _variant(cluster, tmp_path, "[tls]", f"[repair]\nsnapshot_s = {value}\n\n[tls]")
        with pytest.raises(ConfigError) as exc:
            load_node_config(bad)
        assert f"[repair] snapshot_s: {value} must be between 1 and 86400" in str(exc.value)
