"""Running the chunk codec off the trio thread, and sealing whole streams, pipelined.

Hashing, compressing and encrypting release the GIL, so worker threads let both cores work.
A thread hop costs 0.1 to 0.3 ms of CPU (measured on the 2-core VM: sealing 64 KiB takes
0.085 ms inline and 0.24 ms through a worker; 256 KiB 0.33 vs 0.45 ms), so chunks under
:data:`THREAD_THRESHOLD` are handled inline: up to ~0.3 ms on the event loop, cheaper in CPU
than the hop. A full chunk (1 MiB by default, 1.3 ms) goes to a worker.
All worker threads of this module share one :class:`trio.CapacityLimiter` per trio run
(:func:`pipeline_limiter`, 2 tokens: one per core), so many concurrent puts cannot oversubscribe
the machine.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from functools import partial

import trio

from ._chunker import DEFAULT_CHUNK_SIZE, Chunker
from ._codec import ChunkCodec, ContentHasher, SealedChunk

__all__ = [
    "THREAD_THRESHOLD",
    "WORKER_THREADS",
    "OrderedHasher",
    "open_in_thread",
    "pipeline_limiter",
    "run_in_worker",
    "seal_in_thread",
    "seal_stream",
]

THREAD_THRESHOLD = 256 * 1024
WORKER_THREADS = 2

_limiter_var: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "hdsd_pipeline_limiter"
)


def pipeline_limiter() -> trio.CapacityLimiter:
    """The limiter (``WORKER_THREADS`` tokens) shared by all pipeline threads of this run."""
    try:
        return _limiter_var.get()
    except LookupError:
        limiter = trio.CapacityLimiter(WORKER_THREADS)
        _limiter_var.set(limiter)
        return limiter


def run_in_worker(work: Callable[[], None], complete: Callable[[], None],
                  token: trio.lowlevel.TrioToken, name: str) -> None:
    """Run *work* in one of trio's cached threads, then *complete* on the event loop of
    *token* — no task waits for it (a task per chunk, and its scheduling, is what this
    spares). *work* keeps its own outcome (it must not raise); if the run is over by then,
    nobody waits for it and *complete* is not called."""
    def deliver(_: object) -> None:
        try:
            token.run_sync_soon(complete)
        except trio.RunFinishedError:
            pass

    trio.lowlevel.start_thread_soon(work, deliver, name=name)


class OrderedHasher:
    """A blob's content hash fed chunk by chunk, in body order, from the worker threads that
    seal the chunks (in any order): hashing a MiB costs ~0.5 ms, which on the event loop's
    thread would be paid by every other request of the node, and in a worker runs beside it.

    ``add(i, chunk)`` parks chunk *i* until chunks ``0..i-1`` are hashed; the thread that adds
    the next one in order hashes it and every parked successor, outside the lock. No thread
    ever waits for another, so a chunk that is never added (its put failed) blocks nothing.
    Parked chunks are the put's chunks in flight: bounded by its window.
    """

    __slots__ = ("_busy", "_hasher", "_lock", "_next", "_parked")

    def __init__(self, hasher: ContentHasher) -> None:
        self._hasher = hasher
        self._lock = threading.Lock()
        self._next = 0
        self._parked: dict[int, bytes | bytearray | memoryview] = {}
        self._busy = False

    def add(self, index: int, chunk: bytes | bytearray | memoryview) -> None:
        """Chunk number *index* (from 0) of the body; each index exactly once."""
        with self._lock:
            self._parked[index] = chunk
            if self._busy or index != self._next:
                return
            self._busy = True
        while True:
            with self._lock:
                data = self._parked.pop(self._next, None)
                if data is None:
                    self._busy = False
                    return
            try:
                self._hasher.update(data)
            except BaseException:
                with self._lock:
                    self._busy = False
                raise
            with self._lock:
                self._next += 1

    def digest(self, chunks: int) -> bytes:
        """The content hash once chunks ``0..chunks-1`` were all added (and every ``add``
        returned: the seals that added them are awaited)."""
        with self._lock:
            if self._next != chunks or self._busy:
                raise RuntimeError(f"content hash of {self._next} chunks asked for {chunks}")
        return self._hasher.digest()


def _sealer(codec: ChunkCodec, plaintext: bytes | bytearray | memoryview,
            hasher: OrderedHasher | None, index: int) -> SealedChunk:
    sealed = codec.seal(plaintext)
    if hasher is not None:
        hasher.add(index, plaintext)
    return sealed


async def seal_in_thread(
    codec: ChunkCodec, plaintext: bytes | bytearray | memoryview,
    hasher: OrderedHasher | None = None, index: int = 0,
) -> SealedChunk:
    """``codec.seal(plaintext)`` in a worker thread if the chunk is >= THREAD_THRESHOLD,
    inline otherwise (inline still honours cancellation). With *hasher*, the chunk is also
    added to it as chunk number *index* of its blob, in the same thread."""
    if len(plaintext) < THREAD_THRESHOLD:
        await trio.lowlevel.checkpoint_if_cancelled()
        return _sealer(codec, plaintext, hasher, index)
    return await trio.to_thread.run_sync(_sealer, codec, plaintext, hasher, index,
                                         limiter=pipeline_limiter())


async def open_in_thread(
    codec: ChunkCodec, chunk_id: bytes, payload: bytes | bytearray | memoryview
) -> bytes:
    """``codec.open(chunk_id, payload)`` in a worker thread if the payload is >=
    THREAD_THRESHOLD, inline otherwise. Raises :class:`~hdsd.IntegrityError` like ``open``."""
    if len(payload) < THREAD_THRESHOLD:
        await trio.lowlevel.checkpoint_if_cancelled()
        return codec.open(chunk_id, payload)
    return await trio.to_thread.run_sync(
        codec.open, chunk_id, payload, limiter=pipeline_limiter()
    )


class _Job:
    __slots__ = ("done", "error", "plaintext", "sealed", "started")

    def __init__(self, plaintext: bytes) -> None:
        self.plaintext = plaintext
        self.sealed: SealedChunk | None = None
        self.error: BaseException | None = None
        self.started = False
        self.done = trio.Event()


class _Dispatcher:
    """Starts one stream's big jobs in worker threads, oldest first, each holding a token of
    the shared limiter while it runs.

    An async generator must not hold a nursery open across ``yield`` (the consumer's code would
    run inside it), so threads are started with ``trio.lowlevel.start_thread_soon`` and report
    back through ``run_sync_soon``; a completion immediately starts the next queued job, so the
    workers keep going while the consumer is busy with a chunk.
    """

    def __init__(self, codec: ChunkCodec) -> None:
        self._codec = codec
        self._limiter = pipeline_limiter()
        self._token = trio.lowlevel.current_trio_token()
        self._queue: deque[_Job] = deque()
        self._closed = False

    def submit(self, plaintext: bytes) -> _Job:
        job = _Job(plaintext)
        if len(plaintext) < THREAD_THRESHOLD:
            job.started = True
            try:
                job.sealed = self._codec.seal(plaintext)
            except Exception as exc:
                job.error = exc
            job.done.set()
        else:
            self._queue.append(job)
            self._start_ready()
        return job

    async def wait(self, job: _Job) -> SealedChunk:
        """Wait for *job*, the oldest unfinished one; start it first if no token was free."""
        if not job.started:
            # Out of the queue first: once the limiter hands this job a token, a completion
            # callback running before we resume must not try to start it a second time.
            self._queue.remove(job)
            await self._limiter.acquire_on_behalf_of(job)
            self._start(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.sealed is not None
        return job.sealed

    def close(self) -> None:
        """Forget queued jobs; running ones finish in their thread and give their token back."""
        self._closed = True
        self._queue.clear()

    def _start_ready(self) -> None:
        while self._queue and not self._closed:
            job = self._queue[0]
            try:
                self._limiter.acquire_on_behalf_of_nowait(job)
            except trio.WouldBlock:
                return
            self._queue.popleft()
            self._start(job)

    def _start(self, job: _Job) -> None:
        job.started = True
        codec, token = self._codec, self._token

        def work() -> None:
            try:
                job.sealed = codec.seal(job.plaintext)
            except BaseException as exc:
                job.error = exc

        run_in_worker(work, partial(self._complete, job), token, "hdsd pipeline seal")

    def _complete(self, job: _Job) -> None:
        self._limiter.release_on_behalf_of(job)
        job.done.set()
        self._start_ready()


async def seal_stream(
    codec: ChunkCodec,
    source: AsyncIterable[bytes],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_in_flight: int = 4,
    hasher: ContentHasher | None = None,
) -> AsyncGenerator[SealedChunk, None]:
    """Cut *source* into ``chunk_size`` chunks and yield them sealed, in input order.

    An async generator: ``async for sealed in seal_stream(codec, source): ...``; wrap it in
    ``contextlib.aclosing`` if you may stop early, so queued work is dropped at once. Chunks of
    at least THREAD_THRESHOLD bytes are sealed in worker threads, several at a time, while the
    consumer handles earlier ones.

    Bounded memory: at most *max_in_flight* chunks are pulled from *source* and not yet
    handed to the consumer (counting the one being yielded); nothing is pulled from *source*
    while the consumer is busy. An empty source yields one empty chunk. If *hasher* is given it
    is updated with every chunk's plaintext, in order, before that chunk is yielded — so it
    holds the content hash of the whole blob when the iteration ends.

    Errors from *source* or from sealing propagate (the latter in the chunk's turn). The
    iterator taken from *source* belongs to the stream: it is closed (``aclose``) when the
    stream ends, fails or is closed early.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    chunker = Chunker(chunk_size)
    dispatcher = _Dispatcher(codec)
    window: deque[_Job] = deque()
    pieces = aiter(source)
    rest = memoryview(b"")  # the part of the current source piece not yet fed to the chunker
    exhausted = False
    try:
        while True:
            while len(window) < max_in_flight:
                chunk = None
                if rest:
                    # Feed at most one chunk's worth at a time, so a huge source piece is
                    # copied into chunks only as the window makes room for them.
                    step = rest[:chunk_size]
                    rest = rest[chunk_size:]
                    cut = chunker.feed(step)
                    chunk = cut[0] if cut else None
                elif not exhausted:
                    try:
                        piece = await anext(pieces)
                    except StopAsyncIteration:
                        exhausted = True
                        chunk = chunker.finish()
                    else:
                        if len(piece) <= chunk_size:
                            # Hands a whole-chunk bytes piece through without a copy.
                            cut = chunker.feed(piece)
                            chunk = cut[0] if cut else None
                        else:
                            rest = memoryview(piece).cast("B")
                else:
                    break
                if chunk is not None:
                    window.append(dispatcher.submit(chunk))
            if not window:
                return
            job = window[0]
            sealed = await dispatcher.wait(job)
            window.popleft()
            if hasher is not None:
                hasher.update(job.plaintext)
            job.plaintext = b""
            yield sealed
    finally:
        dispatcher.close()
        # The iterator is ours: close it now rather than leave it to the garbage collector.
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
