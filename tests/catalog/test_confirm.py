"""Tenant creations are confirmed before use: the votes and decisions of hdsd.catalog._confirm
driven through partitions, any delivery order, lost messages and concurrent creations of one
name (hypothesis over a message-level simulation), plus the pure rules and the migration."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import TenantConflict
from hdsd.catalog import Catalog, TenantEntry, merge
from hdsd.catalog._confirm import (
    decide_abandon,
    decide_confirm,
    same_creation,
    vote_abandon,
    vote_create,
)
from hdsd.catalog._model import ABANDONED, ABANDONING, CONFIRMED, PENDING

NODES = ("dc1-n1", "dc2-n1", "dc2-n2")  # two sites (few nodes: races are found sooner)
NAME = "chu"


def _creation(origin: str, created: int, ident: int, epoch: int = 0) -> TenantEntry:
    return TenantEntry(name=NAME, wrapped=bytes([ident]) * 72, created=created, epoch=epoch,
                       creation=bytes([ident]) * 16, state=PENDING, origin=origin)


# -- the pure rules -----------------------------------------------------------------------------
def test_a_node_votes_for_one_creation_only() -> None:
    early, late = _creation("dc1-n1", 10, 1), _creation("dc2-n1", 20, 2)
    assert vote_create(None, late) == late
    # holding the later one, the earlier one still wins the merge: the vote switches to it
    assert same_creation(vote_create(late, early), early)
    with pytest.raises(TenantConflict, match="lost to"):
        vote_create(early, late)  # holding the earlier one: the later one is refused
    confirmed_late = replace(late, state=CONFIRMED)
    with pytest.raises(TenantConflict):
        vote_create(confirmed_late, early)  # a confirmed creation is never replaced
    with pytest.raises(TenantConflict):
        vote_create(replace(early, state=ABANDONING), early)  # being abandoned


def test_confirmed_and_abandoned_exclude_each_other() -> None:
    c = _creation("dc1-n1", 10, 1)
    with pytest.raises(TenantConflict, match="cannot be abandoned"):
        vote_abandon(replace(c, state=CONFIRMED), replace(c, state=ABANDONING))
    held = vote_abandon(c, replace(c, state=ABANDONING))
    assert held.state == ABANDONING
    with pytest.raises(TenantConflict):
        decide_confirm(held, c)  # this node voted to abandon: it never confirms
    with pytest.raises(TenantConflict):
        decide_abandon(replace(c, state=CONFIRMED), 0)
    done = decide_abandon(held, 0)
    assert done.state == ABANDONED and done.wrapped == b"" and not done.has_keys
    # a new creation of the name starts a new epoch, which outranks the abandoned one
    again = _creation("dc2-n1", 5, 3, epoch=1)
    assert same_creation(merge(done, again), again)  # type: ignore[arg-type]


# -- a message-level simulation ------------------------------------------------------------------
@dataclass
class _Round:
    coordinator: str
    entry: TenantEntry
    kind: str  # create | abandon
    yes: set[str] = field(default_factory=set)
    refused: bool = False
    decided: bool = False


@dataclass
class _World:
    state: dict[str, TenantEntry | None] = field(default_factory=lambda: dict.fromkeys(NODES))
    rounds: list[_Round] = field(default_factory=list)
    # in flight: ("vote", round index, voter) / ("reply", round index, voter, yes) /
    # ("push", sender, receiver, entry)
    flight: list[tuple[object, ...]] = field(default_factory=list)
    confirmed_ever: dict[tuple[int, bytes, int], str] = field(default_factory=dict)
    confirmed_at: set[str] = field(default_factory=set)  # nodes that have held it confirmed
    next_id: int = 1
    clock: int = 0

    def hold(self, node: str, entry: TenantEntry) -> None:
        cur = self.state[node]
        self.state[node] = entry if cur is None else merge(cur, entry)  # type: ignore[assignment]

    def check(self) -> None:
        for node, e in self.state.items():
            if e is not None and e.state == CONFIRMED:
                self.confirmed_ever.setdefault((e.epoch, e.creation, e.created), node)
        assert len(self.confirmed_ever) <= 1, f"two confirmed creations: {self.confirmed_ever}"
        if self.confirmed_ever:
            ((epoch, creation, created),) = self.confirmed_ever
            for node in self.confirmed_at:  # a node that held it confirmed holds it for good
                e = self.state[node]
                assert e is not None and e.state == CONFIRMED, (node, e)
                assert (e.epoch, e.creation, e.created) == (epoch, creation, created)
            self.confirmed_at |= {n for n, e in self.state.items()
                                  if e is not None and e.state == CONFIRMED}
            for e in self.state.values():
                # no node ever holds another creation *confirmed*, nor any later epoch
                if e is not None and e.state == CONFIRMED:
                    assert (e.epoch, e.creation, e.created) == (epoch, creation, created)
                if e is not None:
                    assert e.epoch <= epoch


# Weighted: mostly deliveries, so that rounds complete and race each other.
_ACTIONS = ["create", "create", "round", "round", "round", "abandon", "abandon", "drop",
            "sync", "sync", *["deliver"] * 10]


def _step(world: _World, data: st.DataObject) -> None:
    action = data.draw(st.sampled_from(_ACTIONS))
    world.clock += data.draw(st.integers(0, 2))  # equal HLCs happen: ties break on the id
    if action == "create":
        node = data.draw(st.sampled_from(NODES))
        cur = world.state[node]
        if cur is None or cur.state == ABANDONED:  # as Tenancy.create_tenant
            entry = _creation(node, world.clock, world.next_id,
                              epoch=cur.epoch + 1 if cur is not None else 0)
            world.next_id += 1
            world.hold(node, entry)
    elif action in ("round", "abandon"):
        node = data.draw(st.sampled_from(NODES))
        cur = world.state[node]
        if cur is None:
            return
        if action == "round" and cur.state == PENDING:
            entry, kind = cur, "create"
        elif action == "abandon" and cur.state in (PENDING, ABANDONING):
            entry, kind = replace(cur, state=ABANDONING), "abandon"
        else:
            return
        world.rounds.append(_Round(node, entry, kind))
        world.flight += [("vote", len(world.rounds) - 1, n) for n in NODES]
    elif action in ("deliver", "drop") and world.flight:
        msg = world.flight.pop(data.draw(st.integers(0, len(world.flight) - 1)))
        if action == "deliver":
            _deliver(world, msg)
    elif action == "sync":
        a, b = data.draw(st.sampled_from(NODES)), data.draw(st.sampled_from(NODES))
        if world.state[a] is not None:
            world.flight.append(("push", a, b, world.state[a]))
    world.check()


def _deliver(world: _World, msg: tuple[object, ...]) -> None:
    if msg[0] == "vote":
        _, index, voter = msg
        assert isinstance(index, int) and isinstance(voter, str)
        rnd = world.rounds[index]
        try:
            held = (vote_create if rnd.kind == "create" else vote_abandon)(
                world.state[voter], rnd.entry)
            world.state[voter] = held
            world.flight.append(("reply", index, voter, True))
        except TenantConflict:
            world.flight.append(("reply", index, voter, False))
    elif msg[0] == "reply":
        _, index, voter, yes = msg
        assert isinstance(index, int) and isinstance(voter, str)
        rnd = world.rounds[index]
        if not yes:
            rnd.refused = True
            return
        rnd.yes.add(voter)
        if rnd.yes == set(NODES) and not rnd.refused and not rnd.decided:
            rnd.decided = True
            try:  # the coordinator's atomic last check, then the push to everyone
                if rnd.kind == "create":
                    decided = decide_confirm(world.state[rnd.coordinator], rnd.entry)
                else:
                    decided = decide_abandon(world.state[rnd.coordinator], rnd.entry.epoch)
            except TenantConflict:
                return
            world.state[rnd.coordinator] = decided
            world.flight += [("push", rnd.coordinator, n, decided) for n in NODES]
    else:
        _, _, receiver, entry = msg
        assert isinstance(receiver, str) and isinstance(entry, TenantEntry)
        world.hold(receiver, entry)


@given(st.data())
def test_any_delivery_order_confirms_at_most_one_creation_and_never_replaces_it(
        data: st.DataObject) -> None:
    world = _World()
    for _ in range(data.draw(st.integers(10, 300))):
        _step(world, data)
    # heal: every node sends its entry to every other, in any order, twice over
    for _ in range(2):
        pushes = [("push", a, b, world.state[a]) for a in NODES for b in NODES
                  if world.state[a] is not None]
        for msg in data.draw(st.permutations(pushes)):
            _deliver(world, msg)
            world.check()
    final = {n: world.state[n] for n in NODES}
    assert len(set(final.values())) == 1, final  # every node holds the same entry
    if world.confirmed_ever:
        ((epoch, creation, created),) = world.confirmed_ever
        e = final[NODES[0]]
        assert e is not None and e.state == CONFIRMED
        assert (e.epoch, e.creation, e.created) == (epoch, creation, created)


def _round_now(world: _World, coordinator: str, entry: TenantEntry, kind: str = "create") -> None:
    """One round whose votes and replies are all delivered at once; its pushes stay in
    flight (not delivered)."""
    world.rounds.append(_Round(coordinator, entry, kind))
    index = len(world.rounds) - 1
    for voter in NODES:
        _deliver(world, ("vote", index, voter))
    replies = [m for m in world.flight if m[0] == "reply" and m[1] == index]
    world.flight = [m for m in world.flight if m not in replies]
    for m in replies:
        _deliver(world, m)
    world.check()


def test_a_later_creation_is_refused_by_a_node_that_confirmed_the_earlier_one() -> None:
    """The race that needs the refusal: B is confirmed on its node before A's round asks it;
    the confirmation has not reached A's node. Voting yes there would confirm both."""
    world = _World()
    a, b = _creation("dc1-n1", 10, 1), _creation("dc2-n1", 11, 2)
    world.hold("dc1-n1", a)
    world.hold("dc2-n1", b)
    _round_now(world, "dc2-n1", b)  # dc1-n1 holds a, which wins the merge: it refuses b
    assert not world.confirmed_ever
    world.flight.clear()
    world.state["dc1-n1"] = None  # as if dc1-n1 had not made a yet: b's round completes
    _round_now(world, "dc2-n1", b)
    assert world.state["dc2-n1"] is not None and world.state["dc2-n1"].state == CONFIRMED
    world.flight.clear()  # the confirmation push is lost (partition)
    world.hold("dc1-n1", a)  # dc1-n1 creates a (it never heard of b)
    _round_now(world, "dc1-n1", a)  # dc2-n1 holds b confirmed: it refuses a
    assert set(world.confirmed_ever) == {(0, b.creation, 11)}
    assert world.state["dc1-n1"] is not None and world.state["dc1-n1"].state == PENDING


def test_an_abandon_round_never_ends_a_confirmed_creation() -> None:
    """Abandon raced with the confirmation: dc2-n1 votes to abandon before it hears that dc1-n1
    confirmed; dc1-n1 refuses the abandon, so the creation stays confirmed everywhere."""
    world = _World()
    a = _creation("dc1-n1", 10, 1)
    world.hold("dc1-n1", a)
    _round_now(world, "dc1-n1", a)
    assert world.state["dc1-n1"] is not None and world.state["dc1-n1"].state == CONFIRMED
    world.flight.clear()  # the confirmation reaches nobody yet
    held = world.state["dc2-n1"]
    assert held is not None and held.state == PENDING
    _round_now(world, "dc2-n1", replace(held, state=ABANDONING), "abandon")
    assert world.state["dc2-n1"] is not None and world.state["dc2-n1"].state == ABANDONING
    for a_node, b_node in ((x, y) for x in NODES for y in NODES):  # heal
        state = world.state[a_node]
        if state is not None:
            _deliver(world, ("push", a_node, b_node, state))
        world.check()
    assert {e.state for e in world.state.values() if e is not None} == {CONFIRMED}


def test_partitioned_creations_then_heal_confirm_exactly_the_earliest() -> None:
    """The scenario of the end-to-end test, scripted: dc1 and dc2 cut apart, each creates the
    name; neither round completes; after the heal both rounds run again: the earliest
    creation is confirmed everywhere, the other is refused everywhere."""
    world = _World()
    a = _creation("dc1-n1", 100, 1)
    b = _creation("dc2-n1", 101, 2)
    world.hold("dc1-n1", a)
    world.hold("dc2-n1", b)
    for origin, entry in (("dc1-n1", a), ("dc2-n1", b)):  # partition: own site only
        world.rounds.append(_Round(origin, entry, "create"))
        for voter in NODES:
            if voter[:3] == origin[:3]:
                _deliver(world, ("vote", len(world.rounds) - 1, voter))
    for msg in list(world.flight):
        _deliver(world, msg)
    world.flight.clear()
    assert not world.confirmed_ever  # neither round heard from the other site
    for origin, entry in (("dc2-n1", b), ("dc1-n1", a)):  # heal: both retry
        world.rounds.append(_Round(origin, world.state[origin] or entry, "create"))
        index = len(world.rounds) - 1
        for voter in NODES:
            _deliver(world, ("vote", index, voter))
        while world.flight:
            _deliver(world, world.flight.pop(0))
        world.check()
    assert set(world.confirmed_ever) == {(0, a.creation, 100)}
    assert all(e is not None and same_creation(e, a) and e.state == CONFIRMED
               for e in world.state.values())


# -- durable form ----------------------------------------------------------------------------
def test_older_catalogs_migrate_as_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tenants (name TEXT PRIMARY KEY, wrapped BLOB, created INTEGER NOT "
               "NULL, quota_bytes INTEGER NOT NULL, quota_hlc INTEGER NOT NULL, key_generation "
               "INTEGER NOT NULL, shredded INTEGER NOT NULL)")
    db.execute("INSERT INTO tenants VALUES ('old', ?, ?, 0, ?, 1, ?)",
               (b"w" * 72, 5 - (1 << 63), -(1 << 63), -(1 << 63)))
    db.commit()
    db.close()
    catalog = Catalog(path)
    try:
        old = catalog.tenant("old")
        assert old is not None and old.is_confirmed and old.creation == b"" and old.epoch == 0
        assert "state" not in old.to_wire()  # its map, and the digest, are what they were
    finally:
        catalog.close()


def test_update_tenant_decides_atomically_and_durably(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    c = _creation("dc1-n1", 10, 1)
    catalog.update_tenant(NAME, lambda cur: vote_create(cur, c))
    with pytest.raises(TenantConflict):
        catalog.update_tenant(NAME, lambda cur: vote_create(cur, _creation("dc2-n1", 11, 2)))
    catalog.update_tenant(NAME, lambda cur: decide_confirm(cur, c))
    catalog.close()
    catalog = Catalog(tmp_path / "catalog.sqlite")
    try:
        held = catalog.tenant(NAME)
        assert held is not None and same_creation(held, c) and held.state == CONFIRMED
        assert held.origin == "dc1-n1"
    finally:
        catalog.close()


def test_init_writes_the_operator_tenant_confirmed_in_every_catalog(tmp_path: Path) -> None:
    from tests.helpers.cluster import init_cluster

    init_cluster(tmp_path, nodes_per_site=2)
    held = []
    for path in sorted(tmp_path.glob("*/data/catalog.sqlite")):
        catalog = Catalog(path)
        try:
            held.append(catalog.tenant("default"))
        finally:
            catalog.close()
    assert len(held) == 4
    first = held[0]
    assert first is not None and first.state == CONFIRMED and len(first.creation) == 16
    assert all(e is not None and same_creation(e, first) and e.state == CONFIRMED
               for e in held)


def test_a_keyring_seed_is_one_pending_creation_on_every_node(tmp_path: Path) -> None:
    """`hdsd cert issue` writes the same keys into every node's keyring: each node imports
    them as the same pending creation (whatever nonce wrapped its copy), so their votes agree
    and the first write confirms it."""
    from hdsd.catalog import Keyring, create_master_key, ensure_tenant, load_master_key
    from hdsd.catalog._keys import wrap_keys
    from hdsd.cluster import HybridClock
    from hdsd.node._tenancy import Tenancy

    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    dirs = [tmp_path / n for n in ("dc1-n1", "dc2-n1", "dc2-n2")]
    for d in dirs:
        d.mkdir()
    ensure_tenant([d / "keyring.hdsd" for d in dirs], master, "ward")
    # the third node's copy rewrapped with another nonce (as after a master-key rotation)
    third = Keyring(dirs[2] / "keyring.hdsd", master)
    keys = third.get("ward")
    assert keys is not None
    third.remove("ward")
    third.add_wrapped("ward", wrap_keys(master, keys))
    held = []
    for d in dirs:
        t = Tenancy(d, master, Keyring(d / "keyring.hdsd", master), HybridClock(),
                    operator_tenant="ops", evict=lambda _: None)
        try:
            held.append(t.catalog.tenant("ward"))
        finally:
            t.close()
    assert all(e is not None and e.state == PENDING and e.origin == "keyring" for e in held)
    first = held[0]
    assert first is not None
    assert all(e is not None and same_creation(e, first) for e in held)
    assert vote_create(held[2], first) is not None  # the differently wrapped copy agrees
