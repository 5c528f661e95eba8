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
