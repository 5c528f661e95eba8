"""Child process of the kill -9 test: commits versions from concurrent trio tasks and prints
each key to stdout only after its commit returned (i.e. once the store acknowledged it)."""

from __future__ import annotations

import sys

import trio

from hdsd.store import Store
from tests.helpers.sealing import SEALING
from tests.store._util import inline_version


def payload(key: str) -> bytes:
    return (key.encode() * 40)[:300]


async def main(path: str) -> None:
    with Store.open(path, segment_bytes=64 << 10, sealing=SEALING) as store:
        async def writer(w: int) -> None:
            for i in range(1_000_000):
                key = f"w{w}-{i}"
                await store.commit([inline_version("t", "b", key, w * 10_000_000 + i + 1, "n",
                                                   payload(key))])
                sys.stdout.write(key + "\n")
                sys.stdout.flush()

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
