"""The synchronous client: the async client driven by a trio loop in a background thread.

For ordinary scripts: ``with hdsd.Client() as c: c.put("bucket", "key", b"...")``. Every call
blocks until done and raises the same typed errors as :class:`AsyncClient`.
"""

from __future__ import annotations

import builtins
import os
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


class Client:
    def __init__(self, profile: Profile | str | os.PathLike[str] | None = None, *,
                 site: str | None = None, timeout: float = 60.0, retries: int = 3) -> None:
        self._async = AsyncClient(profile, site=site, timeout=timeout, retries=retries)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
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
            async with self._async:
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller of __init__ or close
            self._failure = exc
        finally:
            self._ready.set()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise HdsdError("the client is closed")
        return trio.from_thread.run(partial(fn, *args, **kwargs), trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            assert self._stop is not None
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
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
