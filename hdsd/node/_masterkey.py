"""The node's master key: read from its key file, or derived from a passphrase; and rotation.

Passphrase mode (``[keys] master_passphrase_env`` + ``master_salt_file``): the passphrase comes
from that environment variable, else from a prompt when stdin is a terminal; Argon2id
(:func:`hdsd.catalog.derive_master_key`) turns it into the key with the salt file, which
must hold the same 16 bytes on every node (every node must unwrap the same catalog entries).

Rotation (:func:`rotate_master`) rewraps every tenant's keys — in the catalog and the keyring
seed file — under a new master key without touching any data. It runs per node, with the node
stopped. Each step is atomic (one SQLite transaction; an atomically replaced file) and the
whole is idempotent: an entry that already opens under the new key is left as it is, so after a
crash the same command is simply run again.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nacl import utils

from .._atomic import atomic_write
from .._errors import ConfigError
from .._packing import packb, unpackb
from ..catalog import (
    CATALOG_FILE,
    KEYRING_FILE,
    SALT_BYTES,
    Catalog,
    Keyring,
    derive_master_key,
    load_master_key,
    unwrap_keys,
    unwrap_secret,
    wrap_keys,
    wrap_secret,
)
from ..store import LOCK_NAME
from ._config import NodeConfig

__all__ = ["check_master", "create_salt", "keep_old_key", "kept_old_keys", "load_master",
           "master_key_check", "node_stopped", "passphrase_master", "replace_key_file",
           "rotate_master",
           "set_key_check", "verify_master"]


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


def _rewrap_secret(old: bytes, new: bytes, akid: str, tenant: str, role: str,
                   blob: bytes) -> bytes | None:
    """An S3 secret wrapped under *new*; None if it already is."""
    try:
        unwrap_secret(new, akid, tenant, role, blob)
        return None
    except ConfigError:
        return wrap_secret(new, akid, tenant, role, unwrap_secret(old, akid, tenant, role, blob))


def rotate_master(data_dir: Path, old: bytes, new: bytes) -> int:
    """Rewrap every tenant's keys and every live S3 secret under *new*; returns how many
    entries were rewrapped."""
    count = 0
    catalog = Catalog(data_dir / CATALOG_FILE)
    try:
        rewrapped = {}
        for t in catalog.tenants():
            if t.has_keys and (blob := _rewrap(old, new, t.name, t.wrapped)):
                rewrapped[t.name] = blob
        catalog.replace_wrapped(rewrapped)
        count += len(rewrapped)
        s3_rewrapped = {k.access_key_id: blob for k in catalog.s3_keys() if not k.is_revoked
                   and (blob := _rewrap_secret(old, new, k.access_key_id, k.tenant, k.role,
                                               k.wrapped))}
        catalog.replace_wrapped_s3(s3_rewrapped)
        count += len(s3_rewrapped)
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


# --- deployment safety: the key's fingerprint, the store lock, the kept old key ----------------


def master_key_check(master: bytes, cluster_id: str) -> str:
    """A short keyed fingerprint of the master key, bound to the cluster id. ``hdsd init``
    writes it into each node.toml (``[keys] master_key_check``) so a key file of another
    cluster, or a copy not rotated with the rest, is refused at start even with an empty data
    directory; the key cannot be recovered from it."""
    return hashlib.blake2b(cluster_id.encode(), key=master, person=b"hdsd-mk-check",
                           digest_size=8).hexdigest()


def check_master(config: NodeConfig, master: bytes) -> None:
    """:class:`ConfigError` (one line) if *master* is not the key this node.toml expects."""
    if config.master_key_check and \
            master_key_check(master, config.cluster_id) != config.master_key_check:
        source = (str(config.master_key_file) if config.master_key_file is not None
                  else f"the passphrase in ${config.master_passphrase_env}")
        raise ConfigError(
            f"the master key ({source}) is not this cluster's: its fingerprint differs from "
            f"[keys] master_key_check in {config.path} (a key of another cluster, or a node "
            "rotated without the others?)")


@contextmanager
def node_stopped(config: NodeConfig) -> Iterator[None]:
    """Hold the store's lock, as a running ``hdsd serve`` does: :class:`ConfigError` if the
    node runs (rotating under it would leave its in-memory keys and its files apart)."""
    store = config.data_dir / "store"
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"node {config.name} is running (its store {store} is locked by "
                              "another process): stop it first (systemctl stop hdsd)") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def keep_old_key(key_file: Path) -> Path | None:
    """Copy the current key file to ``<name>.old-<UTC date and time>`` (0600) before it is
    replaced, unless an identical copy is already kept (a rerun after a crash)."""
    current = key_file.read_bytes()
    for kept in sorted(key_file.parent.glob(key_file.name + ".old-*")):
        if kept.read_bytes() == current:
            return kept
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = key_file.with_name(f"{key_file.name}.old-{stamp}")
    atomic_write(kept, current, 0o600)
    _same_owner(kept, key_file.stat())
    return kept


def replace_key_file(key_file: Path, new: bytes) -> None:
    """Write *new* over the key file atomically, keeping its owner: rotation runs as root,
    the node as the unit's user, who must still read the file."""
    before = key_file.stat()
    atomic_write(key_file, new, 0o600)
    _same_owner(key_file, before)


def _same_owner(path: Path, like: os.stat_result) -> None:
    st = path.stat()
    if (st.st_uid, st.st_gid) != (like.st_uid, like.st_gid) and os.geteuid() == 0:
        os.chown(path, like.st_uid, like.st_gid)


def verify_master(config: NodeConfig, master: bytes) -> None:
    """:class:`ConfigError` unless *master* is this node's key: its fingerprint, its keyring
    and every live tenant of its catalog."""
    check_master(config, master)
    Keyring(config.data_dir / KEYRING_FILE, master)  # raises if the key does not open it
    catalog = Catalog(config.data_dir / CATALOG_FILE)
    try:
        for entry in catalog.tenants():
            if not entry.is_shredded:
                unwrap_keys(master, entry.name, entry.wrapped)
        for key in catalog.s3_keys():
            if not key.is_revoked:
                unwrap_secret(master, key.access_key_id, key.tenant, key.role, key.wrapped)
    finally:
        catalog.close()


def kept_old_keys(key_file: Path) -> list[Path]:
    return sorted(key_file.parent.glob(key_file.name + ".old-*"))


def set_key_check(config_path: Path, check: str) -> bool:
    """Rewrite ``master_key_check`` in a node.toml (the one line only); True if changed."""
    lines = config_path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("master_key_check"):
            _, _, rest = line.partition("#")
            comment = f"   #{rest}" if rest else "\n"
            lines[i] = f'master_key_check = "{check}"' + comment
            changed = True
    if changed:
        before = config_path.stat()
        atomic_write(config_path, "".join(lines).encode(), stat.S_IMODE(before.st_mode))
        _same_owner(config_path, before)
    return changed
