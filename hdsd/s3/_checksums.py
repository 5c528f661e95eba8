"""Incremental checksums of an S3 body, as S3 writes them: base64 of the big-endian digest.

``x-amz-checksum-crc32``, ``-crc32c``, ``-crc64nvme``, ``-sha1``, ``-sha256`` (headers or
aws-chunked trailers; current botocore also offers ``-sha512``, ``-xxhash64``, ``-xxhash3``,
``-xxhash128``) and ``Content-MD5`` (base64 of the MD5). CRC32 is the standard library's
(zlib); CRC32C and CRC64/NVME come from ``awscrt.checksums`` — the AWS common runtime that
botocore itself uses for them — since a pure-Python CRC runs at a few MB/s and a 1 GiB body
would take minutes. The hashes are hashlib's; XXH64 and XXH3 the ``xxhash`` package's (already
the store's frame checksum), whose canonical (big-endian) digests are the ones botocore sends.
Every ``update`` takes a bytes-like object (memoryviews included) and copies nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import xxhash
from awscrt import checksums as _crt

__all__ = ["ALGORITHMS", "Checksum", "decode_digest", "new_checksum"]

#: S3's names of the checksum algorithms (``x-amz-checksum-<name>``), and ``md5``
#: (``Content-MD5``).
ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512", "xxhash64", "xxhash3",
              "xxhash128", "md5")
_DIGEST_SIZE = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32,
                "sha512": 64, "xxhash64": 8, "xxhash3": 8, "xxhash128": 16, "md5": 16}
_XXHASH: dict[str, Callable[[], Any]] = {"xxhash64": xxhash.xxh64, "xxhash3": xxhash.xxh3_64,
                                         "xxhash128": xxhash.xxh3_128}


class Checksum(Protocol):
    name: str

    def update(self, data: bytes | memoryview) -> None: ...

    def digest(self) -> bytes: ...

    def b64(self) -> str: ...


class _Crc:
    __slots__ = ("_fn", "_size", "_value", "name")

    def __init__(self, name: str, fn: Callable[[bytes | memoryview, int], int],
                 size: int) -> None:
        self.name = name
        self._fn = fn
        self._size = size
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        if len(data):
            self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode()


class _Hash:
    __slots__ = ("_h", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._h: Any = (_XXHASH[name]() if name in _XXHASH
                        else hashlib.new(name, usedforsecurity=name not in ("md5", "sha1")))

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return bytes(self._h.digest())

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())

    def b64(self) -> str:
        return base64.b64encode(self._h.digest()).decode()


def _crc32(data: bytes | memoryview, value: int) -> int:
    return zlib.crc32(data, value)


def _crc32c(data: bytes | memoryview, value: int) -> int:
    return int(_crt.crc32c(data, value))  # any buffer works


def _crc64nvme(data: bytes | memoryview, value: int) -> int:
    return int(_crt.crc64nvme(data, value))  # any buffer works


def new_checksum(name: str) -> Checksum:
    """A fresh checksum of S3 algorithm *name* (see :data:`ALGORITHMS`)."""
    if name == "crc32":
        return _Crc(name, _crc32, 4)
    if name == "crc32c":
        return _Crc(name, _crc32c, 4)
    if name == "crc64nvme":
        return _Crc(name, _crc64nvme, 8)
    if name in ("sha1", "sha256", "sha512", "md5") or name in _XXHASH:
        return _Hash(name)
    raise ValueError(f"unknown checksum algorithm {name!r}")


def decode_digest(name: str, value: str) -> bytes | None:
    """The digest bytes of a base64 value the client sent for *name*; None if it is not valid
    base64 of the algorithm's size."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _DIGEST_SIZE[name] else None
