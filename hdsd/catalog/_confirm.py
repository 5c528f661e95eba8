"""Confirming a tenant creation before anything is written under its keys (pure functions).

The danger: two creations of one name on nodes that cannot see each other each make keys; the
merge keeps one; data written under the other's keys could never be read again. So a creation
is *confirmed* before its tenant accepts a write, by a vote of **every node of both sites**:

1. A creation is staged ``pending`` (``epoch``, random ``creation`` id, ``created`` HLC).
2. Any node may run a round (the creating node does at once, and again at each catalog sync
   until it is decided; ``hdsd tenant create --resume``): it asks every node, itself included,
   to :func:`vote_create`. A node votes yes iff, once the proposal is merged into what it holds,
   it holds *that* creation, not abandoning; otherwise it refuses with :class:`TenantConflict`
   naming what it holds. Whatever a node holds only moves up the merge order afterwards.
3. With a yes from every node, the round's node :func:`decide_confirm`\\s — atomically with
   its own check that it does not hold the creation ``abandoning`` — and pushes the confirmed
   entry; sync carries it to nodes that missed the push.

Abandoning is the same vote with ``abandoning`` (:func:`vote_abandon`, refused by a node that
holds the tenant confirmed) and :func:`decide_abandon` once every node said yes; the next
creation of the name starts a new epoch, which outranks every creation of the abandoned one.

Why at most one creation of a name is ever confirmed, and it is never replaced: the merge
order puts ``confirmed`` above ``abandoning`` and ``pending``, and among pending creations of
an epoch the earliest first. The node that made creation *A* holds *A* or something above it
from then on, so it votes yes to a later *B* only if it learnt of *A*'s abandonment first
(``abandoned`` ends the epoch) — and an abandoned creation was never confirmed, since its
abandonment needed a yes from every node, and a node that had confirmed (or voted for a round
that then confirmed: the confirming node checks its own state last) refuses. A node never
makes a creation while it holds one of the same name. So when *B* is confirmed, every other
creation of the epoch is above *B* in the merge order or abandoned, and *B* stays the winner
everywhere. See tests/catalog/test_confirm.py for the same claim checked on any delivery order.

The cost: a creation, and an abandonment, wait for every node — a site down for days blocks
new tenants (not existing ones) for those days. That is deliberate: a quorum of one site
cannot know what the other site created meanwhile, and a tenant is created once in its life.
"""

from __future__ import annotations

from dataclasses import replace

from .._errors import InvalidRequest, TenantConflict, TenantPending, TenantShredded
from ..cluster import HybridClock
from ._model import (
    ABANDONED,
    ABANDONING,
    CONFIRMED,
    PENDING,
    TenantEntry,
    merge,
)

__all__ = ["decide_abandon", "decide_confirm", "describe_creation", "pending_error",
           "same_creation", "vote_abandon", "vote_create"]


def describe_creation(e: TenantEntry) -> str:
    """One phrase naming a creation, for messages: ``creation 1a2b3c4d (epoch 0) made on
    dc1-n1 at 2026-...``; never key bytes."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(HybridClock.wall_ms(e.created) / 1000, dt.UTC)
    ident = e.creation.hex()[:8] if e.creation else "(before confirmation existed)"
    where = f" made on {e.origin}" if e.origin else ""
    at = f" at {when:%Y-%m-%dT%H:%M:%SZ}" if e.created else ""
    return f"creation {ident}{f' (epoch {e.epoch})' if e.epoch else ''}{where}{at}, {e.state}"


def same_creation(a: TenantEntry, b: TenantEntry) -> bool:
    return (a.epoch, a.creation, a.created) == (b.epoch, b.creation, b.created)


describe = describe_creation  # the short name, inside this module


def pending_error(e: TenantEntry) -> TenantPending:
    """The refusal of a request for a tenant whose creation is not confirmed."""
    if e.state == ABANDONING:
        return TenantPending(f"tenant {e.name!r} is being abandoned ({describe(e)}); nothing "
                             f"is written to it. Finish with `hdsd tenant abandon {e.name}`")
    return TenantPending(
        f"tenant {e.name!r} is not confirmed yet ({describe(e)}): every node of both sites "
        "must hold this creation before anything is written under its keys. `hdsd tenant "
        f"create --resume {e.name}` shows where it waits; `hdsd tenant abandon {e.name}` "
        "drops it")


def _merged(current: TenantEntry | None, proposed: TenantEntry) -> TenantEntry:
    return proposed if current is None else merge(current, proposed)  # type: ignore[return-value]


def vote_create(current: TenantEntry | None, proposed: TenantEntry) -> TenantEntry:
    """A node's vote on a pending creation: the entry to hold (the proposal merged in) if it
    then holds that very creation, not being abandoned; :class:`TenantConflict` naming what
    it holds otherwise."""
    merged = _merged(current, proposed)
    if merged.is_shredded:
        raise TenantShredded(f"tenant {proposed.name!r} was shredded; a shredded name is never "
                             "reused")
    if not same_creation(merged, proposed) or merged.state not in (PENDING, CONFIRMED):
        raise TenantConflict(f"tenant {proposed.name!r}: {describe(proposed)} lost to "
                             f"{describe(merged)}; nothing was written under its keys")
    return merged


def vote_abandon(current: TenantEntry | None, proposed: TenantEntry) -> TenantEntry:
    """A node's vote on abandoning the epoch of *proposed* (state ``abandoning``): refused
    (:class:`TenantConflict`) if the node holds the tenant confirmed."""
    merged = _merged(current, proposed)
    if merged.is_shredded:
        raise TenantShredded(f"tenant {proposed.name!r} was shredded")
    if merged.epoch == proposed.epoch and merged.state == CONFIRMED:
        raise TenantConflict(f"tenant {proposed.name!r} is confirmed ({describe(merged)}); a "
                             "confirmed tenant cannot be abandoned (`hdsd tenant shred` "
                             "destroys it)")
    return merged


def decide_confirm(current: TenantEntry | None, proposed: TenantEntry) -> TenantEntry:
    """The deciding node's last, atomic check before confirming *proposed* (every node voted
    yes): it must still hold that creation, pending or confirmed — not abandoning."""
    if current is None or not same_creation(current, proposed) \
            or current.state not in (PENDING, CONFIRMED) or current.is_shredded:
        held = describe(current) if current is not None else "nothing"
        raise TenantConflict(f"tenant {proposed.name!r}: {describe(proposed)} cannot be "
                             f"confirmed: this node now holds {held}")
    return replace(current, state=CONFIRMED)


def decide_abandon(current: TenantEntry | None, epoch: int) -> TenantEntry:
    """The deciding node's atomic check before ending *epoch* (every node voted to abandon):
    it must hold the epoch ``abandoning`` (or already ``abandoned``)."""
    if current is None:
        raise InvalidRequest("no such tenant creation here")
    if current.epoch != epoch or current.state not in (ABANDONING, ABANDONED):
        raise TenantConflict(f"tenant {current.name!r} cannot be abandoned: this node holds "
                             f"{describe(current)}")
    return replace(current, state=ABANDONED, wrapped=b"")
