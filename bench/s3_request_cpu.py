"""The S3 gateway's own CPU per small PutObject, step by step, with no network and no node: the
request exactly as boto3 sends it (captured from botocore before it would be sent: ``Expect:
100-continue``, an aws-chunked body with a CRC32 trailer), then each step the gateway takes.

    python bench/s3_request_cpu.py [--size BYTES] [-n N]

Steps: h11 parsing of the head and the body (and the request object), Signature V4
verification (with the access key lookup), the body's decoder (aws-chunked framing, CRC32
trailer, MD5 for the ETag), the answer serialised by h11. Process CPU time (not wall time: the
machine is shared), microseconds per request, best of three rounds. What this leaves out is the
I/O around it (TLS records, system calls, trio's scheduling: one more read and write per put
than the native protocol, because of ``100 Continue``) and the node's put itself (shared with
the native protocol). Prints JSON lines and a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import h11

from hdsd.s3 import HttpLimits, HttpRequest, S3Credential, authenticate_request

AKID, SECRET, REGION = "HDSDBENCHKEY00000000", "bench-secret-of-forty-characters-012345", "hdsd"
CRED = S3Credential(AKID, SECRET, "bench", "writer")


def capture(size: int) -> tuple[bytes, datetime]:
    """The bytes boto3 would send for a PutObject of *size* bytes, and its signing time."""
    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    seen: dict[str, Any] = {}

    def before_send(request: Any, **_: Any) -> AWSResponse:
        body = request.body.read() if hasattr(request.body, "read") else request.body
        seen["request"] = (request.method, request.url, list(request.headers.items()), body)

        class _Raw:
            def stream(self, *_a: Any, **_k: Any) -> Any:
                return iter([b""])

        return AWSResponse(request.url, 200, {"ETag": '"0"'}, _Raw())

    s3 = boto3.client("s3", endpoint_url="https://127.0.0.1:9443", region_name=REGION,
                      aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                      config=Config(s3={"addressing_style": "path"}))
    s3.meta.events.register("before-send.s3", before_send)
    s3.put_object(Bucket="bench", Key="c1/0", Body=b"x" * size)
    method, url, headers, body = seen["request"]
    target = url.split("9443", 1)[1]
    head = f"{method} {target} HTTP/1.1\r\n".encode()
    for name, value in headers:
        head += name.encode() + b": " + (value if isinstance(value, bytes) else
                                         value.encode()) + b"\r\n"
    amz = dict(headers)["X-Amz-Date"]
    amz = amz.decode() if isinstance(amz, bytes) else amz
    when = datetime.strptime(amz, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    body = bytes(body)
    if b"transfer-encoding: chunked" in head.lower():  # urllib3 frames it so on the wire
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return head + b"\r\n" + body, when


async def _no_receive(_n: int) -> bytes:
    return b""


def best_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    wire, when = capture(args.size)
    limits = HttpLimits()

    def parse() -> tuple[h11.Connection, HttpRequest]:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(wire)
        event = conn.next_event()
        assert isinstance(event, h11.Request)
        req = HttpRequest(conn, None, event, limits, "bench",  # type: ignore[arg-type]
                          _no_receive)
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        return conn, req

    _, req = parse()
    body_pieces: list[bytes] = []
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    conn.next_event()
    while isinstance(event := conn.next_event(), h11.Data):
        body_pieces.append(bytes(event.data))

    import hdsd.s3._gateway as gateway_module

    real_now = gateway_module.datetime

    class _Frozen(datetime):  # the request's own time: the signature stays in its window
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return when

    gateway_module.datetime = _Frozen  # type: ignore[misc]
    try:
        def auth() -> Any:
            return authenticate_request(req, lambda k: CRED if k == AKID else None, REGION)

        def body() -> None:
            access = auth()
            for piece in body_pieces:
                access.decoder.feed(piece)
            access.decoder.finish()

        def answer() -> None:
            c, r = parse()
            r.request_id = "0123456789ABCDEF"
            headers = [("ETag", '"0123456789abcdef0123456789abcdef"'),
                       ("x-amz-version-id", "0123456789abcdef.0001"), ("Content-Length", "0")]
            head = getattr(r, "_head", None)
            if head is not None:
                c.send(head(200, headers))
            else:  # an older gateway (before its answer was one write): what its start() did
                base = [("Date", formatdate(usegmt=True)), ("Server", "hdsd"),
                        ("x-amz-request-id", r.request_id)]
                c.send(h11.Response(status_code=200, reason=b"OK", headers=[
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in base + headers]))
            c.send(h11.EndOfMessage())

        body()  # it verifies (a failure raises here, not in the timing)
        parse_us = best_us(parse, args.n)
        auth_us = best_us(auth, args.n)
        rows = [("h11: head and body parsed, request object", parse_us),
                ("SigV4 verified (key lookup included)", auth_us),
                ("body decoder: aws-chunked, CRC32 trailer, MD5",
                 best_us(body, args.n) - auth_us),
                ("answer serialised by h11", best_us(answer, args.n) - parse_us)]
    finally:
        gateway_module.datetime = real_now  # type: ignore[misc]
    total = sum(us for _, us in rows)
    for name, us in rows:
        print(json.dumps({"bench": "s3_request_cpu", "size_bytes": args.size, "step": name,
                          "cpu_us": round(us, 1)}))
    print(f"\n{'step (PutObject of ' + str(args.size) + ' bytes as boto3 sends it)':52} "
          f"{'CPU µs':>8}")
    for name, us in rows:
        print(f"{name:52} {us:8.1f}")
    print(f"{'total':52} {total:8.1f}")


if __name__ == "__main__":
    main()
