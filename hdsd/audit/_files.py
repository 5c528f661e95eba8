"""Small durable-file helpers of the audit log: the node's signing key, the verify key an
auditor pins, and the shipper's cursor."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import nacl.signing

from .._atomic import atomic_write as atomic_write
from .._atomic import fsync_dir as fsync_dir
from .._errors import ConfigError

__all__ = [
    "SIGNING_KEY_FILE",
    "VERIFY_KEY_FILE",
    "atomic_write",
    "fingerprint",
    "fsync_dir",
    "load_cursors",
    "load_or_create_signing_key",
    "read_verify_key",
    "save_cursors",
]

SIGNING_KEY_FILE = "signing.key"
VERIFY_KEY_FILE = "verify.key"
CURSOR_FILE = "ship-cursor.json"


def fingerprint(verify_key: bytes) -> str:
    """A short, stable name of a verify key for logs and reports."""
    return blake3.blake3(verify_key).hexdigest()[:16]


def load_or_create_signing_key(directory: Path) -> nacl.signing.SigningKey:
    """The node's audit signing key, created (mode 0600) on first use. Its verify key is written
    next to it (``verify.key``, hex) for operators to copy and pin."""
    path = directory / SIGNING_KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        key = nacl.signing.SigningKey.generate()
        atomic_write(path, bytes(key), mode=0o600)
    else:
        if len(seed) != 32:
            raise ConfigError(f"{path}: an audit signing key is 32 bytes, found {len(seed)}")
        key = nacl.signing.SigningKey(seed)
    verify = directory / VERIFY_KEY_FILE
    text = (bytes(key.verify_key).hex() + "\n").encode()
    if not verify.exists() or verify.read_bytes() != text:
        atomic_write(verify, text)
    return key


def read_verify_key(path: Path) -> bytes:
    """A pinned verify key: 64 hex digits (as ``verify.key`` holds) or 32 raw bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the verify key: {exc.strerror}") from None
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        pass
    if len(data) == 32:
        return data
    raise ConfigError(f"{path}: not an audit verify key (64 hex digits expected)")


def load_cursors(directory: Path) -> dict[str, tuple[int, bytes]]:
    """The shipper's cursor per target node: ``(last seq it holds, that record's hash)``."""
    try:
        raw = json.loads((directory / CURSOR_FILE).read_text())
        return {str(k): (int(v[0]), bytes.fromhex(v[1])) for k, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # A damaged cursor only costs a resend: the receivers skip what they already hold.
        raise ConfigError(f"{directory / CURSOR_FILE}: damaged ({exc}); delete it to resend"
                          ) from None


def save_cursors(directory: Path, cursors: dict[str, tuple[int, bytes]]) -> None:
    data = json.dumps({k: [s, h.hex()] for k, (s, h) in sorted(cursors.items())})
    atomic_write(directory / CURSOR_FILE, data.encode())
