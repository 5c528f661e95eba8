"""The synchronous client: the async client driven by a trio loop in a background thread.

For ordinary scripts: ``with hdsd.Client() as c: c.put("bucket", "key", b"...")``. Every call
blocks until done and raises the same typed errors as :class:`AsyncClient`.

A call crosses threads twice, both ways written to cost little next to the request itself
(``bench/client_overhead.py``). The caller takes an idle worker task, hands it a :class:`_Call`
and rings the worker's doorbell (an eventfd; a socket pair off Linux), which wakes it in one
scheduler pass; with no idle worker it asks the loop for a new one
(``TrioToken.run_sync_soon``), so there are as many workers as calls ever ran at once (up to
twice as many: a thread's next call may come in the instant between its last one's release
and its worker going idle). The caller then blocks on the call's own lock, which the worker
releases with the result. ``trio.from_thread.run``, used before, copied the caller's context,
built a queue and spawned a system task per call, from a callback of trio's own wake-up task:
84 more Python calls per put (both threads) and twice the CPU per hand-off
(``docs/performance.md``, ninth round).
"""

from __future__ import annotations

import builtins
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import trio

from .._errors import HdsdError, ProtocolError
from ..wire import MaintenanceStarted
from ._async import AsyncClient, Progress, PutSource, put_source
from ._profile import Profile
from ._results import ListPage, ObjectInfo

__all__ = ["Client"]

T = TypeVar("T")


class _Call:
    """One call on its way to the loop thread and back. ``done`` is held from creation until
    the loop has set ``value`` or ``error``: the caller blocks acquiring it. A fresh lock per
    call (allocating one costs about as much as a dict): a caller interrupted while waiting
    (Ctrl-C) leaves its call running, and that call's late release must not wake a later call
    of the same thread."""

    __slots__ = ("args", "done", "error", "fn", "kwargs", "value")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.release()


# Linux has eventfds; elsewhere (a host program on macOS or Windows) a socket pair does the
# same, one byte per call handed over.
_EVENTFD = hasattr(os, "eventfd")


class _Worker:
    """An idle worker task's doorbell: a caller sets ``call`` and rings (``ring()``: writes the
    eventfd ``fd``), which wakes the worker in one scheduler pass. ``run_sync_soon`` costs two
    (trio's own system task runs the callback, which then wakes the worker) and a socket each
    way. ``ring`` and ``clear`` are partials of the system calls: no Python frame per call."""

    __slots__ = ("_pair", "call", "clear", "fd", "ring")

    def __init__(self) -> None:
        self.call: _Call | None = None
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if _EVENTFD:
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.ring: Callable[[], object] = partial(os.eventfd_write, self.fd, 1)
            self.clear: Callable[[], object] = partial(os.eventfd_read, self.fd)
        else:
            here, there = self._pair = socket.socketpair()
            here.setblocking(False)
            there.setblocking(False)
            self.fd = here.fileno()
            self.ring = partial(there.send, b"\0")
            self.clear = partial(here.recv, 64)

    def close(self) -> None:
        if self._pair is None:
            os.close(self.fd)
        else:
            for sock in self._pair:
                sock.close()


def _closed_error() -> HdsdError:
    return HdsdError("the client is closed")


class Client:
    def __init__(self, profile: Profile | str | os.PathLike[str] | None = None, *,
                 site: str | None = None, timeout: float = 60.0, retries: int = 3) -> None:
        self._async = AsyncClient(profile, site=site, timeout=timeout, retries=retries)
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_ident = -1
        self._stop: trio.Event | None = None
        self._workers: trio.Nursery | None = None
        # Shared with the callers' threads, changed under _lock: the idle workers (last in
        # first out: the most recently run is the likeliest to be warm), whether calls are
        # taken.
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._open = False
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hdsd-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        async def main() -> None:
            self._stop = trio.Event()
            async with self._async, trio.open_nursery() as workers:
                self._workers = workers
                self._open = True
                self._loop_ident = threading.get_ident()
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                # Calls still running are cancelled (their callers get "closed during the
                # call"), before the async client closes the connections under them.
                with self._lock:
                    self._open = False
                workers.cancel_scope.cancel()
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller of __init__ or close
            self._failure = exc
        finally:
            # Before this thread ends: a thread started later may be given its identity.
            self._loop_ident = -1
            self._ready.set()

    # -- the loop thread's side --------------------------------------------------------------
    def _spawn(self, call: _Call) -> None:
        """Run by the loop (``run_sync_soon``): a worker for *call*, every other one being
        busy. Never raises: an exception here would end the whole trio run."""
        worker: _Worker | None = None
        try:
            if not self._open:
                call.fail(_closed_error())
                return
            assert self._workers is not None
            worker = _Worker()
            self._workers.start_soon(self._work, worker, call)
        except BaseException as exc:  # no descriptor left (EMFILE), or the nursery closed
            if worker is not None:
                worker.close()
            call.fail(exc)

    async def _work(self, worker: _Worker, call: _Call | None) -> None:
        """A worker: runs calls one at a time; idle, it waits on its own doorbell."""
        workers = self._workers
        assert workers is not None
        try:
            while call is not None:
                try:
                    call.value = await call.fn(*call.args, **call.kwargs)
                except BaseException as exc:
                    if workers.cancel_scope.cancel_called:
                        # Closing: whatever the call raised (trio.Cancelled, maybe in a
                        # group), its caller is told the one thing that matters.
                        call.fail(HdsdError(
                            "the client was closed during the call; its outcome is unknown"))
                        return
                    call.error = exc
                call.done.release()
                del call  # not kept while idle: its value may be a large body
                call = await self._next_call(worker)
        finally:
            trio.lowlevel.notify_closing(worker.fd)
            worker.close()

    async def _next_call(self, worker: _Worker) -> _Call | None:
        with self._lock:
            self._idle.append(worker)
        try:
            await trio.lowlevel.wait_readable(worker.fd)
        except BaseException:
            # Cancelled (closing). A caller may have handed this worker a call meanwhile: it
            # is failed here, its caller is not left waiting.
            with self._lock:
                if worker in self._idle:
                    self._idle.remove(worker)
                call, worker.call = worker.call, None
            if call is not None:
                call.fail(_closed_error())
            raise
        worker.clear()  # one ring per call handed over, set before the ring
        call, worker.call = worker.call, None
        return call

    # -- the caller's side -------------------------------------------------------------------
    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        token = self._token
        if token is None:
            raise _closed_error()
        if threading.get_ident() == self._loop_ident:
            # A progress callback runs in the loop thread: waiting there for the loop is a
            # deadlock (trio.from_thread said the same with this type).
            raise RuntimeError("a blocking call from the client's own thread (a progress "
                               "callback?) would wait for itself")
        call = _Call(fn, args, kwargs)
        with self._lock:
            if not self._open:
                raise _closed_error()
            if self._idle:
                # Rung under the lock: the worker closes its doorbell only once it is out of
                # _idle, under the same lock, so the descriptor is never a reused one.
                worker = self._idle.pop()
                worker.call = call
                worker.ring()
                call_spawns = False
            else:
                call_spawns = True
        if call_spawns:
            try:
                token.run_sync_soon(self._spawn, call)
            except trio.RunFinishedError:
                raise _closed_error() from None
        call.done.acquire()
        error = call.error
        if error is not None:
            call.error = None
            try:
                raise error  # in the caller's thread, with its type and the loop's traceback
            finally:
                del error
        value: T = call.value
        return value

    def close(self) -> None:
        """Stop the loop thread: calls still in flight fail ("closed during the call"), later
        ones fail at once. Idempotent; safe from any thread but the loop's own."""
        token = self._token
        if token is not None:
            if threading.get_ident() == self._loop_ident:
                raise RuntimeError("close() from the client's own thread (a progress "
                                   "callback?) would wait for itself")
            assert self._stop is not None
            try:
                token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass  # the loop has ended already (closed by another thread, or it failed)
            self._thread.join()
        self._token = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def put(self, bucket: str, key: str, data: PutSource, *,
            metadata: dict[str, str] | None = None, request_id: bytes | None = None,
            size: int | None = None, progress: Progress | None = None,
            retry: bool = False) -> ObjectInfo:
        """See :meth:`AsyncClient.put`."""
        # Checked here, in the caller's thread, so a deprecation warning names the caller.
        data = put_source(data)
        return self._call(self._async.put, bucket, key, data, metadata=metadata,
                          request_id=request_id, size=size, progress=progress, retry=retry)

    def get(self, bucket: str, key: str, *, version: str | None = None,
            offset: int | None = None, length: int | None = None) -> bytes:
        """See :meth:`AsyncClient.get`: *length* bytes from *offset* (both optional)."""
        return self._call(self._async.get, bucket, key, version=version, offset=offset,
                          length=length)

    def get_to_file(self, bucket: str, key: str, path: str | os.PathLike[str], *,
                    version: str | None = None, offset: int | None = None,
                    length: int | None = None, progress: Progress | None = None) -> ObjectInfo:
        return self._call(self._async.get_to_file, bucket, key, path, version=version,
                          offset=offset, length=length, progress=progress)

    def stat(self, bucket: str, key: str, *, version: str | None = None) -> ObjectInfo:
        return self._call(self._async.stat, bucket, key, version=version)

    def list(self, bucket: str, prefix: str = "", *, after: str = "", limit: int = 1000,
             versions: bool = False) -> ListPage:
        return self._call(self._async.list, bucket, prefix, after=after, limit=limit,
                          versions=versions)

    def list_all(self, bucket: str, prefix: str = "", *, versions: bool = False
                 ) -> Iterator[ObjectInfo]:
        """Every entry of the listing, page after page (each page is bounded by bytes, so
        its length says nothing about the end: only ``next`` does)."""
        after = ""
        while True:
            page = self.list(bucket, prefix, after=after, versions=versions)
            yield from page.entries
            if page.next is None:
                return
            if page.next == after:  # a node that cannot advance would loop forever
                raise ProtocolError(f"listing of {bucket}: next {page.next!r} does not advance")
            after = page.next

    def list_buckets(self) -> builtins.list[str]:
        return self._call(self._async.list_buckets)

    def delete(self, bucket: str, key: str, *, request_id: bytes | None = None,
               retry: bool = False, version: str | None = None) -> ObjectInfo:
        """See :meth:`AsyncClient.delete`."""
        return self._call(self._async.delete, bucket, key, request_id=request_id, retry=retry,
                          version=version)

    def versions(self, bucket: str, key: str) -> builtins.list[ObjectInfo]:
        return self._call(self._async.versions, bucket, key)

    def status(self) -> dict[str, Any]:
        return self._call(self._async.status)

    def start_maintenance(self, task: str) -> MaintenanceStarted:
        return self._call(self._async.start_maintenance, task)
