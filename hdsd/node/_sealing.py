"""The store's sealing capability, from this node's tenant keys.

The store opens (and recovers) before the node's tenancy exists, and recovery needs no key:
the capability is created unbound and bound to the tenancy's name seals once the node is built.
A tenant without keys here (unknown, shredded, creation abandoned) has no seal: the store then
refuses to write or open its names (``PermissionDenied``). Requests of tenants that are not
live are refused before they reach the store (``Tenancy.check_live``).
"""

from __future__ import annotations

from collections.abc import Callable

from .._errors import PermissionDenied
from ..catalog import CATALOG_FILE, tenant_keys_in_catalog
from ..pipeline import NameSeal, TenantKeys, TenantNameSealing
from ._config import NodeConfig
from ._masterkey import load_master

__all__ = ["NodeSealing", "offline_name_seal", "offline_sealing"]


class NodeSealing:
    """The store's sealing: no seal until :meth:`bind` (recovery needs none), then the node's
    tenancy's own name seals (``Tenancy.name_seal``): one :class:`NameSeal` per tenant on the
    node, so the ids of a put's names, asked for by the tenancy's hold check, the store and
    the audit record, are computed once and not once per seal object."""

    __slots__ = ("seal_for",)

    def __init__(self) -> None:
        # An attribute, not a method forwarding to it: the store asks for a seal on every
        # version it writes or reads.
        self.seal_for: Callable[[str], NameSeal | None] = _no_seal

    def bind(self, seal_for: Callable[[str], NameSeal | None]) -> None:
        self.seal_for = seal_for


def _no_seal(tenant: str) -> NameSeal | None:
    return None


def offline_name_seal(config: NodeConfig, tenant: str) -> NameSeal:
    """*tenant*'s name seal from a node's catalog and master key, the node running or not
    (``hdsd audit export --config``); :class:`PermissionDenied` if the catalog holds no key
    for it (unknown, or shredded: then its names cannot be opened by anyone)."""
    keys = tenant_keys_in_catalog(config.data_dir / CATALOG_FILE, tenant, load_master(config))
    if keys is None:
        raise PermissionDenied(f"the catalog of {config.name} holds no key for tenant "
                               f"{tenant!r} (unknown or shredded): its names stay sealed")
    return NameSeal(keys)


def offline_sealing(config: NodeConfig) -> TenantNameSealing:
    """Every live tenant's seal from a node's catalog (and keyring seeds), for offline tools
    (``hdsd store migrate``); a tenant without keys (shredded) has none."""
    from ..catalog import KEYRING_FILE, Keyring

    master = load_master(config)
    keyring = Keyring(config.data_dir / KEYRING_FILE, master)
    cache: dict[str, TenantKeys | None] = {}

    def lookup(tenant: str) -> TenantKeys | None:
        if tenant not in cache:
            keys = tenant_keys_in_catalog(config.data_dir / CATALOG_FILE, tenant, master)
            cache[tenant] = keys if keys is not None else keyring.get(tenant)
        return cache[tenant]
    return TenantNameSealing(lookup)
