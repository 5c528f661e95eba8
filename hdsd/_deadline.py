"""The caller owns the timeout: a cancel scope that ends in the project's typed error.

trio's idiom is that an async function takes no ``timeout=``: whoever cares how long it may
take wraps the call in a cancel scope (ruff's ASYNC109 keeps it so). ``trio.fail_after`` would
raise ``trio.TooSlowError``, which no ``except HdsdError`` sees; :func:`deadline` raises
:class:`~hdsd.RequestTimeout` instead (an :class:`~hdsd.Unavailable`: retryable), with the
caller's words for what took too long.
"""

from __future__ import annotations

from types import TracebackType

import trio

from ._errors import RequestTimeout

__all__ = ["deadline"]


class deadline:  # lower case: it is used like a function, ``with deadline(seconds, why):``
    """Cancel the body after *seconds*, then raise ``RequestTimeout(message)``. A body that
    finishes in time (or raises) is left alone; the scope is yielded for callers that want to
    shield a part of the body up to the same deadline.

    A class rather than a ``@contextmanager`` generator: the client enters one per frame it
    waits for, and a generator-based context manager costs about twenty Python calls more."""

    __slots__ = ("_message", "_scope")

    def __init__(self, seconds: float, message: str) -> None:
        self._scope = trio.move_on_after(seconds)
        self._message = message

    def __enter__(self) -> trio.CancelScope:
        return self._scope.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # The scope swallows only the Cancelled its own deadline caused: that becomes the
        # typed timeout; anything else goes on as it came (never swallowed here).
        self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught:
            raise RequestTimeout(self._message) from None
