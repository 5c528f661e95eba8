from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd.pipeline import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, Chunker


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_chunker(chunk_size: int, pieces: list[bytes]) -> tuple[list[bytes], bytes | None]:
    chunker = Chunker(chunk_size)
    out: list[bytes] = []
    for piece in pieces:
        out.extend(chunker.feed(piece))
    return out, chunker.finish()


def check(data: bytes, chunk_size: int, pieces: list[bytes]) -> None:
    assert b"".join(pieces) == data
    chunks, last = run_chunker(chunk_size, pieces)
    assert all(len(c) == chunk_size for c in chunks)
    if not data:
        assert chunks == [] and last == b""
    elif len(data) % chunk_size == 0:
        assert last is None
        assert len(chunks) == len(data) // chunk_size
    else:
        assert last is not None and len(last) == len(data) % chunk_size
    assert b"".join(chunks) + (last or b"") == data


@given(st.binary(max_size=600), st.integers(1, 64), st.lists(st.integers(0, 600), max_size=12))
def test_any_split_reassembles_into_fixed_chunks(
    data: bytes, chunk_size: int, cuts: list[int]
) -> None:
    check(data, chunk_size, split(data, cuts))


@given(
    st.integers(0, 4),
    st.sampled_from([-1, 0, 1]),
    st.lists(st.integers(0, 5 * 4096), max_size=6),
)
def test_boundaries_plus_minus_one(whole: int, delta: int, cuts: list[int]) -> None:
    size = max(0, whole * 4096 + delta)
    data = bytes(i % 251 for i in range(size))
    check(data, 4096, split(data, cuts))


def test_pieces_may_be_bytearray_or_memoryview() -> None:
    data = bytes(range(256)) * 40
    pieces: list[bytes] = [bytearray(data[:1000]), memoryview(data)[1000:5000], data[5000:]]  # type: ignore[list-item]
    chunks, last = run_chunker(4096, pieces)
    assert b"".join(chunks) + (last or b"") == data
    assert all(isinstance(c, bytes) for c in chunks)


def test_whole_chunk_pieces_pass_through_uncopied() -> None:
    piece = bytes(range(256)) * 16
    chunker = Chunker(4096)
    assert chunker.feed(piece)[0] is piece


def test_single_use_and_validation() -> None:
    chunker = Chunker(10)
    chunker.feed(b"abc")
    assert chunker.finish() == b"abc"
    with pytest.raises(RuntimeError):
        chunker.feed(b"x")
    with pytest.raises(RuntimeError):
        chunker.finish()
    for bad in (0, -1, MAX_CHUNK_SIZE + 1):
        with pytest.raises(ValueError):
            Chunker(bad)
    assert Chunker().chunk_size == DEFAULT_CHUNK_SIZE == 1 << 20
