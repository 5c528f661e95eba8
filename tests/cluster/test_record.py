"""Layout versions: the two-layout write rule, the phases, the records' wire form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd.cluster import (
    Layout,
    LayoutRecord,
    NodeInfo,
    check_removal,
    placement_key,
    with_node,
    without_node,
)
from hdsd.replication import policy_met
from hdsd.replication._policy import policy_still_possible

A1, A2, B1 = NodeInfo("a1", "a", "h", 1), NodeInfo("a2", "a", "h", 2), NodeInfo("b1", "b", "h", 3)
OLD = Layout(sites=("a", "b"), nodes=(A1, B1))
NEW = with_node(OLD, A2)


def _migrating() -> LayoutRecord:
    return LayoutRecord("c", 1, OLD).changed_to(NEW, "add a2")


def _moved_key() -> bytes:
    """A key a2 wins: its replicas differ between the layouts."""
    for i in range(1000):
        pk = placement_key("t", "b", f"k{i}")
        if NEW.replicas(pk)["a"][0].name == "a2":
            return pk
    raise AssertionError("a2 wins no key")


def test_while_migrating_a_key_lives_on_the_union_and_the_policy_holds_in_each_layout() -> None:
    placed = _migrating().placement(_moved_key())
    assert dict(placed) == {"a": ["a2", "a1"], "b": ["b1"]}
    # each-site under the new layout alone (a2, b1) is not enough: the old one's reader
    # looks on a1; nor is the old one alone.
    assert not policy_met("each-site", placed, {"a2", "b1"}, "a")
    assert not policy_met("each-site", placed, {"a1", "b1"}, "a")
    assert policy_met("each-site", placed, {"a1", "a2", "b1"}, "a")
    # a2 refusing makes the policy impossible: the write is refused, not acknowledged alone
    assert not policy_still_possible("each-site", placed, {"a2"}, "a")
    assert policy_met("local", placed, {"a1", "a2"}, "a")
    assert not policy_met("local", placed, {"a2"}, "a")


def test_a_stable_record_places_like_its_layout() -> None:
    pk = _moved_key()
    rec = LayoutRecord("c", 3, NEW)
    assert dict(rec.placement(pk)) == {"a": ["a2"], "b": ["b1"]}
    assert rec.placement(pk).parts == ()


def test_phases_are_derived_the_same_everywhere() -> None:
    m = _migrating()
    assert (m.version, m.phase, m.previous) == (2, "migrating", OLD)
    s = m.next_phase()
    assert s is not None and (s.version, s.phase, s.previous) == (3, "syncing", OLD)
    done = s.next_phase()
    assert done is not None and (done.version, done.phase, done.previous) == (4, "stable", None)
    assert done.next_phase() is None
    assert m.next_phase() == _migrating().next_phase()  # two nodes publish the same record
    assert s.accepts(OLD.layout_id) and s.accepts(NEW.layout_id)
    assert not done.accepts(OLD.layout_id)
    with pytest.raises(ValueError, match="still migrating"):
        m.changed_to(OLD, "undo")


def test_an_address_change_moves_nothing() -> None:
    rec = LayoutRecord("c", 5, OLD)
    moved = Layout(sites=OLD.sites, nodes=(NodeInfo("a1", "a", "10.0.0.9", 7400), B1))
    nxt = rec.changed_to(moved, "set a1 address")
    assert (nxt.version, nxt.phase, nxt.previous) == (6, "stable", None)
    assert nxt.node("a1").host == "10.0.0.9"


def test_a_gone_node_is_neither_written_nor_waited_for() -> None:
    two = Layout(sites=("a", "b"), nodes=(A1, A2, B1))
    a3 = NodeInfo("a3", "a", "h", 4)
    replaced = Layout(sites=("a", "b"), nodes=(A1, a3, B1))
    rec = LayoutRecord("c", 1, two).changed_to(replaced, "replace a2 by a3", gone=("a2",))
    for i in range(50):
        placed = rec.placement(placement_key("t", "b", f"k{i}"))
        assert "a2" not in placed["a"]
        assert all("a2" not in names for part in placed.parts for names in part.values())


def test_removal_that_would_under_replicate_is_refused() -> None:
    with pytest.raises(ValueError, match="under-replicated"):
        check_removal(OLD, "a1")
    assert [n.name for n in without_node(NEW, "a1").nodes] == ["b1", "a2"]


@given(st.integers(0, 10**6), st.sampled_from(["migrating", "syncing", "stable"]))
def test_records_round_trip_their_wire_form(version: int, phase: str) -> None:
    rec = _migrating()
    while rec.phase != phase:
        nxt = rec.next_phase()
        assert nxt is not None
        rec = nxt
    from dataclasses import replace
    rec = replace(rec, version=version)
    back = LayoutRecord.from_wire(rec.to_wire())
    assert back == rec and back.digest == rec.digest


def test_a_malformed_record_is_refused() -> None:
    doc = _migrating().to_wire()
    doc["layout"]["nodes"][0]["port"] = 0
    with pytest.raises(ValueError):
        LayoutRecord.from_wire(doc)
    with pytest.raises(ValueError):
        LayoutRecord.from_wire({**_migrating().to_wire(), "phase": "stable"})
