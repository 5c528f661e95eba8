"""Cheap cross-thread wake-ups between callers and the log-writer thread.

Measured on the target machine kind (2 cores, one 4 KiB commit at a time), against
``threading.Condition`` to wake the writer and ``TrioToken.run_sync_soon`` + ``reschedule``
to wake the trio task: an eventfd each way saves about 25 µs of the ~50 µs the two hops cost.
``run_sync_soon`` wakes trio's own system task, which runs our callback, which reschedules the
waiter: two scheduler passes where ``wait_readable`` on the waiter's own eventfd needs one.

Each trio waiter borrows an eventfd from a :class:`WakerPool` for the duration of one commit.
Who closes it is decided under one lock, so no thread ever writes to a closed (and possibly
reused) descriptor: a waiter that is cancelled before it was signalled hands its eventfd to
the writer, which closes it instead of signalling.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

import trio

from .._errors import StoreClosedError

__all__ = ["Bell", "Doorbell", "Waker", "WakerPool"]


class Doorbell:
    """Wakes one sleeping thread. The eventfd is written only while that thread sleeps, so a
    busy writer thread costs submitters no system call."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._sleeping = False

    def ring(self) -> None:
        # The sleeper publishes _sleeping before its last look at the condition, and the
        # ringer changes the condition before reading _sleeping (both under the GIL, which
        # orders them), so a ring can be skipped only when the sleeper will see the change.
        if self._sleeping:
            os.eventfd_write(self._fd, 1)

    def sleep_until(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until *ready()* (called in this thread) is true, or *timeout* seconds have
        passed; return whether it is ready."""
        self._sleeping = True
        try:
            if timeout is None:
                while not ready():
                    os.eventfd_read(self._fd)  # a stale count only costs one more look
                return True
            until = time.monotonic() + timeout
            while not ready():
                left = until - time.monotonic()
                if left <= 0:
                    return False
                if select.select([self._fd], [], [], left)[0]:
                    os.eventfd_read(self._fd)
            return True
        finally:
            self._sleeping = False

    def close(self) -> None:
        os.close(self._fd)


# Waker states; transitions happen under WakerPool.lock.
WAITING, SIGNALLED, ABANDONED = 0, 1, 2


class Bell:
    """One eventfd a trio task keeps waiting on for many commits, oldest first: a peer
    connection's acknowledger (``Connections._ack_replicates``). With an eventfd per commit
    the acknowledger of a lone ``Replicate`` was woken twice — once by the reader that queued
    the commit (a scheduler pass of its own, only to start waiting on that commit's eventfd),
    once by the writer; waiting on the bell all along, it is woken by the writer alone.

    Each commit rung by the bell sets its waker's state to SIGNALLED before the bell is
    written (:meth:`WakerPool.signal`), so the task reads the state, not the count: a count
    left from an earlier commit only costs one more look. Who closes the eventfd is decided
    under the pool's lock, as for a :class:`Waker`: the bell's owner, or the writer at the
    last signal it owes a bell its owner closed (:meth:`close`)."""

    __slots__ = ("_lock", "closed", "fd", "owed")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.owed = 0  # commits queued with it and not signalled yet (under the lock)
        self.closed = False

    async def wait(self) -> None:
        """Until the bell is rung (at once if it was since the last wait)."""
        await trio.lowlevel.wait_readable(self.fd)
        os.eventfd_read(self.fd)

    def ring(self) -> None:
        """Ring it from the event loop (a commit that was done without the writer)."""
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        """No task waits on it any more: closed now, or by the writer after its last
        signal owed to it (a write to a closed, perhaps reused, descriptor is never made)."""
        with self._lock:
            self.closed = True
            if self.owed:
                return
        os.close(self.fd)


class Waker:
    """How one commit's caller is woken: its eventfd (trio), an Event (a plain thread), or
    a :class:`Bell` it shares with the other commits of its caller."""

    __slots__ = ("bell", "event", "fd", "parked", "state")

    def __init__(self, fd: int, event: threading.Event | None, bell: Bell | None = None) -> None:
        self.fd = fd  # -1 for a thread waiter
        self.event = event
        self.bell = bell
        self.state = WAITING
        # Its caller is parked on it (not busy elsewhere, like a coordinator waiting for its
        # peer first): signalling it makes the caller run at once (see LogWriter).
        self.parked = False


class WakerPool:
    """Reusable eventfds for trio waiters (creating one per commit costs two system calls and
    a new epoll registration)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._free: list[int] = []
        self._closed = False

    def for_thread(self) -> Waker:
        waker = Waker(-1, threading.Event())
        waker.parked = True  # a blocking commit waits from the start
        return waker

    def for_trio(self) -> Waker:
        with self.lock:
            fd = self._free.pop() if self._free else -1
        if fd < 0:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return Waker(fd, None)

    def bell(self) -> Bell:
        """A bell for a task that waits for many commits in turn (see :class:`Bell`)."""
        return Bell(self.lock)

    def for_bell(self, bell: Bell) -> Waker:
        """A waker that rings *bell*; its caller is always parked on it (the bell's task
        waits there whenever it has nothing else to do)."""
        with self.lock:
            if bell.closed:  # its task is gone: its eventfd may be closed already
                raise StoreClosedError("this commit's bell was closed")
            bell.owed += 1
        waker = Waker(bell.fd, None, bell)
        waker.parked = True
        return waker

    def release(self, waker: Waker) -> None:
        """Give back the eventfd of a waker that was never submitted."""
        if waker.bell is not None:
            self._signal_bell(waker, waker.bell, ring=False)
            return
        self._give_back(waker.fd)

    def _give_back(self, fd: int) -> None:
        with self.lock:
            if not self._closed:
                self._free.append(fd)
                return
        os.close(fd)

    def signal(self, waker: Waker) -> None:
        """Wake the caller (writer thread). Called exactly once per submitted waker."""
        if waker.event is not None:
            waker.event.set()
            return
        if waker.bell is not None:
            self._signal_bell(waker, waker.bell, ring=True)
            return
        with self.lock:
            if waker.state == ABANDONED:
                os.close(waker.fd)  # its caller is gone and handed the descriptor to us
                return
            os.eventfd_write(waker.fd, 1)
            waker.state = SIGNALLED  # after the write: wait() reads it without the lock

    def _signal_bell(self, waker: Waker, bell: Bell, *, ring: bool) -> None:
        with self.lock:
            waker.state = SIGNALLED  # before the write: the bell's task reads the state
            bell.owed -= 1
            if not bell.closed:
                if ring:
                    os.eventfd_write(bell.fd, 1)
                return
            if bell.owed:
                return
        os.close(bell.fd)  # its owner closed it, and this was the last signal owed to it

    async def wait(self, waker: Waker) -> None:
        """Wait (in trio) until :meth:`signal`. Cancelled, the eventfd goes back to the pool
        if the signal already came, else to the writer, which closes it."""
        if waker.state == SIGNALLED:
            # Already durable (a replicated put's round trip outlasts the local fsync): skip
            # the epoll registration and the scheduler pass a wait_readable would cost.
            os.eventfd_read(waker.fd)
            self._give_back(waker.fd)
            return
        waker.parked = True
        try:
            await trio.lowlevel.wait_readable(waker.fd)
        except BaseException:
            with self.lock:
                if waker.state == WAITING:
                    waker.state = ABANDONED
                    raise
            os.eventfd_read(waker.fd)  # signalled meanwhile: reset, then reuse
            self._give_back(waker.fd)
            raise
        os.eventfd_read(waker.fd)
        self._give_back(waker.fd)

    def abandon(self, waker: Waker) -> None:
        """The caller will never :meth:`wait` for this submitted waker: the writer closes the
        eventfd if it has not signalled yet, else it goes back to the pool now. (A bell's
        waker: nothing to do, the bell's close settles its eventfd.)"""
        if waker.bell is not None:
            return
        with self.lock:
            if waker.state == WAITING:
                waker.state = ABANDONED
                return
        os.eventfd_read(waker.fd)
        self._give_back(waker.fd)

    def close(self) -> None:
        """Close the idle eventfds (the writer thread has stopped: no waker is in flight)."""
        with self.lock:
            self._closed = True
            free, self._free = self._free, []
        for fd in free:
            os.close(fd)
