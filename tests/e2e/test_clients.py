"""Both client libraries against a real node process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import hdsd

pytestmark = pytest.mark.e2e

CHUNK = 1 << 20


async def test_async_client_sources_and_streams(profile: Path, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 17)
    src = tmp_path / "blob"
    src.write_bytes(data)

    async def agen():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    with trio.fail_after(120):
        async with hdsd.AsyncClient(profile) as client:
            a = await client.put("lib", "from-bytes", data, metadata={"k": "v"})
            b = await client.put("lib", "from-path", src)
            c = await client.put("lib", "from-aiter", agen())
            with open(src, "rb") as f:
                d = await client.put("lib", "from-file", f)
            assert a.size == b.size == c.size == d.size == len(data)
            assert a.content_hash == b.content_hash == c.content_hash == d.content_hash
            assert await client.get("lib", "from-aiter") == data
            assert await client.get("lib", "from-bytes", offset=CHUNK - 3, length=6) \
                == data[CHUNK - 3:CHUNK + 3]
            pieces = []
            async with client.open_get("lib", "from-path") as stream:
                assert stream.info.size == len(data)
                async for piece in stream:
                    pieces.append(piece)
            assert b"".join(pieces) == data
            out = tmp_path / "out"
            await client.get_to_file("lib", "from-file", out)
            assert out.read_bytes() == data
            assert (await client.stat("lib", "from-bytes")).metadata == {"k": "v"}
            # Many concurrent requests share one connection.
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(client.put, "lib", f"many/{i}", b"x" * i)
            page = await client.list("lib", "many/", limit=7)
            assert len(page.entries) == 7 and page.next is not None
            keys = [e.key async for e in client.list_all("lib", "many/")]
            assert keys == sorted(f"many/{i}" for i in range(20))


async def test_retry_with_same_request_id_is_applied_once(profile: Path) -> None:
    with trio.fail_after(60):
        async with hdsd.AsyncClient(profile) as client:
            rid = os.urandom(16)
            first = await client.put("lib", "idem", b"payload", request_id=rid)
            again = await client.put("lib", "idem", b"payload", request_id=rid)
            assert again.version == first.version and again.replayed
            assert len(await client.versions("lib", "idem")) == 1


def test_sync_client(profile: Path) -> None:
    with hdsd.Client(profile) as client:
        info = client.put("sync", "k", b"hello")
        assert client.get("sync", "k") == b"hello"
        assert client.stat("sync", "k").version == info.version
        client.delete("sync", "k")
        with pytest.raises(hdsd.NotFound):
            client.get("sync", "k")
        assert [v.deleted for v in client.versions("sync", "k")] == [False, True]
        with pytest.raises(hdsd.InvalidRequest):
            client.put("Bad Bucket", "k", b"")
        # The connection survives request-level errors.
        assert client.status()["node"] == "dc1-n1"
