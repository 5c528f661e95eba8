"""Payloads: AWS's published aws-chunked examples (seed, chunk and trailer signatures), what a
real botocore client sends for PutObject in its default and ``when_required`` checksum modes,
and every way a body can be wrong (framing, length, signatures, digests)."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore import httpchecksum
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from hdsd.s3 import S3AuthError, S3Credential, authenticate, body_decoder
from hdsd.s3._checksums import new_checksum
from hdsd.s3._chunked import MAX_LINE

# -- AWS's worked examples ("Signature Calculations for the Authorization Header: Transferring
# Payload in Multiple Chunks" and "... trailing headers"): 66560 bytes of 'a' in 64 KiB + 1 KiB
# chunks, secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, 2013-05-24, us-east-1.
AWS = S3Credential("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "t",
                   "writer")
AWS_NOW = datetime(2013, 5, 24, 0, 0, 30, tzinfo=UTC)
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGS = ("ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
              "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
              "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")
TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
TRAILER_CHUNK_SIGS = ("b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                      "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                      "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992")
TRAILER_SIG = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
PAYLOAD = b"a" * 66560


def _aws_headers(trailer: bool) -> list[tuple[str, str]]:
    if trailer:
        signed = ("content-encoding;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer")
        mode, seed = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", TRAILER_SEED
    else:
        signed = ("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class")
        mode, seed = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", SEED
    headers = [
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
                          f"us-east-1/s3/aws4_request,SignedHeaders={signed},Signature={seed}"),
        ("x-amz-content-sha256", mode), ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"), ("Content-Length", "66824")]
    if trailer:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32c"))
    return headers


def _aws_body(trailer: bool) -> bytes:
    sigs = TRAILER_CHUNK_SIGS if trailer else CHUNK_SIGS
    body = (b"10000;chunk-signature=" + sigs[0].encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
            + b"400;chunk-signature=" + sigs[1].encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=" + sigs[2].encode() + b"\r\n")
    if trailer:
        return body + (b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
                       b"x-amz-trailer-signature:" + TRAILER_SIG.encode() + b"\r\n\r\n")
    return body + b"\r\n"


def _run(method: str, target: str, headers: list[tuple[str, str]], body: bytes,
         lookup: Any, now: datetime, region: str, pieces: list[int] | None = None
         ) -> tuple[bytes, dict[str, str]]:
    auth = authenticate(method, target, headers, lookup, now=now, region=region)
    decoder = body_decoder(auth, headers)
    out = bytearray()
    cuts = sorted({0, len(body), *(p % (len(body) + 1) for p in pieces or [])})
    for a, b in itertools.pairwise(cuts):
        for piece in decoder.feed(body[a:b]):
            out += piece
    decoder.finish()
    return bytes(out), decoder.checksums


def _aws(trailer: bool, body: bytes | None = None, pieces: list[int] | None = None
         ) -> tuple[bytes, dict[str, str]]:
    return _run("PUT", "/examplebucket/chunkObject.txt", _aws_headers(trailer),
                _aws_body(trailer) if body is None else body, lambda _k: AWS, AWS_NOW,
                "us-east-1", pieces)


@given(st.lists(st.integers(0, 70000), max_size=12))
def test_aws_streaming_example_in_any_pieces(cuts: list[int]) -> None:
    data, sums = _aws(False, pieces=cuts)
    assert data == PAYLOAD
    assert sums["md5"] == base64.b64encode(hashlib.md5(PAYLOAD).digest()).decode()


@given(st.lists(st.integers(0, 70000), max_size=12))
def test_aws_trailer_example_in_any_pieces(cuts: list[int]) -> None:
    data, sums = _aws(True, pieces=cuts)
    assert data == PAYLOAD
    assert sums["crc32c"] == "sOO8/Q=="


def _fails(trailer: bool, body: bytes) -> S3AuthError:
    with pytest.raises(S3AuthError) as info:
        _aws(trailer, body)
    return info.value


@given(st.booleans(), st.data())
def test_a_flipped_byte_in_a_chunked_body_fails(trailer: bool, data: st.DataObject) -> None:
    body = bytearray(_aws_body(trailer))
    i = data.draw(st.integers(0, len(body) - 1))
    new = data.draw(st.sampled_from(b"b0;=\r\nA"))
    if body[i] == new or (i >= len(body) - 2 and new in b"\r\n"):
        return  # the same byte, or a line end swapped into the final line ends
    body[i] = new
    _fails(trailer, bytes(body))


def test_truncated_body_is_incomplete() -> None:
    body = _aws_body(False)
    for cut in (10, 60000, 65700, len(body) - 3):
        assert _fails(False, body[:cut]).code == "IncompleteBody"


def test_reordered_chunks_fail() -> None:
    one = b"10000;chunk-signature=" + CHUNK_SIGS[0].encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
    two = b"400;chunk-signature=" + CHUNK_SIGS[1].encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
    end = b"0;chunk-signature=" + CHUNK_SIGS[2].encode() + b"\r\n\r\n"
    assert _fails(False, two + one + end).code == "SignatureDoesNotMatch"
    assert _fails(False, one + end).code in ("SignatureDoesNotMatch", "IncompleteBody")


def test_chunk_past_the_decoded_length_is_refused() -> None:
    body = b"20000;chunk-signature=" + CHUNK_SIGS[0].encode() + b"\r\n"
    assert _fails(False, body).code == "IncompleteBody"


def test_overlong_chunk_line_is_refused_without_buffering_it() -> None:
    body = b"1" + b"0" * (MAX_LINE + 10)
    assert _fails(False, body).code == "InvalidRequest"


def test_trailing_garbage_is_refused() -> None:
    assert _fails(False, _aws_body(False) + b"junk").code == "InvalidRequest"


def test_wrong_trailer_checksum_is_bad_digest() -> None:
    # A checksum that does not match is refused even before its signature is looked at.
    body = _aws_body(True).replace(b"sOO8/Q==", b"AAAAAA==")
    assert _fails(True, body).code == "SignatureDoesNotMatch"  # the trailer is signed


# -- what botocore itself sends: boto3 clients with the HTTP layer replaced by a capture ------
REGION = "eu-west-3"
KEY = S3Credential("HDSDBOTOKEY000000001", "bot0-secret/+=", "acme", "writer")


def _capture(endpoint: str, body: bytes, **config: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def send(request: Any, **_kw: Any) -> AWSResponse:
        raw = request.body
        data = raw.read() if hasattr(raw, "read") else (raw or b"")
        parts = request.url.split("/", 3)
        seen.update(method=request.method, target="/" + parts[3],
                    headers=_sent_headers(request, parts[2]),
                    body=data if isinstance(data, bytes) else data.encode())
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, _Raw())

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY.access_key_id,
        aws_secret_access_key=KEY.secret, config=Config(s3={"addressing_style": "path"},
                                                         **config))
    client.meta.events.register("before-send.s3", send)
    client.put_object(Bucket="b1", Key="dir/a b+c~.bin", Body=body,
                      Metadata={"note": "x  y"})
    return seen


def _sent_headers(request: Any, host: str) -> list[tuple[str, str]]:
    """The headers as the gateway receives them: str, decoded from the wire's bytes as UTF-8
    with surrogateescape; Host added as the HTTP client adds it, if botocore did not."""
    out = [(k, v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v)
           for k, v in request.headers.items()]
    if not any(k.lower() == "host" for k, _ in out):
        out.insert(0, ("Host", host))
    return out


class _Raw:
    def stream(self, **_kw: Any) -> Any:
        yield b""

    def read(self, *_a: Any) -> bytes:
        return b""


@pytest.mark.parametrize("endpoint", ["https://127.0.0.1:9443", "http://127.0.0.1:9080"])
@pytest.mark.parametrize("mode", ["when_supported", "when_required"])
@pytest.mark.parametrize("size", [0, 5, 300_000])
def test_boto3_put_object_verifies(endpoint: str, mode: str, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    seen = _capture(endpoint, body, request_checksum_calculation=mode)
    data, sums = _run(seen["method"], seen["target"], seen["headers"], seen["body"],
                      lambda k: KEY if k == KEY.access_key_id else None, datetime.now(UTC),
                      REGION)
    assert data == body
    assert sums["md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()


@pytest.mark.parametrize("alg", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512",
                                 "xxhash64", "xxhash3", "xxhash128"])
def test_boto3_checksum_algorithms(alg: str) -> None:
    body = b"hdsd " * 20000
    seen: dict[str, Any] = {}

    def send(request: Any, **_kw: Any) -> AWSResponse:
        raw = request.body
        seen.update(target="/" + request.url.split("/", 3)[3],
                    headers=_sent_headers(request, request.url.split("/")[2]),
                    body=raw.read() if hasattr(raw, "read") else raw)
        return AWSResponse(request.url, 200, {}, _Raw())

    client = boto3.session.Session().client(
        "s3", endpoint_url="https://127.0.0.1:9443", region_name=REGION,
        aws_access_key_id=KEY.access_key_id, aws_secret_access_key=KEY.secret,
        config=Config(s3={"addressing_style": "path"}))
    client.meta.events.register("before-send.s3", send)
    client.put_object(Bucket="b1", Key="k", Body=body, ChecksumAlgorithm=alg.upper())
    data, sums = _run("PUT", seen["target"], seen["headers"], seen["body"], lambda _k: KEY,
                      datetime.now(UTC), REGION)
    assert data == body
    expected = new_checksum(alg)
    expected.update(body)
    assert sums[alg] == expected.b64()
    # The same body with one byte changed is refused by its checksum.
    tampered = seen["body"].replace(b"hdsd hdsd", b"hdsd hdsX", 1)
    with pytest.raises(S3AuthError) as info:
        _run("PUT", seen["target"], seen["headers"], tampered, lambda _k: KEY,
             datetime.now(UTC), REGION)
    assert info.value.code in ("BadDigest", "XAmzContentSHA256Mismatch")


# -- plain bodies --------------------------------------------------------------------------
def _plain(headers_extra: list[tuple[str, str]], body: bytes, signed_sha: str | None = None,
           sent: bytes | None = None) -> dict[str, str]:
    req = AWSRequest(method="PUT", url="https://127.0.0.1:9443/b1/k", data=body,
                     headers=dict(headers_extra))
    # botocore signs the payload's SHA-256 unless told not to (then UNSIGNED-PAYLOAD).
    req.context["client_config"] = Config(
        s3={"payload_signing_enabled": signed_sha != "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(KEY.access_key_id, KEY.secret), "s3", REGION).add_auth(req)
    headers = [("Host", "127.0.0.1:9443"), *req.prepare().headers.items()]
    assert dict(headers)["X-Amz-Content-SHA256"] == (signed_sha or
                                                     hashlib.sha256(body).hexdigest())
    _data, sums = _run("PUT", "/b1/k", headers, body if sent is None else sent,
                       lambda _k: KEY, datetime.now(UTC), REGION)
    return sums


def _plain_code(*args: Any, **kw: Any) -> str:
    with pytest.raises(S3AuthError) as info:
        _plain(*args, **kw)
    return info.value.code


def test_sha256_payload_is_checked_at_the_end() -> None:
    assert _plain([], b"hello")["sha256"] == base64.b64encode(
        hashlib.sha256(b"hello").digest()).decode()
    assert _plain_code([], b"hello", sent=b"hellO") == "XAmzContentSHA256Mismatch"


def test_unsigned_payload_is_accepted_as_sent() -> None:
    assert _plain([], b"anything", signed_sha="UNSIGNED-PAYLOAD")["md5"]


def test_content_md5() -> None:
    good = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    _plain([("Content-MD5", good)], b"hello", signed_sha="UNSIGNED-PAYLOAD")
    assert _plain_code([("Content-MD5", good)], b"hello", signed_sha="UNSIGNED-PAYLOAD",
                       sent=b"jello") == "BadDigest"
    assert _plain_code([("Content-MD5", "not base64!")], b"hello") == "InvalidDigest"


def test_checksum_header() -> None:
    crc = new_checksum("crc32c")
    crc.update(b"hello")
    _plain([("x-amz-checksum-crc32c", crc.b64())], b"hello", signed_sha="UNSIGNED-PAYLOAD")
    assert _plain_code([("x-amz-checksum-crc32c", crc.b64())], b"hello",
                       signed_sha="UNSIGNED-PAYLOAD", sent=b"hellp") == "BadDigest"
    assert _plain_code([("x-amz-checksum-crc32c", "AAAA")], b"hello") == "InvalidRequest"


def test_streaming_without_decoded_length_is_refused() -> None:
    headers = [(k, v) for k, v in _aws_headers(False)
               if k != "x-amz-decoded-content-length"]
    auth = authenticate("PUT", "/examplebucket/chunkObject.txt", _aws_headers(False),
                        lambda _k: AWS, now=AWS_NOW, region="us-east-1")
    with pytest.raises(S3AuthError) as info:
        body_decoder(auth, headers)
    assert info.value.code == "MissingContentLength"


@pytest.mark.parametrize("alg,value", [("crc32", "NhCmhg=="), ("crc32c", "yZRlqg=="),
                                       ("crc64nvme", "OOJZ0D8xKts=")])
def test_checksums_known_values(alg: str, value: str) -> None:
    # Check values of the three CRCs over "123456789", as S3 writes them (big-endian, base64):
    # CRC-32 0xCBF43926, CRC-32C 0xE3069283, CRC-64/NVME 0xAE8B14860A799888.
    c = new_checksum(alg)
    c.update(memoryview(b"12345"))
    c.update(b"6789")
    expected = {"crc32": 0xCBF43926, "crc32c": 0xE3069283,
                "crc64nvme": 0xAE8B14860A799888}[alg]
    size = 8 if alg == "crc64nvme" else 4
    assert c.b64() == base64.b64encode(expected.to_bytes(size, "big")).decode()
    assert value  # the parametrised literal documents a second, independent spelling


# -- botocore's own aws-chunked encoder, any body, any chunk size, any split of the stream ---
@given(st.binary(max_size=3000).map(lambda b: b * 7), st.integers(1, 4096),
       st.lists(st.integers(0, 30000), max_size=8),
       st.sampled_from(["crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512", "xxhash64",
                        "xxhash3", "xxhash128"]))
def test_botocore_chunked_encoder_round_trips(body: bytes, chunk: int, cuts: list[int],
                                              alg: str) -> None:
    classes = {"crc32": httpchecksum.Crc32Checksum, "crc32c": httpchecksum.CrtCrc32cChecksum,
               "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum,
               "sha1": httpchecksum.Sha1Checksum, "sha256": httpchecksum.Sha256Checksum,
               "sha512": httpchecksum.Sha512Checksum,
               "xxhash64": httpchecksum.CrtXxhash64Checksum,
               "xxhash3": httpchecksum.CrtXxhash3Checksum,
               "xxhash128": httpchecksum.CrtXxhash128Checksum}
    wire = httpchecksum.AwsChunkedWrapper(io.BytesIO(body), checksum_cls=classes[alg],
                                          checksum_name=f"x-amz-checksum-{alg}",
                                          chunk_size=chunk).read()
    req = AWSRequest(method="PUT", url="https://127.0.0.1:9443/b1/k", headers={
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked", "X-Amz-Trailer": f"x-amz-checksum-{alg}",
        "X-Amz-Decoded-Content-Length": str(len(body))})
    # What botocore's flexible-checksum handler tells its signer for a trailer checksum.
    req.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": alg,
                                                     "name": f"x-amz-checksum-{alg}"}}
    S3SigV4Auth(Credentials(KEY.access_key_id, KEY.secret), "s3", REGION).add_auth(req)
    headers = [("Host", "127.0.0.1:9443"), *req.prepare().headers.items()]
    data, sums = _run("PUT", "/b1/k", headers, wire, lambda _k: KEY, datetime.now(UTC), REGION,
                      cuts)
    assert data == body
    expected = new_checksum(alg)
    expected.update(body)
    assert sums[alg] == expected.b64()
