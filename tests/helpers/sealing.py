"""A sealing capability for tests that open a store directly: fixed keys per tenant name
(derived from the name, so a reopened store opens what it sealed), and shredding on demand."""

from __future__ import annotations

import functools

import blake3

from hdsd.pipeline import NameSeal, TenantKeys, TenantNameSealing


@functools.cache
def tenant_keys(tenant: str) -> TenantKeys:
    return TenantKeys(tenant=tenant,
                      data_key=blake3.blake3(b"test data key\0" + tenant.encode()).digest(),
                      dedup_key=blake3.blake3(b"test dedup key\0" + tenant.encode()).digest())


class TestSealing:
    """Every tenant has keys, except those :meth:`shred` removed."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.shredded: set[str] = set()
        self._seals = TenantNameSealing(
            lambda t: None if t in self.shredded else tenant_keys(t))

    def shred(self, tenant: str) -> None:
        self.shredded.add(tenant)

    def seal_for(self, tenant: str) -> NameSeal | None:
        return self._seals.seal_for(tenant)


SEALING = TestSealing()
