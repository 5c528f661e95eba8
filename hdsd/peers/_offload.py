"""How blocking work (store reads, fsyncs, tree hashing) leaves the trio thread: one helper,
replaceable by the deterministic tests that run everything on one thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["Offload", "to_thread"]

Offload = Callable[..., Awaitable[Any]]


async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)
