"""Per-tenant key material used by the chunk pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.utils

__all__ = ["KEY_SIZE", "TenantKeys"]

KEY_SIZE = 32


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """The two secret keys of one tenant.

    ``data_key`` encrypts chunks (XChaCha20-Poly1305); ``dedup_key`` keys the BLAKE3 content ids,
    so ids never collide across tenants and one tenant cannot test whether another holds a file.
    Both are excluded from ``repr`` so a key never ends up in a log line or a traceback.
    """

    tenant: str
    data_key: bytes = field(repr=False)
    dedup_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant:
            raise ValueError("tenant must be a non-empty str")
        if len(self.tenant.encode("utf-8")) > 0xFFFF:
            # The tenant is length-prefixed with 16 bits in the chunk AAD.
            raise ValueError("tenant name is too long")
        for name in ("data_key", "dedup_key"):
            key = getattr(self, name)
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise ValueError(f"{name} must be {KEY_SIZE} bytes")

    @classmethod
    def generate(cls, tenant: str) -> TenantKeys:
        """Fresh random keys for *tenant* (from the OS CSPRNG through libsodium)."""
        return cls(
            tenant=tenant,
            data_key=nacl.utils.random(KEY_SIZE),
            dedup_key=nacl.utils.random(KEY_SIZE),
        )
