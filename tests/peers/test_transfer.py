"""fetch_chunk_records over FetchChunks downloads: records cut anywhere by the sender, prefixes
asked again, sizes that do not match refused, and the FetchChunk form kept for a peer that
refused downloads. The link is a fake; every frame still goes through the wire codec."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from hdsd import NotFound, ProtocolError
from hdsd.peers import DownloadLink, fetch_chunk_records
from hdsd.wire import (
    Data,
    FetchChunk,
    FetchChunks,
    GetStart,
    Message,
    Request,
)
from hdsd.wire._registry import decode_body, encode_body

R = TypeVar("R")


def _wire(msg: Message) -> Any:
    return decode_body(*encode_body(msg))[0]


class Source:
    """A peer holding *records*: answers FetchChunks with at most *per_download* records per
    download, each record's bytes cut at the fractions *cuts* gives (Data frames), and
    FetchChunk one by one."""

    def __init__(self, records: dict[tuple[str, bytes], bytes], *, per_download: int = 1000,
                 cuts: Callable[[bytes], list[int]] = lambda b: [], lie: int = 0,
                 downloads: bool = True) -> None:
        self.records = records
        self.per_download = per_download
        self.cuts = cuts
        self.lie = lie  # added to the first size announced
        self.can_download = downloads
        self.downloads_asked: list[int] = []
        self.fetch_chunk_asked = 0

    def reachable(self, node: str) -> bool:
        return True

    def downloads(self, node: str) -> bool:
        return self.can_download

    async def call(self, node: str, request: Request[R]) -> R:
        msg = _wire(request.with_rid(1))
        assert isinstance(msg, FetchChunk)
        self.fetch_chunk_asked += 1
        payload = self.records.get((msg.tenant, msg.chunk_id))
        if payload is None:
            raise NotFound("no such chunk")
        return request.decode_reply({"payload": payload})

    async def download(self, node: str, request: Request[R], on_start: Callable[[R], None],
                       on_data: Callable[[bytes], None]) -> None:
        msg = _wire(request.with_rid(1))
        assert isinstance(msg, FetchChunks)
        self.downloads_asked.append(len(msg.chunks))
        found = []
        for tenant, chunk_id in msg.chunks[:self.per_download]:
            payload = self.records.get((tenant, chunk_id))
            if payload is None:
                raise NotFound("no such chunk")
            found.append(payload)
        sizes = [len(p) for p in found]
        sizes[0] += self.lie
        start = _wire(GetStart(1, {"sizes": sizes}))
        on_start(request.decode_reply(start.info))
        for payload in found:
            at = 0
            for cut in [*self.cuts(payload), len(payload)]:
                if cut > at:
                    on_data(_wire(Data(1, payload[at:cut])).data)
                    at = cut
        await trio.lowlevel.checkpoint()


def _records(n: int, size: int = 300) -> dict[tuple[str, bytes], bytes]:
    out = {}
    for i in range(n):
        payload = bytes([i % 251]) * (size + i)
        out[("t" if i % 3 else "u", hashlib.sha256(payload).digest())] = payload
    return out


async def _fetch(source: Source, wanted: list[tuple[str, bytes]], in_flight: int = 4
                 ) -> list[tuple[str, bytes, bytes]]:
    got = await fetch_chunk_records(source, "peer", "layout", wanted, in_flight=in_flight)
    return [(r.tenant, r.chunk_id, r.payload) for r in got]


def test_the_fake_is_a_download_link() -> None:
    assert isinstance(Source({}), DownloadLink)


@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 8),
       st.lists(st.floats(0.0, 1.0), max_size=4))
def test_records_arrive_whole_in_order_however_the_frames_are_cut(
        n: int, per_download: int, in_flight: int, fractions: list[float]) -> None:
    records = _records(n)
    wanted = list(records)
    wanted += wanted[:2]  # duplicates are fetched once

    def cuts(payload: bytes) -> list[int]:
        return sorted(int(f * len(payload)) for f in fractions)

    source = Source(records, per_download=per_download, cuts=cuts)
    got = trio.run(_fetch, source, wanted, in_flight)
    assert got == [(t, c, records[(t, c)]) for t, c in records]
    assert source.fetch_chunk_asked == 0
    # Cut into at most in_flight runs of equal length; a run served by prefixes is asked
    # again for the rest: every chunk is sent once.
    assert max(source.downloads_asked) == -(-n // min(n, in_flight))
    assert sum(min(k, per_download) for k in source.downloads_asked) == n


def test_a_record_that_came_as_one_frame_is_kept_as_that_frames_bytes() -> None:
    records = _records(3)
    kept: list[bytes] = []

    class Spy(Source):
        async def download(self, node: str, request: Request[R],
                           on_start: Callable[[R], None],
                           on_data: Callable[[bytes], None]) -> None:
            def keep(data: bytes) -> None:
                kept.append(data)
                on_data(data)
            await super().download(node, request, on_start, keep)

    got = trio.run(fetch_chunk_records, Spy(records), "peer", "layout", list(records))
    assert [r.payload for r in got] == kept
    assert all(a is b for a, b in zip((r.payload for r in got), kept, strict=True))


@pytest.mark.parametrize("lie", [-1, 1])
def test_sizes_that_do_not_match_the_body_are_a_protocol_error(lie: int) -> None:
    records = _records(4)
    with pytest.raises(ProtocolError, match="sizes"):
        trio.run(_fetch, Source(records, lie=lie), list(records), 1)


def test_a_missing_chunk_fails_the_fetch() -> None:
    records = _records(3)
    wanted = [*records, ("t", b"\x00" * 32)]
    with pytest.raises(NotFound):
        trio.run(_fetch, Source(records), wanted, 1)


def test_a_peer_that_refused_downloads_is_asked_chunk_by_chunk() -> None:
    records = _records(5)
    source = Source(records, downloads=False)
    got = trio.run(_fetch, source, list(records), 2)
    assert got == [(t, c, records[(t, c)]) for t, c in records]
    assert source.downloads_asked == [] and source.fetch_chunk_asked == 5
