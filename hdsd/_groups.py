"""Turning trio's exception groups back into the one typed error a caller expects.

Nurseries wrap whatever escapes them in an ``ExceptionGroup`` (trio's strict mode). Inside hdsd a
nursery is an implementation detail of one operation, so when everything that escaped is an
:class:`HdsdError` the caller gets the first one, plainly. When the group also holds
``Cancelled`` (an outer scope was cancelled while the operation failed, e.g. a connection's
requests are cancelled because the client went away), the ``Cancelled`` wins: the error is moot,
and the cancel scope that asked for it must see it to stop the unwinding. A group holding only
HdsdErrors and Cancelleds must never escape as a group: nothing above a nursery expects one, and
an ``ExceptionGroup`` holding a ``Cancelled`` is not an ``Exception`` — it would pass every
``except Exception`` boundary up to the process. Anything else (a bug) propagates as the group,
untouched: cancellation is never swallowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ._errors import HdsdError

__all__ = ["contain", "single_error"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def single_error() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(exc, HdsdError | trio.Cancelled) for exc in leaves):
            cancelled = next((e for e in leaves if isinstance(e, trio.Cancelled)), None)
            raise (cancelled or leaves[0]) from None
        raise


def contain(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """Split what escaped a boundary (a request, a connection) into what must go on up
    (``Cancelled``, ``KeyboardInterrupt``: anything that is not an ``Exception``) and what ends
    there (every ``Exception``, grouped or not): ``(propagate, contained)``, either may be None.
    """
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(lambda e: not isinstance(e, Exception | BaseExceptionGroup))
    if isinstance(exc, Exception):
        return None, exc
    return exc, None
