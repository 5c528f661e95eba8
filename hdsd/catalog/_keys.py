"""Wrapping tenant keys under the cluster master key, and deriving a master key from a passphrase.

A wrapped entry is ``nonce(24) || XChaCha20-Poly1305(data_key || dedup_key)`` under the master
key, with the tenant name bound as associated data (an entry cannot be moved to another
tenant) — the same format as the node keyring file, so entries seeded by ``hdsd init`` enter the
catalog unchanged. Nothing here logs, and no error message or repr carries key bytes.
"""

from __future__ import annotations

import blake3
from nacl import bindings, exceptions, pwhash, utils

from .._errors import ConfigError
from ..pipeline import TenantKeys

__all__ = ["SALT_BYTES", "derive_master_key", "seed_creation", "unwrap_keys", "unwrap_secret",
           "wrap_keys", "wrap_secret"]

_AAD_PREFIX = b"hdsd-tenant-keys-v1\x00"
_S3_AAD_PREFIX = b"hdsd-s3-secret-v1\x00"
_NONCE = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
SALT_BYTES = pwhash.argon2id.SALTBYTES


def wrap_keys(master: bytes, keys: TenantKeys) -> bytes:
    nonce = utils.random(_NONCE)
    return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        keys.data_key + keys.dedup_key, _AAD_PREFIX + keys.tenant.encode(), nonce, master)


def unwrap_keys(master: bytes, tenant: str, blob: bytes) -> TenantKeys:
    """The tenant's keys; :class:`ConfigError` if *master* does not open *blob*."""
    try:
        raw = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[_NONCE:], _AAD_PREFIX + tenant.encode(), blob[:_NONCE], master)
    except exceptions.CryptoError:
        raise ConfigError(f"the master key does not open tenant {tenant!r}'s keys "
                          "(wrong master key, or a node not yet rotated?)") from None
    return TenantKeys(tenant=tenant, data_key=raw[:32], dedup_key=raw[32:64])


def _s3_aad(access_key_id: str, tenant: str, role: str) -> bytes:
    # The key's id, tenant and role are bound: a wrapped secret moved to another key id, or
    # an entry edited to another tenant or a stronger role, no longer opens.
    return _S3_AAD_PREFIX + "\x00".join((access_key_id, tenant, role)).encode()


def wrap_secret(master: bytes, access_key_id: str, tenant: str, role: str, secret: str) -> bytes:
    """An S3 secret access key wrapped under the master key (same AEAD as tenant keys)."""
    nonce = utils.random(_NONCE)
    return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        secret.encode(), _s3_aad(access_key_id, tenant, role), nonce, master)


def unwrap_secret(master: bytes, access_key_id: str, tenant: str, role: str,
                  blob: bytes) -> str:
    """The S3 secret; :class:`ConfigError` if *master* does not open *blob* (or the entry's
    id, tenant or role was changed)."""
    try:
        raw = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[_NONCE:], _s3_aad(access_key_id, tenant, role), blob[:_NONCE], master)
    except exceptions.CryptoError:
        raise ConfigError(f"the master key does not open S3 access key {access_key_id}'s "
                          "secret (wrong master key, or a node not yet rotated?)") from None
    return raw.decode()


def derive_master_key(passphrase: bytes, salt: bytes) -> bytes:
    """32 bytes from *passphrase* with Argon2id at libsodium's *moderate* limits (~256 MiB,
    about a second): paid once per node start, and by every guess of an attacker."""
    if len(salt) != SALT_BYTES:
        raise ConfigError(f"the passphrase salt must be {SALT_BYTES} bytes, got {len(salt)}")
    if not passphrase:
        raise ConfigError("the master passphrase is empty")
    return pwhash.argon2id.kdf(32, passphrase, salt, opslimit=pwhash.argon2id.OPSLIMIT_MODERATE,
                               memlimit=pwhash.argon2id.MEMLIMIT_MODERATE)


def seed_creation(keys: TenantKeys) -> bytes:
    """A creation id for keys seeded into every node's keyring (``hdsd init``, ``hdsd cert
    issue``): derived from the keys, so every node importing the seed names the same creation
    whatever nonce wrapped its copy; one-way, so it reveals nothing of them."""
    return blake3.blake3(keys.data_key + keys.dedup_key,
                         derive_key_context="hdsd 2026 tenant seed creation id").digest(length=16)
