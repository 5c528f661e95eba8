from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import IntegrityError, Version
from hdsd._packing import packb, unpackb
from hdsd.store import parse_version_id

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
versions = st.builds(
    Version,
    tenant=names, bucket=names, key=names, hlc=st.integers(0, (1 << 64) - 1), node=names,
    size=st.integers(0, 1 << 40), content_hash=st.binary(min_size=32, max_size=32),
    chunks=st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple),
    metadata=st.dictionaries(names, names, max_size=3), request_id=st.binary(max_size=16),
)


@given(versions)
def test_wire_round_trip(v: Version) -> None:
    assert Version.from_wire(unpackb(packb(v.to_wire()))) == v
    assert parse_version_id(v.version_id) == (v.hlc, v.node)


@pytest.mark.parametrize("broken", [{}, {"t": 1}, "x", None])
def test_malformed_record_is_an_integrity_error(broken: object) -> None:
    with pytest.raises(IntegrityError):
        Version.from_wire(broken)


def test_invariants() -> None:
    with pytest.raises(ValueError):
        Version("t", "b", "k", hlc=1, node="n", size=0, content_hash=b"", tombstone=True,
                chunks=(b"x" * 32,))
    with pytest.raises(ValueError):
        Version("t", "b", "k", hlc=1, node="n", size=1, content_hash=b"", inline=b"x")


wrong_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.text(max_size=3),
                         st.binary(max_size=3), st.lists(st.integers(0, 1), max_size=2),
                         st.dictionaries(st.text(max_size=2), st.integers(0, 1), max_size=1))


def _outcome(decode: object, d: object) -> object:
    try:
        return decode(d)  # type: ignore[operator]
    except IntegrityError:
        return IntegrityError


@given(versions, st.sampled_from("tbkhnscmixdrzpq"), wrong_values)
def test_fast_decode_agrees_with_the_checked_one(v: Version, field: str, value: object) -> None:
    # from_wire checks the usual record inline: any field of any type must give what the
    # general, checked decoding gives (the same Version, or IntegrityError).
    d = unpackb(packb(v.to_wire()))
    d[field] = value
    assert _outcome(Version.from_wire, d) == _outcome(Version._from_wire_checked, d)


def test_fast_decode_keeps_int_and_bool_apart() -> None:
    d = Version("t", "b", "k", hlc=1, node="n", size=0, content_hash=b"").to_wire()
    with pytest.raises(IntegrityError):
        Version.from_wire({**d, "s": False})
    with pytest.raises(IntegrityError):
        Version.from_wire({**d, "x": 0})
    with pytest.raises(IntegrityError):
        Version.from_wire({**d, "m": [b"x" * 32, "y"]})
    with pytest.raises(IntegrityError):
        Version.from_wire({**d, "d": {"a": 1}})
    with pytest.raises(IntegrityError):
        Version.from_wire({**d, "h": -1})
