"""Tenant keys, stored only wrapped under the cluster master key.

The master key is 32 random bytes in a key file (mode 0600, written by ``hdsd init``). Each tenant
has its own random data key and dedup key (see :class:`hdsd.pipeline.TenantKeys`); on disk they
exist only wrapped with XChaCha20-Poly1305 under the master key, the tenant name bound as
associated data so a wrapped entry cannot be moved to another tenant.

File format (``keyring.hdsd`` in the data directory, replaced atomically)::

    msgpack {"format": 1, "tenants": {tenant: nonce(24) || AEAD(data_key || dedup_key)}}

Every node of both sites must hold the same tenant keys (a chunk sealed in one site is read in
the other), so a node never invents keys: ``hdsd init`` and ``hdsd cert issue`` create a tenant's
keys once and write the same wrapped entry into every node's keyring (until tenant management
lands with ``hdsd tenant create``). A running node rereads its keyring when it meets a tenant it
does not know; a tenant still unknown then is refused (``PermissionDenied``).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from nacl import utils

from .._atomic import atomic_write
from .._errors import ConfigError, IntegrityError
from .._packing import PackError, packb, unpackb
from ..pipeline import TenantKeys
from ._keys import unwrap_keys, wrap_keys

__all__ = ["KEYRING_FILE", "Keyring", "create_master_key", "ensure_tenant", "load_master_key"]

KEYRING_FILE = "keyring.hdsd"


def create_master_key(path: Path) -> None:
    """Write 32 random bytes to *path*, created 0600 (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, utils.random(32))
        os.fsync(fd)
    finally:
        os.close(fd)


def load_master_key(path: Path) -> bytes:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"master key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"master key file {path} is readable by group or others; run: chmod 600 {path}")
    if len(data) != 32:
        raise ConfigError(f"master key file {path} must hold exactly 32 bytes, has {len(data)}")
    return data


class Keyring:
    """The tenants' keys of one node, unwrapped in memory, persisted wrapped."""

    def __init__(self, path: Path, master_key: bytes) -> None:
        self._path = path
        self._master = master_key
        self._wrapped: dict[str, bytes] = {}
        self._keys: dict[str, TenantKeys] = {}
        self._lock = threading.Lock()
        if path.exists():
            self._load()

    def _load(self) -> None:
        try:
            doc = unpackb(self._path.read_bytes())
            if doc.get("format") != 1:
                raise IntegrityError(f"keyring {self._path}: unknown format {doc.get('format')!r}")
            wrapped = {str(k): bytes(v) for k, v in doc["tenants"].items()}
        except (PackError, KeyError, AttributeError, TypeError) as exc:
            raise IntegrityError(f"keyring {self._path} is damaged: {exc}") from None
        for tenant, blob in wrapped.items():
            self._keys[tenant] = self._unwrap(tenant, blob)
        self._wrapped = wrapped

    def _unwrap(self, tenant: str, blob: bytes) -> TenantKeys:
        try:
            return unwrap_keys(self._master, tenant, blob)
        except ConfigError:
            raise ConfigError(
                f"the master key does not open the keyring {self._path} (wrong key file?)"
            ) from None

    def _wrap(self, keys: TenantKeys) -> bytes:
        return wrap_keys(self._master, keys)

    def get(self, tenant: str) -> TenantKeys | None:
        """The tenant's keys; the file is reread once if the tenant is not known yet."""
        keys = self._keys.get(tenant)
        if keys is None and self._path.exists():
            with self._lock:
                self._load()
            keys = self._keys.get(tenant)
        return keys

    def wrapped(self, tenant: str) -> bytes | None:
        return self._wrapped.get(tenant)

    def add_wrapped(self, tenant: str, blob: bytes) -> None:
        """Install a tenant entry wrapped elsewhere under the same master key (checked)."""
        with self._lock:
            keys = self._unwrap(tenant, blob)
            wrapped = {**self._wrapped, tenant: blob}
            atomic_write(self._path, mode=0o600, data=packb({"format": 1, "tenants": wrapped}))
            self._wrapped = wrapped
            self._keys[tenant] = keys

    def get_or_create(self, tenant: str) -> TenantKeys:
        """The tenant's keys, created (and durably saved) on first use."""
        with self._lock:
            keys = self._keys.get(tenant)
            if keys is None:
                keys = TenantKeys.generate(tenant)
                wrapped = dict(self._wrapped)
                wrapped[tenant] = self._wrap(keys)
                atomic_write(self._path, mode=0o600, data=packb({"format": 1, "tenants": wrapped}))
                self._wrapped = wrapped
                self._keys[tenant] = keys
            return keys

    def tenants(self) -> list[str]:
        return sorted(self._keys)

    def remove(self, tenant: str) -> None:
        """Forget *tenant* (crypto-shredding): the file is replaced without its entry."""
        with self._lock:
            if tenant not in self._wrapped:
                return
            wrapped = {t: b for t, b in self._wrapped.items() if t != tenant}
            atomic_write(self._path, mode=0o600, data=packb({"format": 1, "tenants": wrapped}))
            self._wrapped = wrapped
            self._keys.pop(tenant, None)


def ensure_tenant(keyrings: list[Path], master_key: bytes, tenant: str) -> bool:
    """Make *tenant* known, with the same keys, in every keyring file; True if created."""
    rings = [Keyring(path, master_key) for path in keyrings]
    blob = next((r.wrapped(tenant) for r in rings if r.wrapped(tenant) is not None), None)
    created = blob is None
    if blob is None:
        rings[0].get_or_create(tenant)
        blob = rings[0].wrapped(tenant)
    assert blob is not None
    for ring in rings:
        if ring.wrapped(tenant) is None:
            ring.add_wrapped(tenant, blob)
    return created
