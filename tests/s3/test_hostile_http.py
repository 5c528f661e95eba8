"""Hostile HTTP against the gateway: smuggling, oversized heads, slowloris, bad chunk framing,
a client gone mid-upload. Each gets a clear S3 error (or a closed connection) and stores
nothing, and the node keeps serving (an ordinary request succeeds afterwards)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from botocore.exceptions import ClientError

from hdsd.s3 import Endpoint, HttpLimits
from tests.s3._inproc import s3_client, signed_head, two_sites

pytestmark = pytest.mark.slow

LIMITS = HttpLimits(head_timeout_s=2.0, idle_timeout_s=2.0, body_timeout_s=2.0,
                    send_timeout_s=5.0)


async def _exchange(endpoint: Endpoint, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or *wait* passes); what it answered."""
    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    out = b""
    try:
        await stream.send_all(data)
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                out += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return out


async def _still_serving(endpoint: Endpoint, key: str) -> None:
    s3 = s3_client(endpoint)
    await trio.to_thread.run_sync(lambda: s3.put_object(Bucket="h", Key=key, Body=b"fine"))
    got = await trio.to_thread.run_sync(
        lambda: s3.get_object(Bucket="h", Key=key)["Body"].read())
    assert got == b"fine"


async def _absent(endpoint: Endpoint, key: str) -> None:
    s3 = s3_client(endpoint)
    with pytest.raises(ClientError) as info:
        await trio.to_thread.run_sync(lambda: s3.head_object(Bucket="h", Key=key))
    assert info.value.response["Error"]["Code"] == "404"


async def test_hostile_requests_are_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with two_sites(tmp_path, LIMITS) as sites:
            ep = sites["dc1"].endpoint
            await _still_serving(ep, "before")

            # Smuggling: both framings at once. Refused, connection closed, nothing stored.
            head = signed_head("PUT", ep, "/h/smuggled", {"Content-Length": "4",
                                                           "Transfer-Encoding": "chunked"})
            answer = await _exchange(ep, head + b"0\r\n\r\n" +
                                     signed_head("GET", ep, "/h/before"))
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert b"<Code>BadRequest</Code>" in answer
            assert answer.count(b"HTTP/1.1") == 1  # the smuggled GET was never served
            await _absent(ep, "smuggled")

            # Bad chunk framing (a chunk size that is not hex): the connection ends, nothing
            # stored.
            head = signed_head("PUT", ep, "/h/badchunk", {"Transfer-Encoding": "chunked"})
            answer = await _exchange(ep, head + b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n")
            assert b" 200 " not in answer
            await _absent(ep, "badchunk")

            # A chunk that says 5 bytes and carries 7 (h11 >= 0.16 refuses it).
            head = signed_head("PUT", ep, "/h/overlong", {"Transfer-Encoding": "chunked"})
            answer = await _exchange(ep, head + b"5\r\nhello!!\r\n0\r\n\r\n")
            assert b" 200 " not in answer
            await _absent(ep, "overlong")

            # A head larger than the limit: 431, with the S3 XML body.
            answer = await _exchange(ep, b"GET /h/before HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                     b"a" * (64 << 10) + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 431 ")
            assert b"<Error>" in answer

            # Slowloris: a head trickled a byte at a time is cut at the head timeout.
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            closed_after = None
            started = trio.current_time()
            try:
                for byte in b"GET /h/before HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                closed_after = trio.current_time() - started
            finally:
                await stream.aclose()
            assert closed_after is not None  # cut long before the 50 s the head would take

            # Gone mid-upload: 3 MiB of a declared 10 MiB, then the connection drops.
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            await stream.send_all(signed_head("PUT", ep, "/h/partial",
                                              {"Content-Length": "10485760"},
                                              b"x" * 10485760))
            for _ in range(3):
                await stream.send_all(b"x" * (1 << 20))
            await stream.aclose()
            await trio.sleep(1.0)
            await _absent(ep, "partial")

            # A stalled body (declared, never sent in full) times out; nothing stored.
            answer = await _exchange(ep, signed_head("PUT", ep, "/h/stalled",
                                                     {"Content-Length": "100"}, b"y" * 100)
                                     + b"only this",
                                     wait=10)
            await _absent(ep, "stalled")

            # Not HTTP at all.
            answer = await _exchange(ep, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ") or answer == b""

            await _still_serving(ep, "after")


async def test_expect_100_continue_is_sent_only_once_the_request_is_accepted(
        tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with two_sites(tmp_path, LIMITS) as sites:
            ep = sites["dc1"].endpoint
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            try:
                await stream.send_all(signed_head("PUT", ep, "/h/continued", {
                    "Content-Length": "5", "Expect": "100-continue"}, b"hello"))
                first = await stream.receive_some(65536)
                assert first.startswith(b"HTTP/1.1 100 ")
                await stream.send_all(b"hello")
                rest = b""
                while b"\r\n\r\n" not in rest:
                    rest += await stream.receive_some(65536)
                assert rest.startswith(b"HTTP/1.1 200 ")
                assert b"Connection: close" not in rest
                # Keep-alive: GETs (no body) on the same connection.
                for _ in range(2):
                    await stream.send_all(signed_head("GET", ep, "/h/continued"))
                    answer = b""
                    while not answer.endswith(b"hello"):
                        answer += await stream.receive_some(65536)
                    assert answer.startswith(b"HTTP/1.1 200 ")
                    assert b"Connection: close" not in answer
                # Keep-alive: a second request on the same connection; a bucket name hdsd
                # refuses is answered without 100 Continue, and the body never read.
                await stream.send_all(signed_head("PUT", ep, "/Bad_Bucket/k", {
                    "Content-Length": "5", "Expect": "100-continue"}, b"hello"))
                answer = b""
                with trio.move_on_after(5):
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
                assert answer.startswith(b"HTTP/1.1 400 ")
                assert b"100 Continue" not in answer
                assert b"Connection: close" in answer
            finally:
                await stream.aclose()
            # An unsigned upload with Expect: its body is refused before it is sent.
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            try:
                await stream.send_all(b"PUT /h/anonymous HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                answer = b""
                with trio.move_on_after(5):
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
                assert answer.startswith(b"HTTP/1.1 403 ")
                assert b"<Code>AccessDenied</Code>" in answer
            finally:
                await stream.aclose()
            s3 = s3_client(ep)
            got = await trio.to_thread.run_sync(
                lambda: s3.get_object(Bucket="h", Key="continued")["Body"].read())
            assert got == b"hello"
