"""Master keys: passphrase derivation, rotation, and no secret ever in a log line or an error."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import trio

from hdsd import AsyncClient, ConfigError, HdsdError, TenantShredded
from hdsd.catalog._keys import derive_master_key, unwrap_keys
from hdsd.node import load_node_config, serve_node
from hdsd.node._masterkey import create_salt, load_master, rotate_master
from tests.helpers.cluster import hdsd, init_cluster

PASSPHRASE = "correct horse battery staple 1957"


def test_passphrase_mode_derives_the_master_key(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    create_salt(tmp_path / "master.salt")
    config_file = tmp_path / "dc1-n1" / "node.toml"
    text = config_file.read_text().replace(
        'master_key_file = "master.key"',
        'master_passphrase_env = "HDSD_MASTER_PASSPHRASE"\nmaster_salt_file = "../master.salt"')
    config_file.write_text(text)
    config = load_node_config(config_file)
    monkeypatch.delenv("HDSD_MASTER_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError, match="HDSD_MASTER_PASSPHRASE"):
        load_master(config)  # no terminal under pytest: no prompt, a clear error
    monkeypatch.setenv("HDSD_MASTER_PASSPHRASE", PASSPHRASE)
    master = load_master(config)
    assert master == derive_master_key(PASSPHRASE.encode(), (tmp_path / "master.salt").read_bytes())
    with pytest.raises(ConfigError) as info:
        derive_master_key(PASSPHRASE.encode(), b"short")
    assert PASSPHRASE not in str(info.value) + repr(info.value)
    both = text.replace('master_passphrase_env', 'master_key_file = "master.key"\n'
                                                  'master_passphrase_env')
    config_file.write_text(both)
    with pytest.raises(ConfigError, match="either master_key_file or master_passphrase_env"):
        load_node_config(config_file)


async def test_no_key_in_logs_errors_or_reprs(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = tmp_path
    init_cluster(root)
    configs = [load_node_config(root / n / "node.toml") for n in ("dc1-n1", "dc2-n1")]
    old_master = (root / "master.key").read_bytes()
    writer = None
    seen_errors: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for config in configs:
                await nursery.start(serve_node, config)
            async with AsyncClient(root / "client.toml") as op:
                seen_errors.append(repr(await op.tenant_create("ward", 10_000)))
                await op.put("keep", "k", b"kept across the rotation")
                proc = await trio.to_thread.run_sync(lambda: hdsd(
                    "cert", "issue", "--client", "ward-w", "--tenant", "ward", "--role",
                    "writer", "--cluster-dir", str(root), check=True))
                seen_errors.append(proc.stdout.decode() + proc.stderr.decode())
                writer = root / "clients" / "ward-w.toml"
                async with AsyncClient(writer) as w:
                    await w.put("b", "k", b"hello ward")
                    assert await w.get("b", "k") == b"hello ward"
                    for attempt in (w.put("b", "big", b"x" * 20_000), w.get("b", "nope")):
                        try:
                            await attempt
                        except HdsdError as exc:
                            seen_errors.append(f"{exc!r} {exc}")
                    db = sqlite3.connect(f"file:{configs[0].data_dir / 'catalog.sqlite'}?mode=ro",
                                         uri=True)
                    (wrapped,) = db.execute(
                        "SELECT wrapped FROM tenants WHERE name = 'ward'").fetchone()
                    db.close()
                    keys = unwrap_keys(old_master, "ward", wrapped)
                    seen_errors.append(repr(keys))
                    await op.tenant_shred("ward", confirm="ward")
                    with pytest.raises(TenantShredded) as info:
                        await w.get("b", "k")
                    seen_errors.append(repr(info.value))
            nursery.cancel_scope.cancel()
    new_file = root / "new.key"
    proc = hdsd("key", "rotate-master", "--config", str(root / "dc1-n1" / "node.toml"),
                "--new-key-file", str(new_file), check=True)
    seen_errors.append(proc.stdout.decode() + proc.stderr.decode())
    new_master = new_file.read_bytes()
    # this node's key file only, replaced in place; the old key kept beside it
    assert (root / "dc1-n1" / "master.key").read_bytes() == new_master
    assert (root / "dc2-n1" / "master.key").read_bytes() == old_master
    assert [k.read_bytes() for k in (root / "dc1-n1").glob("master.key.old-*")] == [old_master]
    # the default tenant, in the catalog and in the keyring seed file
    assert rotate_master(configs[1].data_dir, old_master, new_master) == 2
    assert rotate_master(configs[1].data_dir, old_master, new_master) == 0  # idempotent
    # dc2-n1's catalog is rewrapped but its key file is still the old one: refused at start
    refused = hdsd("serve", "--config", str(root / "dc2-n1" / "node.toml"), timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.decode().startswith("hdsd: error: the master key does not open the ")
    hdsd("key", "rotate-master", "--config", str(root / "dc2-n1" / "node.toml"),
         "--new-key-file", str(new_file), check=True)
    configs = [load_node_config(root / n / "node.toml") for n in ("dc1-n1", "dc2-n1")]
    with trio.fail_after(60):  # the data was not touched: the rotated nodes read it back
        async with trio.open_nursery() as nursery:
            for config in configs:
                await nursery.start(serve_node, config)
            async with AsyncClient(root / "client.toml", site="dc2") as op:
                assert await op.get("keep", "k") == b"kept across the rotation"
            nursery.cancel_scope.cancel()

    text = caplog.text + "\n".join(seen_errors)
    assert "ward" in caplog.text  # the log did see the tenant's life...
    for secret in (keys.data_key, keys.dedup_key, old_master, new_master):
        for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1]):
            assert form not in text  # ...and none of its keys, in any form
