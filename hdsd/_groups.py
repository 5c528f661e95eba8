"""Turning trio's exception groups back into the one typed error a caller expects.

Nurseries wrap whatever escapes them in an ``ExceptionGroup`` (trio's strict mode). Inside hdsd a
nursery is an implementation detail of one operation, so when everything that escaped is an
:class:`HdsdError` the caller gets the first one, plainly. Anything else (``Cancelled``, a bug)
propagates as the group, untouched: cancellation is never swallowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._errors import HdsdError

__all__ = ["single_error"]


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
        if leaves and all(isinstance(exc, HdsdError) for exc in leaves):
            raise leaves[0] from None
        raise
