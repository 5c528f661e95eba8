"""Tenancy on one node: the replicated catalog, tenant keys, and the write checks it implies.

**Keys.** Tenants' keys live wrapped in the catalog (:mod:`hdsd.catalog`), which every node of
both sites holds and which converges by merge. The keyring file written by ``hdsd init`` and
``hdsd cert issue`` only *seeds* it: a tenant the catalog does not know is imported from the
keyring as a *pending* creation whose identity derives from the keys themselves (so every node
importing the same seed makes the same creation). A shredded or abandoned tenant is also erased
from the keyring file.

**Confirmation** (:mod:`hdsd.catalog._confirm`). A tenant serves no request until its creation
is confirmed by every node of both sites (:meth:`Tenancy.confirm`, one voting round; refused
meanwhile with ``TenantPending``). ``hdsd tenant create`` runs rounds until confirmed; the node
that made a creation, and any node holding a keyring seed, runs one more round at every catalog
sync until it is decided, so a creation interrupted by a partition finishes when it heals. A
write to a seeded tenant runs a round itself (a tenant made by ``hdsd cert issue`` is
confirmed by its first write when every node answers).

**Propagation.** An admin change is applied locally, then pushed to every other node
(``CatalogPush``); a node that missed it catches up by the periodic sync (``CatalogSync``: compare
digests; on mismatch take the peer's whole catalog, merge, and push back what the peer lacks),
and by one sync round with every reachable node at start, before it serves clients.

**Revoked certificates** are catalog entries too: applying one (here, by push or by sync) calls
``on_revoke`` with the serials, and the node closes their live sessions (:mod:`._revocation`).

**Write checks** (on the coordinating node, before anything is written): legal hold, retention
lock, quota. Replicas do not check again: they accept writes only from node certificates of the
cluster, i.e. from a coordinator that has checked. What a coordinator cannot know is a change
made elsewhere and not yet delivered to it — pushed at once, so the window is a push's latency
(or one sync period for a node that was unreachable) — and a tombstone written in that window
hides data, it does not destroy it. A purge does destroy a version: its coordinator first
syncs the catalog with every reachable node (:meth:`Tenancy.check_purge`).

**Quota.** Usage is the logical size of the tenant's current versions as this node's site sees
it: this node's store (recomputed at most every second) plus what the same-site nodes reported
at the last sync. Possible overshoot: puts accepted by the *other* nodes of the site since their
last report (at most one sync period's worth) and puts of unknown size running concurrently
here (declared sizes are reserved while in flight).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._errors import (
    ConfigError,
    HdsdError,
    InvalidRequest,
    LegalHold,
    PermissionDenied,
    QuotaExceeded,
    RetentionLocked,
    TenantConflict,
    TenantPending,
    TenantShredded,
    Unavailable,
)
from ..catalog import (
    ABANDONED,
    ABANDONING,
    CATALOG_FILE,
    CONFIRMED,
    PENDING,
    BucketEntry,
    Catalog,
    Entry,
    HoldEntry,
    Keyring,
    RevokedEntry,
    S3KeyEntry,
    TenantEntry,
    bucket_name,
    decide_abandon,
    decide_confirm,
    describe_creation,
    entry_from_wire,
    hold_names,
    pending_error,
    seal_bucket,
    seal_hold,
    seed_creation,
    unwrap_keys,
    unwrap_secret,
    vote_abandon,
    vote_create,
    wrap_keys,
)
from ..cluster import HybridClock
from ..pipeline import NameSeal, TenantKeys, TenantNameSealing
from ..store import Version
from ..wire import UNSENT, CatalogPush, CatalogSync, TenantVote

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["Tenancy"]

log = logging.getLogger("hdsd.tenancy")

_DAY_MS = 86_400_000
_USAGE_TTL_S = 1.0
# The usage snapshot reads every current version of the store (O(keys)): at a million keys a
# refresh every second (a put under quota, a tenant's status) would keep a core busy. It is
# refreshed no sooner than this many times its own cost after the last one, so it takes at most
# ~5 % of one thread; puts done here since count on top of it (``_recent``), and a put that the
# snapshot would refuse refreshes it first (never refused on a stale figure). A store that has
# not changed since the last snapshot (its generation) is not read again at all: that snapshot
# is still exact, so a node at rest no longer rescans every key at each catalog sync.
_USAGE_COST_RATIO = 20.0
#: ``origin`` of a creation imported from a keyring seed (``hdsd cert issue``): any node may
#: confirm it, since every node importing the seed makes the very same creation.
SEED_ORIGIN = "keyring"


def seed_entry(name: str, wrapped: bytes, keys: TenantKeys, *, epoch: int = 0,
               state: str = PENDING) -> TenantEntry:
    """The creation a keyring seed stands for: the same on every node that imports it (id
    derived from the keys, HLC 0), so nodes seeded alike vote for one creation."""
    return TenantEntry(name=name, wrapped=wrapped, created=0, epoch=epoch,
                       creation=seed_creation(keys), state=state, origin=SEED_ORIGIN)


def _iso_day(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


class Tenancy:
    def __init__(self, data_dir: Path, master: bytes, keyring: Keyring, clock: HybridClock, *,
                 operator_tenant: str, evict: Callable[[str], object],
                 wall_ms: Callable[[], int] | None = None,
                 on_revoke: Callable[[set[str]], object] | None = None) -> None:
        self.catalog = Catalog(data_dir / CATALOG_FILE)
        self._master = master
        self._keyring = keyring
        self._clock = clock
        self.operator_tenant = operator_tenant
        self._evict = evict
        self._on_revoke = on_revoke
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._keys: dict[str, TenantKeys] = {}
        self._usage: dict[str, int] = {}
        self._usage_at = -1e18
        self._usage_ttl = _USAGE_TTL_S
        self._usage_generation: int | None = None  # the store's generation the snapshot read
        self._peer_usage: dict[str, dict[str, int]] = {}  # same-site node -> tenant -> bytes
        self._reserved: dict[str, int] = {}  # declared sizes of puts in flight here
        self._recent: dict[str, int] = {}  # growth by puts done here since the usage snapshot
        # Bucket and hold entries: keyed ids and names sealed under the tenant's key.
        self._names = TenantNameSealing(self._sealing_keys_or_none)
        try:
            self._check_catalog_keys(data_dir / CATALOG_FILE)
        except ConfigError:
            self.catalog.close()
            raise
        self._import_seeds()
        if self.catalog.clear_names():
            # A catalog of an older hdsd: its locks and holds named buckets and keys in clear.
            # Sealed here, at start, with this node's tenant keys (one transaction).
            done = self.catalog.seal_clear_names(self.name_seal)
            log.warning("event=catalog_names_sealed buckets=%d holds=%d dropped=%d",
                        done.buckets, done.holds, done.dropped)
        # Why the last catalog sync with each peer failed (none once it succeeds): shown by
        # `hdsd status`, whose exit code says when a node cannot use its keys or catalog.
        self.sync_failures: dict[str, str] = {}

    def close(self) -> None:
        self.catalog.close()

    # -- keys --------------------------------------------------------------------------------
    def _check_catalog_keys(self, path: Path) -> None:
        """Refuse to start with a master key that does not open this node's own catalog (a
        wrong key file, or a node whose key was rotated without its catalog): one line at
        start rather than every tenant refused later."""
        for entry in self.catalog.tenants():
            if not entry.is_shredded:
                try:
                    unwrap_keys(self._master, entry.name, entry.wrapped)
                except HdsdError:
                    raise ConfigError(
                        f"the master key does not open the catalog's tenant keys (tenant "
                        f"{entry.name!r} in {path}); wrong key file, or restore "
                        "the key kept by hdsd key rotate-master") from None
        for key in self.catalog.s3_keys():
            if not key.is_revoked:
                try:
                    unwrap_secret(self._master, key.access_key_id, key.tenant, key.role,
                                  key.wrapped)
                except HdsdError:
                    raise ConfigError(
                        f"the master key does not open S3 access key {key.access_key_id}'s "
                        f"secret in {path}; wrong key file, or restore the key kept by hdsd "
                        "key rotate-master") from None

    def _import_seeds(self) -> None:
        """Keyring tenants the catalog does not know (or knows abandoned) enter it pending."""
        seeds = []
        for t in self._keyring.tenants():
            old = self.catalog.tenant(t)
            blob = self._keyring.wrapped(t)
            keys = self._keyring.get(t)
            if blob and keys is not None and (old is None or old.state == ABANDONED):
                seeds.append(seed_entry(t, blob, keys, epoch=old.epoch + 1 if old else 0))
        self.after_apply(self.catalog.apply(seeds))

    def keys(self, tenant: str) -> TenantKeys:
        """The tenant's keys; :class:`TenantShredded` or :class:`PermissionDenied` if none."""
        keys = self._keys.get(tenant)
        if keys is not None:
            return keys
        entry = self.catalog.tenant(tenant)
        if entry is None and self._keyring.get(tenant) is not None:
            self._import_seeds()  # `hdsd cert issue` wrote a new tenant into the keyring file
            entry = self.catalog.tenant(tenant)
        if entry is None:
            raise PermissionDenied(f"tenant {tenant!r} has no keys in this cluster; "
                                   "create it with `hdsd tenant create`")
        self._check_entry(entry)
        keys = self._keys[tenant] = unwrap_keys(self._master, tenant, entry.wrapped)
        return keys

    def sealing_keys(self, tenant: str) -> TenantKeys | None:
        """The keys the store seals and opens the tenant's names with: those of its catalog
        entry while it holds keys, confirmed or not (a replica may store a version before it
        learns the confirmation its coordinator already saw); None once shredded or
        abandoned, or for a tenant this node does not know."""
        keys = self._keys.get(tenant)
        if keys is not None:
            return keys
        entry = self.catalog.tenant(tenant)
        if entry is None and self._keyring.get(tenant) is not None:
            self._import_seeds()
            entry = self.catalog.tenant(tenant)
        if entry is None or not entry.has_keys:
            return None
        keys = unwrap_keys(self._master, tenant, entry.wrapped)
        if entry.is_confirmed:  # cached as keys() does: after_apply forgets it when it changes
            self._keys[tenant] = keys
        return keys

    def _sealing_keys_or_none(self, tenant: str) -> TenantKeys | None:
        try:
            return self.sealing_keys(tenant)
        except HdsdError:
            return None

    # -- catalog names (sealed: hdsd.catalog._names) --------------------------------------------
    def name_seal(self, tenant: str) -> NameSeal | None:
        """The tenant's name seal (ids and sealed names of its catalog entries), None if this
        node holds no key for it."""
        # Asked three times per put (its hold check, the store's record, the audit record's
        # names): while the tenant's keys are cached (sealing_keys returns them first, and
        # after_apply drops them when the tenant changes), their seal is taken as is, without
        # the lookup's four calls.
        keys = self._keys.get(tenant)
        if keys is not None:
            seal = self._names.seals.get(tenant)
            if seal is not None and seal.keys is keys:
                return seal
        return self._names.seal_for(tenant)

    def _seal(self, tenant: str) -> NameSeal:
        seal = self.name_seal(tenant)
        if seal is None:
            raise PermissionDenied(f"tenant {tenant!r} has no key on this node")
        return seal

    def bucket_entry(self, tenant: str, bucket: str) -> BucketEntry | None:
        seal = self.name_seal(tenant)
        return self.catalog.bucket(tenant, seal.bucket_id(bucket)) if seal else None

    def hold_entry(self, tenant: str, bucket: str, key: str) -> HoldEntry | None:
        seal = self.name_seal(tenant)
        return self.catalog.hold(tenant, seal.name_id(bucket, key)) if seal else None

    def retention_days(self, tenant: str, bucket: str) -> int:
        entry = self.bucket_entry(tenant, bucket)
        return entry.retention_days if entry is not None else 0

    def open_buckets(self, tenant: str | None = None) -> list[tuple[BucketEntry, str]]:
        """Bucket entries (of *tenant*, or all) with their names opened; entries this node
        cannot open (no key) are left out."""
        out = []
        for e in self.catalog.buckets(tenant):
            seal = self.name_seal(e.tenant)
            name = self._opened(bucket_name, seal, e) if seal is not None else None
            if name is not None:
                out.append((e, name))
        return out

    def open_holds(self, tenant: str | None = None) -> list[tuple[HoldEntry, str, str]]:
        """Hold entries (of *tenant*, or all) with their bucket and key opened."""
        out = []
        for e in self.catalog.holds(tenant):
            seal = self.name_seal(e.tenant)
            names = self._opened(hold_names, seal, e) if seal is not None else None
            if names is not None:
                out.append((e, *names))
        return out

    @staticmethod
    def _opened(how: Callable[[NameSeal, Any], Any], seal: NameSeal, entry: Entry) -> Any:
        try:
            return how(seal, entry)
        except HdsdError as exc:  # damaged, or sealed under other keys: listed without it
            log.warning("event=catalog_entry_unreadable ident=%s error=%s", entry.ident, exc)
            return None

    def check_live(self, tenant: str) -> None:
        """Refuse every request of a shredded tenant, or of one whose creation is not
        confirmed (:class:`TenantPending`): nothing is written or read under keys that another
        creation of the same name may still replace."""
        entry = self.catalog.tenant(tenant)
        if entry is not None:
            self._check_entry(entry)

    @staticmethod
    def _check_entry(entry: TenantEntry) -> None:
        if entry.is_shredded:
            raise TenantShredded(f"tenant {entry.name!r} was shredded; its data is gone")
        if entry.state == ABANDONED:
            raise PermissionDenied(f"tenant {entry.name!r} has no keys in this cluster (its "
                                   "creation was abandoned); create it with `hdsd tenant "
                                   "create`")
        if entry.state != CONFIRMED:
            raise pending_error(entry)

    async def ensure_confirmed(self, node: Node, tenant: str) -> None:
        """Before a write: a tenant seeded from the keyring (``hdsd cert issue``) is confirmed
        here by one round if it is still pending; any other pending creation is refused."""
        entry = self.catalog.tenant(tenant)
        if entry is None and self._keyring.get(tenant) is not None:
            self._import_seeds()
            entry = self.catalog.tenant(tenant)
        if entry is not None and entry.state == PENDING and entry.origin == SEED_ORIGIN:
            try:
                await self.confirm(node, tenant, entry.creation)
            except HdsdError as exc:
                log.info("event=tenant_confirm_failed tenant=%s error=%s", tenant, exc)
        self.check_live(tenant)

    def validate(self, entries: list[Entry]) -> None:
        """Refuse entries whose wrapped keys (or S3 secrets) this node's master key cannot
        open."""
        for e in entries:
            if isinstance(e, TenantEntry) and e.has_keys:
                unwrap_keys(self._master, e.name, e.wrapped)
            elif isinstance(e, S3KeyEntry) and not e.is_revoked:
                unwrap_secret(self._master, e.access_key_id, e.tenant, e.role, e.wrapped)

    def after_apply(self, changed: list[Entry]) -> None:
        """Forget what a change made stale: shredded tenants' keys, codecs and seeds; and cut
        the live sessions of newly revoked certificates (whichever way the news came)."""
        revoked: set[str] = set()
        for e in changed:
            if isinstance(e, TenantEntry) and not e.has_keys:
                self._keys.pop(e.name, None)
                self._evict(e.name)
                self._keyring.remove(e.name)
                log.info("event=tenant_%s tenant=%s", "shredded" if e.is_shredded
                         else "abandoned", e.name)
            elif isinstance(e, TenantEntry) and not e.is_confirmed:
                # A pending creation may replace another one: no cached keys or codec of an
                # earlier creation of the name may survive it.
                self._keys.pop(e.name, None)
                self._evict(e.name)
            elif isinstance(e, S3KeyEntry):
                # Nothing to cut: S3 requests are checked one by one, and the next one meets
                # the revoked entry (node._s3keys). Logged whichever way the news came.
                log.info("event=s3_key_%s access_key_id=%s tenant=%s role=%s by=%s",
                         "revoked" if e.is_revoked else "created", e.access_key_id, e.tenant,
                         e.role, e.revoked_by if e.is_revoked else e.by)
            elif isinstance(e, RevokedEntry):
                revoked.add(e.serial)
                log.info("event=certificate_revoked serial=%s kind=%s tenant=%s name=%s by=%s",
                         e.serial, e.kind or "?", e.tenant or "-", e.name or "?", e.by)
        if revoked and self._on_revoke is not None:
            self._on_revoke(revoked)

    # -- authorization -----------------------------------------------------------------------
    def is_operator(self, tenant: str | None, role: str | None) -> bool:
        return role == "admin" and tenant == self.operator_tenant

    def check_admin_of(self, ident_tenant: str | None, role: str | None, tenant: str) -> None:
        """Buckets, holds and S3 keys: the operator, or an admin of that very tenant."""
        if self.is_operator(ident_tenant, role):
            return
        if role != "admin":
            raise PermissionDenied(f"role {role!r} may not administer buckets, holds or S3 "
                                   "keys")
        if ident_tenant != tenant:
            raise PermissionDenied(f"an admin of tenant {ident_tenant!r} may not administer "
                                   f"tenant {tenant!r}")

    # -- admin changes (entries to apply and push) ---------------------------------------------
    def create_tenant(self, name: str, quota: int, plan: str = "", *,
                      origin: str = "") -> list[Entry]:
        """A new tenant on *plan* (``""``: standard), staged *pending* (see :meth:`confirm`),
        or a new quota for an existing confirmed one (whose plan is fixed: asking for another
        is refused). A name whose creation is still pending is refused (:class:`TenantPending`:
        resume or abandon that one)."""
        now = self._clock.now()
        old = self.catalog.tenant(name)
        if old is not None and old.is_shredded:
            raise TenantShredded(f"tenant {name!r} was shredded; a shredded name is never reused")
        if old is not None and old.state in (PENDING, ABANDONING):
            raise pending_error(old)
        if old is not None and old.state == CONFIRMED:
            if plan and plan != old.plan:
                raise InvalidRequest(f"tenant {name!r} is on the {old.plan} plan; a tenant's "
                                     "plan is chosen at creation and never changes")
            return [replace(old, quota_bytes=quota, quota_hlc=now)]
        keys = TenantKeys.generate(name)
        return [TenantEntry(name=name, wrapped=wrap_keys(self._master, keys), created=now,
                            quota_bytes=quota, quota_hlc=now, plan=plan or "standard",
                            epoch=old.epoch + 1 if old is not None else 0,
                            creation=secrets.token_bytes(16), state=PENDING, origin=origin)]

    def plan(self, tenant: str) -> str:
        """The tenant's plan (``standard`` for a tenant this node does not know). Thread-safe:
        placement asks it from worker threads too."""
        entry = self.catalog.tenant(tenant)
        return entry.plan if entry is not None else "standard"

    def shred_tenant(self, name: str) -> list[Entry]:
        if name == self.operator_tenant:
            raise InvalidRequest(f"{name!r} is the operator tenant; it cannot be shredded")
        old = self.catalog.tenant(name)
        if old is None or old.state == ABANDONED:
            raise InvalidRequest(f"no tenant {name!r}")
        if old.state != CONFIRMED and not old.is_shredded:
            # Shredding is terminal for the *name*: it must not end a creation that another
            # node may still be confirming elsewhere; abandoning is the way out of a pending one.
            raise TenantPending(f"tenant {name!r} is not confirmed ({describe_creation(old)}); "
                                f"abandon it with `hdsd tenant abandon {name}` instead of "
                                "shredding")
        return [replace(old, wrapped=b"", shredded=self._clock.now())]

    def create_bucket(self, tenant: str, bucket: str, retention_days: int) -> list[Entry]:
        self.keys(tenant)  # the tenant exists and is live
        seal = self._seal(tenant)
        old = self.catalog.bucket(tenant, seal.bucket_id(bucket))
        if old is not None and retention_days < old.retention_days:
            raise RetentionLocked(f"bucket {tenant}/{bucket} keeps versions {old.retention_days}"
                                  f" days; retention can be extended, never shortened")
        return [seal_bucket(seal, tenant, bucket, retention_days, self._clock.now())]

    def set_hold(self, tenant: str, bucket: str, key: str, held: bool, by: str) -> list[Entry]:
        self.keys(tenant)
        return [seal_hold(self._seal(tenant), tenant, bucket, key, held, by,
                          self._clock.now())]

    def revoke(self, serial: str, by: str, reason: str, *, kind: str = "", tenant: str = "",
               name: str = "", role: str = "", not_after_ms: int = 0) -> list[Entry]:
        return [RevokedEntry(serial=serial, hlc=self._clock.now(), by=by, reason=reason,
                             kind=kind, tenant=tenant, name=name, role=role,
                             not_after=not_after_ms)]

    # -- write checks --------------------------------------------------------------------------
    async def check_write(self, node: Node, tenant: str, bucket: str, key: str, *,
                          size: int | None, delete: bool) -> int:
        """Refuse a put (``size``: declared, or None) or a delete that a legal hold, the
        bucket's retention or the tenant's quota forbids; return the bytes to reserve."""
        await self.ensure_confirmed(node, tenant)
        what = "deleted" if delete else "overwritten"
        self._check_hold(self.hold_entry(tenant, bucket, key), bucket, key, what)
        retention = self.retention_days(tenant, bucket)
        entry = self.catalog.tenant(tenant)
        quota = entry.quota_bytes if entry is not None else 0
        need = 0 if delete or not quota else (size or 0)
        if need:
            await self.refresh_usage(node)
            if self.usage(tenant) + need > quota:  # refuse on a fresh figure only
                await self.refresh_usage(node, max_age=_USAGE_TTL_S)
        current_size = 0
        if retention or (need and self.usage(tenant) + need > quota):
            known = await node.reads.versions_of(tenant, bucket, key)
            current = known[-1] if known and not known[-1].tombstone else None
            if current is not None:
                current_size = current.size  # an overwrite frees what it replaces
                age_ms = self._wall_ms() - HybridClock.wall_ms(current.hlc)
                if retention and age_ms < retention * _DAY_MS:
                    left = (retention * _DAY_MS - age_ms) / _DAY_MS
                    raise RetentionLocked(
                        f"{bucket}/{key} is retention-locked ({retention} days, {left:.1f} "
                        f"left); it cannot be {what}, whatever the role")
        if need:
            self.check_quota(tenant, need - current_size)
        return need - current_size if need else 0

    def retained_until(self, version: Version, records_until: int = 0) -> int:
        """When *version* may be purged (Unix ms; 0: now): the later of its write time plus
        its bucket's retention and *records_until*, what its retention records say."""
        days = self.retention_days(version.tenant, version.bucket)
        by_bucket = HybridClock.wall_ms(version.hlc) + days * _DAY_MS if days else 0
        return max(by_bucket, records_until)

    def now_ms(self) -> int:
        """The retention clock (wall time; tests move it)."""
        return self._wall_ms()

    async def check_purge(self, node: Node, version: Version, records_until: int = 0) -> None:
        """Refuse to purge *version* (delete it for good) while a legal hold holds its key or
        its retention still runs: the bucket's (from the version's own write time: a version
        stays retained for the bucket's retention after it was written, whatever came after
        it — S3's COMPLIANCE retain-until of each version) or a later one set on the version
        (*records_until*, its retention records). Unlike a delete marker, a purge cannot be
        undone, so the catalog is first synced with every reachable node: a hold or retention
        set elsewhere and not yet pushed here is seen (a node unreachable from here, whose
        push has not arrived either, is the window left)."""
        await self.ensure_confirmed(node, version.tenant)
        await self.sync_all(node)
        tenant, bucket, key = version.tenant, version.bucket, version.key
        what = f"{bucket}/{key} version {version.version_id}"
        hold = self.hold_entry(tenant, bucket, key)
        if hold is not None and hold.held:
            raise LegalHold(f"{bucket}/{key} is under legal hold (set by {hold.by}); {what} "
                            "cannot be purged until an admin clears the hold")
        until = self.retained_until(version, records_until)
        now = self._wall_ms()
        if until > now:
            left = (until - now) / _DAY_MS
            raise RetentionLocked(f"{what} is retained until {_iso_day(until)} ({left:.1f} "
                                  "days left); it cannot be purged, whatever the role")

    @staticmethod
    def _check_hold(hold: HoldEntry | None, bucket: str, key: str, what: str) -> None:
        if hold is not None and hold.held:
            raise LegalHold(f"{bucket}/{key} is under legal hold (set by {hold.by}); it cannot be "
                            f"{what} until an admin clears the hold")

    @asynccontextmanager
    async def admit_put(self, node: Node, tenant: str, bucket: str, key: str,
                        size: int | None) -> AsyncIterator[None]:
        """:meth:`check_write` for a put; its declared size stays reserved against the quota
        until the block ends, so concurrent puts here cannot overshoot together."""
        need = max(0, await self.check_write(node, tenant, bucket, key, size=size,
                                             delete=False))
        self._reserved[tenant] = self._reserved.get(tenant, 0) + need
        stored = False
        try:
            yield
            stored = True
        finally:
            self.release_put(tenant, need, stored)

    def admit_put_now(self, tenant: str, bucket: str, key: str, size: int | None) -> int | None:
        """:meth:`admit_put` without awaiting anything, when nothing needs to be awaited to
        decide — the usual small put: a confirmed tenant, no retention on the bucket, and no
        quota or a fresh usage figure with room for *size* (a legal hold is refused here as
        there). The bytes now reserved against the quota (give them back with
        :meth:`release_put`), or None: then :meth:`admit_put` decides (it confirms a seeded
        tenant, refreshes the usage, reads the current version for retention and overwrites,
        and raises the refusals of the other cases)."""
        entry = self.catalog.tenant(tenant)
        if entry is None or entry.state != CONFIRMED or entry.is_shredded:
            return None
        seal = self.name_seal(tenant)
        if seal is None:
            return None  # (admit_put refuses it)
        self._check_hold(self.catalog.hold(tenant, seal.name_id(bucket, key)), bucket, key,
                         "overwritten")
        bucket_entry = self.catalog.bucket(tenant, seal.bucket_id(bucket))
        if bucket_entry is not None and bucket_entry.retention_days:
            return None
        need = (size or 0) if entry.quota_bytes else 0
        if need and (trio.current_time() - self._usage_at >= self._usage_ttl
                     or self.usage(tenant) + need > entry.quota_bytes):
            return None  # check_write refreshes the figure, and counts what an overwrite frees
        self._reserved[tenant] = self._reserved.get(tenant, 0) + need
        return need

    def release_put(self, tenant: str, need: int, stored: bool) -> None:
        """The end of a put admitted with *need* bytes reserved: a stored one counts until the
        next usage refresh has seen it."""
        if stored:
            self._recent[tenant] = self._recent.get(tenant, 0) + need
        self._reserved[tenant] -= need

    def check_quota(self, tenant: str, growth: int) -> None:
        entry = self.catalog.tenant(tenant)
        if entry is None or not entry.quota_bytes or growth <= 0:
            return
        used = self.usage(tenant)
        if used + growth > entry.quota_bytes:
            raise QuotaExceeded(f"tenant {tenant!r} uses {used} of its quota of "
                                f"{entry.quota_bytes} bytes; {growth} more do not fit and "
                                "nothing was stored")

    def usage(self, tenant: str) -> int:
        """This site's view of the tenant's logical bytes, plus puts reserved here."""
        return (self._usage.get(tenant, 0) + self._reserved.get(tenant, 0)
                + self._recent.get(tenant, 0)
                + sum(u.get(tenant, 0) for u in self._peer_usage.values()))

    def local_usage(self) -> dict[str, int]:
        return dict(self._usage)

    async def refresh_usage(self, node: Node, *, force: bool = False,
                            max_age: float | None = None) -> None:
        """Take a new usage snapshot if the last one is older than *max_age* (default: the
        TTL its cost allows, see :data:`_USAGE_COST_RATIO`), or *force* — unless the store
        has not changed since the last one and no put done here still counts on top of it:
        that one is then exact, and only marked fresh."""
        now = trio.current_time()
        age = now - self._usage_at
        if force or age >= (self._usage_ttl if max_age is None else max_age):
            generation = node.store.generation
            # A put counted in _recent may have been indexed before the last snapshot read
            # the store (counted twice until a snapshot taken after it subtracts it), or not
            # yet (the generation moves when it is): either way only a new snapshot settles it.
            if generation == self._usage_generation and not any(self._recent.values()):
                self._usage_at = now
                return
            self._usage_at = now
            before = dict(self._recent)
            self._usage = await trio.to_thread.run_sync(node.store.tenant_usage)
            # Read before the scan: a commit during the scan moves it again, so the next
            # refresh rescans rather than trusting a snapshot that may have missed it.
            self._usage_generation = generation
            self._usage_at = trio.current_time()  # set before too: one scan at a time
            cost = self._usage_at - now
            self._usage_ttl = max(_USAGE_TTL_S, _USAGE_COST_RATIO * cost)
            for tenant, grown in before.items():
                self._recent[tenant] -= grown

    # -- propagation ---------------------------------------------------------------------------
    async def apply(self, entries: list[Entry]) -> list[Entry]:
        self.validate(entries)
        changed = await trio.to_thread.run_sync(self.catalog.apply, entries)
        self.after_apply(changed)
        return changed

    async def apply_and_push(self, node: Node, entries: list[Entry]) -> dict[str, Any]:
        """Apply locally, then push to every other node; say which confirmed."""
        await self.apply(entries)
        wire = [e.to_wire() for e in entries]
        confirmed: list[str] = []
        pending: dict[str, str] = {}

        async def push(name: str) -> None:
            try:
                await node.peers.call(name, CatalogPush(UNSENT, node.layout.layout_id, wire))
                confirmed.append(name)
            except HdsdError as exc:
                pending[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for n in node.layout.nodes:
                if n.name != node.config.name:
                    nursery.start_soon(push, n.name)
        if pending:
            log.warning("event=catalog_push_pending nodes=%s", ",".join(sorted(pending)))
        return {"applied_on": sorted([node.config.name, *confirmed]),
                "pending": sorted(pending)}

    # -- confirmation (hdsd.catalog._confirm) --------------------------------------------------
    async def vote(self, entry: TenantEntry, kind: str) -> TenantEntry:
        """This node's vote on *entry* (``create``: a pending creation; ``abandon``: its epoch,
        ``abandoning``), checked and stored in one step; :class:`TenantConflict` to refuse."""
        if entry.has_keys:
            self.validate([entry])  # a creation this node could not open is refused
        decide = vote_create if kind == "create" else vote_abandon
        changed, held = await trio.to_thread.run_sync(
            self.catalog.update_tenant, entry.name, lambda cur: decide(cur, entry))
        self.after_apply(changed)
        return held

    async def _round(self, node: Node, entry: TenantEntry, kind: str
                     ) -> tuple[list[str], dict[str, str]]:
        """Ask every node (this one first) for its vote; (nodes that said yes, nodes not
        reached: why). A refusal raises :class:`TenantConflict` (or what the node raised)."""
        await self.vote(entry, kind)
        acked = [node.config.name]
        waiting: dict[str, str] = {}
        refused: dict[str, HdsdError] = {}
        wire = entry.to_wire()

        async def ask(name: str) -> None:
            try:
                await node.peers.call(name, TenantVote(UNSENT, node.layout.layout_id, wire, kind))
                acked.append(name)
            except (TenantConflict, TenantShredded) as exc:
                refused[name] = exc
            except HdsdError as exc:
                waiting[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for n in node.layout.nodes:
                if n.name != node.config.name:
                    nursery.start_soon(ask, n.name)
        if refused:
            # Learn what the refusing nodes hold, so this node stops proposing a lost cause.
            for name in refused:
                with trio.move_on_after(node.config.write_timeout_s):
                    try:
                        await self.sync_with(node, name)
                    except HdsdError as exc:
                        log.info("event=catalog_sync_failed peer=%s error=%s", name, exc)
            first, refusal = min(refused.items())
            raise type(refusal)(f"{first} refused: "
                                f"{refusal.message.removeprefix(f'peer {first}: ')}")
        return sorted(acked), dict(sorted(waiting.items()))

    def _answer(self, entry: TenantEntry, acked: list[str], waiting: dict[str, str]
                ) -> dict[str, Any]:
        return {"tenant": entry.name, "state": entry.state, "creation": entry.creation.hex(),
                "epoch": entry.epoch, "origin": entry.origin, "plan": entry.plan,
                "quota_bytes": entry.quota_bytes, "acked": acked, "waiting": waiting,
                "applied_on": acked, "pending": sorted(waiting)}

    async def confirm(self, node: Node, name: str, creation: bytes = b"") -> dict[str, Any]:
        """One confirmation round for the pending creation of *name* this node holds (which
        must be *creation*, if given): confirmed and pushed if every node voted yes, else
        ``state: pending`` with the nodes it waits for. :class:`TenantConflict` if that
        creation lost (to another one, or to an abandonment)."""
        held = self.catalog.tenant(name)
        if held is None or held.state == ABANDONED:
            if creation:
                raise TenantConflict(f"tenant {name!r}: creation {creation.hex()[:8]} is not "
                                     "held here any more (abandoned or never seen)")
            raise InvalidRequest(f"no creation of tenant {name!r} to resume")
        entry: TenantEntry = held
        if entry.is_shredded:
            raise TenantShredded(f"tenant {name!r} was shredded; a shredded name is never reused")
        if creation and entry.creation != creation:
            raise TenantConflict(f"tenant {name!r}: creation {creation.hex()[:8]} lost to "
                                 f"{describe_creation(entry)}; nothing was written under its keys")
        if entry.state == ABANDONING:
            raise pending_error(entry)
        if entry.state == PENDING:
            acked, waiting = await self._round(node, entry, "create")
            if waiting:
                log.info("event=tenant_pending tenant=%s creation=%s waiting=%s", name,
                         entry.creation.hex()[:8], ",".join(waiting))
                return self._answer(entry, acked, waiting)
            changed, entry = await trio.to_thread.run_sync(
                self.catalog.update_tenant, name, lambda cur: decide_confirm(cur, entry))
            self.after_apply(changed)
            log.info("event=tenant_confirmed tenant=%s creation=%s", name,
                     entry.creation.hex()[:8])
        result = await self.apply_and_push(node, [entry])  # the confirmation, to every node
        return self._answer(entry, result["applied_on"],
                            {n: "catches up at its next catalog sync" for n in result["pending"]})

    async def abandon(self, node: Node, name: str) -> dict[str, Any]:
        """Abandon the unconfirmed creation of *name*: every node must vote for it (a node
        holding it confirmed refuses: :class:`TenantConflict`); :class:`Unavailable` naming the
        nodes not reached otherwise (run it again)."""
        held = self.catalog.tenant(name)
        if held is None:
            raise InvalidRequest(f"no tenant {name!r}")
        entry: TenantEntry = held
        if entry.is_shredded:
            raise TenantShredded(f"tenant {name!r} was shredded")
        if entry.state == CONFIRMED:
            raise TenantConflict(f"tenant {name!r} is confirmed ({describe_creation(entry)}); a "
                                 "confirmed tenant cannot be abandoned (`hdsd tenant shred` "
                                 "destroys it)")
        if entry.state != ABANDONED:
            _, waiting = await self._round(node, replace(entry, state=ABANDONING), "abandon")
            if waiting:
                raise Unavailable(
                    f"abandoning tenant {name!r} waits for {', '.join(waiting)} ("
                    + "; ".join(f"{n}: {why}" for n, why in waiting.items())
                    + f"); nothing can be written to it meanwhile. Run `hdsd tenant abandon "
                    f"{name}` again once they answer")
            epoch = entry.epoch
            changed, entry = await trio.to_thread.run_sync(
                self.catalog.update_tenant, name, lambda cur: decide_abandon(cur, epoch))
            self.after_apply(changed)
            log.info("event=tenant_abandoned tenant=%s creation=%s", name,
                     entry.creation.hex()[:8])
        result = await self.apply_and_push(node, [entry])
        return self._answer(entry, result["applied_on"],
                            {n: "catches up at its next catalog sync" for n in result["pending"]})

    async def resume_own(self, node: Node) -> None:
        """One round for each pending creation this node made (or seeded): a creation cut off
        by a partition is confirmed as soon as every node answers, without an operator. Not
        tried while a node is unreachable (the sync just before found out): a round could not
        complete, and its timeouts would slow the sync loop for as long as a site is down."""
        if not all(node.peers.reachable(n.name) for n in node.layout.nodes
                   if n.name != node.config.name):
            return
        for entry in self.catalog.tenants():
            if entry.state == PENDING and not entry.is_shredded \
                    and entry.origin in (node.config.name, SEED_ORIGIN):
                try:
                    await self.confirm(node, entry.name, entry.creation)
                except HdsdError as exc:
                    log.info("event=tenant_confirm_failed tenant=%s error=%s", entry.name, exc)

    async def sync_with(self, node: Node, name: str) -> None:
        """One catalog sync with *name*: pull on digest mismatch, push back what it lacks."""
        body = await node.peers.call(
            name, CatalogSync(UNSENT, node.layout.layout_id, self.catalog.digest()))
        record = node.layouts.record  # (it may have changed during the call)
        if record.has_node(name) and record.node(name).site == node.config.site:
            if "usage" in body:
                self._peer_usage[name] = body["usage"]
        if body["entries"]:
            await self.apply([entry_from_wire(e) for e in body["entries"]])
        if body["digest"] != self.catalog.digest():
            wire = [e.to_wire() for e in self.catalog.entries()]
            await node.peers.call(name, CatalogPush(UNSENT, node.layout.layout_id, wire))

    async def sync_all(self, node: Node) -> None:
        async def one(name: str) -> None:
            try:
                await self.sync_with(node, name)
                self.sync_failures.pop(name, None)
            except Unavailable as exc:
                # The peer is down or unreachable: status shows that already (down), and a
                # failure recorded before it went away stays until a sync succeeds. An
                # unreachable peer is reported by the peer pool (rate-limited).
                quiet = not node.peers.reachable(name)
                log.log(logging.DEBUG if quiet else logging.INFO,
                        "event=catalog_sync_failed peer=%s error=%s", name, exc)
            except HdsdError as exc:
                # It answered but its catalog cannot be taken: a master key that does not
                # open its entries, another layout... an operator must look. One warning per
                # new reason, not one per sync period (`hdsd status` keeps showing it).
                again = self.sync_failures.get(name) == str(exc)
                log.log(logging.DEBUG if again else logging.WARNING,
                        "event=catalog_sync_failed peer=%s error=%s", name, exc)
                self.sync_failures[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for n in node.layout.nodes:
                if n.name != node.config.name:
                    nursery.start_soon(one, n.name)

    async def run(self, node: Node, *, interval: float,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync once with every reachable node (bounded), report started, then every
        *interval* seconds."""
        with trio.move_on_after(min(interval, node.config.write_timeout_s)):
            await self.sync_all(node)
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh_usage(node)
            except HdsdError as exc:  # a store problem is reported by the requests themselves
                log.warning("event=usage_refresh_failed error=%s", exc)
            await self.sync_all(node)
            await self.resume_own(node)
