from __future__ import annotations

import itertools
import random
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hdsd import IntegrityError
from hdsd.pipeline import (
    THREAD_THRESHOLD,
    ChunkCodec,
    OrderedHasher,
    SealedChunk,
    open_in_thread,
    pipeline_limiter,
    seal_in_thread,
    seal_stream,
)
from hdsd.pipeline._stream import WORKER_THREADS

from ._data import codec_for, data_strategy, make_data

CODEC = codec_for()
BIG = THREAD_THRESHOLD  # the smallest chunk size that goes to worker threads


async def pieces_of(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    for a, b in itertools.pairwise(bounds):
        await trio.lowlevel.checkpoint()
        yield data[a:b]


async def collect(
    codec: ChunkCodec,
    source: AsyncIterator[bytes],
    *,
    chunk_size: int = 1 << 20,
    max_in_flight: int = 4,
) -> list[SealedChunk]:
    with trio.fail_after(30):
        stream = seal_stream(codec, source, chunk_size=chunk_size, max_in_flight=max_in_flight)
        return [sealed async for sealed in stream]


async def check_stream(data: bytes, cuts: list[int], chunk_size: int) -> None:
    hasher = CODEC.content_hasher()
    with trio.fail_after(30):
        chunks = [
            s
            async for s in seal_stream(
                CODEC, pieces_of(data, cuts), chunk_size=chunk_size, hasher=hasher
            )
        ]
    expected = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    assert [c.plain_size for c in chunks] == [len(e) for e in expected]
    assert [c.chunk_id for c in chunks] == [CODEC.chunk_id(e) for e in expected]
    opened = [await open_in_thread(CODEC, c.chunk_id, c.payload) for c in chunks]
    assert b"".join(opened) == data
    assert hasher.digest() == CODEC.chunk_id(data)


@given(data_strategy(5 * 4096 + 1), st.lists(st.integers(0, 6 * 4096), max_size=10))
async def test_random_splits_small_chunks(data: bytes, cuts: list[int]) -> None:
    await check_stream(data, cuts, 4096)


@given(st.integers(0, 3), st.sampled_from([-1, 0, 1]), st.lists(st.integers(0, 4 * BIG)))
async def test_chunk_boundaries_in_threads(whole: int, delta: int, cuts: list[int]) -> None:
    size = max(0, whole * BIG + delta)
    await check_stream(make_data("random", size, size), cuts, BIG)


@settings(max_examples=6)
@given(data_strategy(3 << 20), st.lists(st.integers(0, 3 << 20), max_size=6))
async def test_several_mib_default_chunk_size(data: bytes, cuts: list[int]) -> None:
    await check_stream(data, cuts, 1 << 20)


async def test_empty_stream_is_one_empty_chunk() -> None:
    chunks = await collect(CODEC, pieces_of(b"", []))
    assert [c.plain_size for c in chunks] == [0]
    assert CODEC.open(chunks[0].chunk_id, chunks[0].payload) == b""


class RecordingCodec(ChunkCodec):
    """Counts seals and where they ran; optionally makes the first two meet at a barrier."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        super().__init__(CODEC.keys)
        self.lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.max_running = 0
        self.threads: list[int] = []
        self.barrier = barrier

    def seal(self, plaintext: bytes | bytearray | memoryview) -> SealedChunk:
        with self.lock:
            self.started += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.append(threading.get_ident())
            first_two = self.started <= 2
        try:
            if self.barrier is not None and first_two:
                # Fails with BrokenBarrierError unless two seals really run at the same time.
                self.barrier.wait(timeout=20)
            return super().seal(plaintext)
        finally:
            with self.lock:
                self.running -= 1


async def test_big_chunks_run_two_at_a_time_in_worker_threads() -> None:
    codec = RecordingCodec(threading.Barrier(2))
    data = make_data("random", 8 * BIG, 1)
    chunks = await collect(codec, pieces_of(data, []), chunk_size=BIG, max_in_flight=4)
    assert len(chunks) == 8
    assert threading.get_ident() not in codec.threads
    assert codec.max_running == WORKER_THREADS


async def test_small_chunks_are_sealed_inline() -> None:
    codec = RecordingCodec()
    data = make_data("random", 3 * (BIG - 1), 2)
    chunks = await collect(codec, pieces_of(data, [100, 5000]), chunk_size=BIG - 1)
    assert len(chunks) == 3
    assert set(codec.threads) == {threading.get_ident()}


@pytest.mark.parametrize("max_in_flight", [1, 2, 4])
async def test_never_pulls_more_than_max_in_flight_ahead(max_in_flight: int) -> None:
    codec = RecordingCodec()
    total = 10
    pulled = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield make_data("random", BIG, i)

    consumed = 0
    with trio.fail_after(30):
        async with aclosing(seal_stream(codec, source(), chunk_size=BIG,
                                        max_in_flight=max_in_flight)) as stream:
            async for _ in stream:
                consumed += 1
                ahead = pulled - consumed
                # It reads ahead as far as allowed (the pipeline is really fed) ...
                assert ahead == min(max_in_flight - 1, total - consumed)
                # ... and while the consumer is blocked, workers finish but nothing more is
                # pulled and no new chunk is started beyond the window.
                before = pulled
                await trio.to_thread.run_sync(threading.Event().wait, 0.02)
                assert pulled == before
                assert codec.started <= consumed + max_in_flight - 1
    assert consumed == total


async def test_huge_source_piece_is_cut_lazily() -> None:
    codec = RecordingCodec()
    data = make_data("random", 12 * BIG, 3)
    with trio.fail_after(30):
        async with aclosing(seal_stream(codec, pieces_of(data, []), chunk_size=BIG,
                                        max_in_flight=3)) as stream:
            consumed = 0
            async for _ in stream:
                consumed += 1
                assert codec.started <= consumed + 2
    assert consumed == 12


async def test_waits_for_tokens_held_by_other_users() -> None:
    codec = RecordingCodec()
    limiter = pipeline_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        limiter.acquire_on_behalf_of_nowait(holder)
    result: list[SealedChunk] = []

    async def consume() -> None:
        result.extend(await collect(codec, pieces_of(bytes(3 * BIG), []), chunk_size=BIG))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert codec.started == 0
            for holder in holders:
                limiter.release_on_behalf_of(holder)
    assert len(result) == 3


async def test_early_close_gives_every_token_back() -> None:
    codec = RecordingCodec()
    limiter = pipeline_limiter()
    with trio.fail_after(30):
        async with aclosing(seal_stream(codec, pieces_of(bytes(10 * BIG), []),
                                        chunk_size=BIG, max_in_flight=6)) as stream:
            async for _ in stream:
                break
        while limiter.borrowed_tokens:
            await trio.sleep(0.001)
    assert codec.started <= 6


async def test_source_error_propagates() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield bytes(BIG)
        raise OSError("client went away")

    with pytest.raises(OSError, match="client went away"):
        await collect(CODEC, source(), chunk_size=BIG)


async def test_seal_error_surfaces_in_that_chunks_turn() -> None:
    class Failing(ChunkCodec):
        def seal(self, plaintext: bytes | bytearray | memoryview) -> SealedChunk:
            if plaintext[:1] == b"\xff":
                raise RuntimeError("boom")
            return super().seal(plaintext)

    data = bytes(2 * BIG) + b"\xff" * BIG + bytes(BIG)
    got: list[SealedChunk] = []
    with trio.fail_after(30), pytest.raises(RuntimeError, match="boom"):
        async for sealed in seal_stream(Failing(CODEC.keys), pieces_of(data, []), chunk_size=BIG):
            got.append(sealed)
    assert len(got) == 2


async def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        await collect(CODEC, pieces_of(b"x", []), max_in_flight=0)
    with pytest.raises(ValueError):
        await collect(CODEC, pieces_of(b"x", []), chunk_size=0)


async def test_seal_and_open_in_thread_hop_only_for_big_chunks() -> None:
    codec = RecordingCodec()
    main = threading.get_ident()
    small, big = make_data("image", BIG - 1, 1), make_data("random", BIG, 2)
    with trio.fail_after(30):
        s_small = await seal_in_thread(codec, small)
        s_big = await seal_in_thread(codec, big)
        assert await open_in_thread(codec, s_small.chunk_id, s_small.payload) == small
        assert await open_in_thread(codec, s_big.chunk_id, s_big.payload) == big
        tampered = bytearray(s_big.payload)
        tampered[-1] ^= 1
        with pytest.raises(IntegrityError):
            await open_in_thread(codec, s_big.chunk_id, bytes(tampered))
    assert codec.threads[0] == main and codec.threads[1] != main


async def test_cancelled_consumer_leaves_no_token_or_task_behind() -> None:
    codec = RecordingCodec()
    limiter = pipeline_limiter()
    got = 0
    with trio.fail_after(30):
        with trio.CancelScope() as scope:
            async with aclosing(seal_stream(codec, pieces_of(bytes(10 * BIG), []),
                                            chunk_size=BIG)) as stream:
                async for _ in stream:
                    got += 1
                    if got == 2:
                        scope.cancel()
                    await trio.sleep(0)  # a checkpoint: the cancellation lands here
        assert scope.cancelled_caught and got == 2
        while limiter.borrowed_tokens:
            await trio.sleep(0.001)
    # A fresh stream in the same run still gets the workers.
    chunks = await collect(codec, pieces_of(bytes(3 * BIG), []), chunk_size=BIG)
    assert len(chunks) == 3


@settings(max_examples=30)
@given(sizes=st.lists(st.integers(0, 3 * BIG), min_size=1, max_size=8),
       order=st.randoms(use_true_random=False))
def test_ordered_hasher_is_the_hash_of_the_chunks_in_body_order(
        sizes: list[int], order: random.Random) -> None:
    chunks = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    hasher = OrderedHasher(CODEC.content_hasher())
    indexes = list(range(len(chunks)))
    order.shuffle(indexes)
    threads = [threading.Thread(target=hasher.add, args=(i, chunks[i])) for i in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hasher.digest(len(chunks)) == CODEC.chunk_id(b"".join(chunks))


def test_ordered_hasher_refuses_a_digest_with_a_chunk_missing() -> None:
    hasher = OrderedHasher(CODEC.content_hasher())
    hasher.add(1, b"second")  # parked: chunk 0 never came (its put failed)
    with pytest.raises(RuntimeError):
        hasher.digest(2)


async def test_seal_in_thread_feeds_the_ordered_hasher() -> None:
    big, small = make_data("random", BIG + 5, seed=3), b"tail"
    hasher = OrderedHasher(CODEC.content_hasher())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seal_in_thread, CODEC, small, hasher, 1)  # inline, parked
        nursery.start_soon(seal_in_thread, CODEC, big, hasher, 0)  # in a worker thread
    assert hasher.digest(2) == CODEC.chunk_id(big + small)
