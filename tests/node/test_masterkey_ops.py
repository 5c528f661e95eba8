"""Offline master-key operations (hdsd/node/_masterkey.py): the store lock, the kept old key,
the fingerprint line, file owners kept when root rotates for the unit's user."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from hdsd import ConfigError
from hdsd.node import (
    keep_old_key,
    kept_old_keys,
    load_node_config,
    node_stopped,
    replace_key_file,
    set_key_check,
)
from tests.helpers.cluster import init_cluster


def test_node_stopped_refuses_while_the_store_lock_is_held(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    config = load_node_config(tmp_path / "dc1-n1" / "node.toml")
    with node_stopped(config):
        pass  # free: taken and released
    (config.data_dir / "store").mkdir(exist_ok=True)
    fd = os.open(config.data_dir / "store" / "LOCK", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `hdsd serve` holds it
        with pytest.raises(ConfigError, match="node dc1-n1 is running"), node_stopped(config):
            pass
    finally:
        os.close(fd)
    with node_stopped(config):
        pass


def test_old_key_kept_once_and_the_check_line_rewritten(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    key.write_bytes(b"a" * 32)
    key.chmod(0o600)
    first = keep_old_key(key)
    assert keep_old_key(key) == first  # a rerun after a crash keeps no second copy
    assert first is not None and first.read_bytes() == b"a" * 32
    assert first.stat().st_mode & 0o777 == 0o600
    replace_key_file(key, b"b" * 32)
    assert key.read_bytes() == b"b" * 32 and kept_old_keys(key) == [first]
    config = tmp_path / "node.toml"
    config.write_text('[keys]\nmaster_key_file = "master.key"\n'
                      'master_key_check = "0011"   # fingerprint\n[cluster]\nid = "x"\n')
    config.chmod(0o640)
    assert set_key_check(config, "ffee")
    assert config.read_text() == ('[keys]\nmaster_key_file = "master.key"\n'
                                  'master_key_check = "ffee"   # fingerprint\n'
                                  '[cluster]\nid = "x"\n')
    assert config.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_root_keeps_the_unit_users_ownership(tmp_path: Path) -> None:
    key, config = tmp_path / "master.key", tmp_path / "node.toml"
    key.write_bytes(b"a" * 32)
    config.write_text('master_key_check = "00"\n')
    for path in (key, config):
        os.chown(path, 4242, 4243)  # the `hdsd` user of the unit
    kept = keep_old_key(key)
    replace_key_file(key, b"b" * 32)
    set_key_check(config, "11")
    assert kept is not None
    for path in (key, kept, config):
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4243), path
