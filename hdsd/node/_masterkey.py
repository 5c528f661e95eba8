"""The node's master key: read from its key file, or derived from a passphrase; and rotation.

Passphrase mode (``[keys] master_passphrase_env`` + ``master_salt_file``): the passphrase comes
from that environment variable, else from a prompt when stdin is a terminal; Argon2id
(:func:`hdsd.catalog._keys.derive_master_key`) turns it into the key with the salt file, which
must hold the same 16 bytes on every node (every node must unwrap the same catalog entries).

Rotation (:func:`rotate_master`) rewraps every tenant's keys — in the catalog and the keyring
seed file — under a new master key without touching any data. It runs per node, with the node
stopped. Each step is atomic (one SQLite transaction; an atomically replaced file) and the
whole is idempotent: an entry that already opens under the new key is left as it is, so after a
crash the same command is simply run again.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from nacl import utils

from .._atomic import atomic_write
from .._errors import ConfigError
from .._packing import packb, unpackb
from ..catalog import CATALOG_FILE, Catalog
from ..catalog._keys import SALT_BYTES, derive_master_key, unwrap_keys, wrap_keys
from ._config import NodeConfig
from ._keyring import KEYRING_FILE, load_master_key

__all__ = ["create_salt", "load_master", "passphrase_master", "rotate_master"]


def create_salt(path: Path) -> None:
    """A new random salt file (refuses to overwrite one: it would change the master key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, utils.random(SALT_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)


def passphrase_master(env: str, salt_file: Path) -> bytes:
    passphrase = os.environ.get(env)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise ConfigError(f"the master passphrase is not set: export {env}, or start on a "
                              "terminal to be prompted")
        passphrase = getpass.getpass("hdsd master passphrase: ")
    try:
        salt = salt_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"master salt file {salt_file}: {exc.strerror}") from None
    return derive_master_key(passphrase.encode(), salt)


def load_master(config: NodeConfig) -> bytes:
    if config.master_key_file is not None:
        return load_master_key(config.master_key_file)
    assert config.master_salt_file is not None
    return passphrase_master(config.master_passphrase_env, config.master_salt_file)


def _rewrap(old: bytes, new: bytes, tenant: str, blob: bytes) -> bytes | None:
    """*blob* wrapped under *new*; None if it already is."""
    try:
        unwrap_keys(new, tenant, blob)
        return None
    except ConfigError:
        return wrap_keys(new, unwrap_keys(old, tenant, blob))


def rotate_master(data_dir: Path, old: bytes, new: bytes) -> int:
    """Rewrap every tenant's keys under *new*; returns how many entries were rewrapped."""
    count = 0
    catalog = Catalog(data_dir / CATALOG_FILE)
    try:
        rewrapped = {}
        for t in catalog.tenants():
            if t.has_keys and (blob := _rewrap(old, new, t.name, t.wrapped)):
                rewrapped[t.name] = blob
        catalog.replace_wrapped(rewrapped)
        count += len(rewrapped)
    finally:
        catalog.close()
    keyring = data_dir / KEYRING_FILE
    if keyring.exists():
        doc = unpackb(keyring.read_bytes())
        tenants = {str(k): bytes(v) for k, v in doc["tenants"].items()}
        changed = {t: b for t, blob in tenants.items() if (b := _rewrap(old, new, t, blob))}
        if changed:
            atomic_write(keyring, packb({"format": 1, "tenants": {**tenants, **changed}}), 0o600)
            count += len(changed)
    return count
