"""The caller owns the timeout: a cancel scope that ends in the project's typed error.

trio's idiom is that an async function takes no ``timeout=``: whoever cares how long it may
take wraps the call in a cancel scope (ruff's ASYNC109 keeps it so). ``trio.fail_after`` would
raise ``trio.TooSlowError``, which no ``except HdsdError`` sees; :func:`deadline` raises
:class:`~hdsd.RequestTimeout` instead (an :class:`~hdsd.Unavailable`: retryable), with the
caller's words for what took too long.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ._errors import RequestTimeout

__all__ = ["deadline"]


@contextmanager
def deadline(seconds: float, message: str) -> Iterator[trio.CancelScope]:
    """Cancel the body after *seconds*, then raise ``RequestTimeout(message)``. A body that
    finishes in time (or raises) is left alone; the scope is yielded for callers that want to
    shield a part of the body up to the same deadline."""
    with trio.move_on_after(seconds) as scope:
        yield scope
    if scope.cancelled_caught:
        raise RequestTimeout(message)
