"""Hostile input to the verifier and the decoder: whatever arrives, the only failure is a typed
S3AuthError (the gateway turns it into S3's XML error) — never another exception, never an
unbounded buffer."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from hdsd.s3 import S3AuthError, S3Credential, authenticate, body_decoder
from hdsd.s3._auth import Authenticated, PayloadMode
from hdsd.s3._chunked import MAX_LINE, ChunkedDecoder

CRED = S3Credential("HDSDFUZZKEY000000000", "secret", "t", "writer")
NOW = datetime(2026, 1, 1, tzinfo=UTC)

_pieces = st.sampled_from([
    "AWS4-HMAC-SHA256", " ", ",", "=", "/", "Credential=", "SignedHeaders=", "Signature=",
    "HDSDFUZZKEY000000000", "20260101", "us-east-1", "s3", "aws4_request", "host", ";",
    "x-amz-date", "0" * 64, "\t", "é", "\udcff", "X-Amz-Algorithm", "X-Amz-Credential",
    "X-Amz-Signature", "X-Amz-Expires", "X-Amz-Date", "X-Amz-SignedHeaders", "&", "?", "%",
    "%2F", "%ZZ", "%C3", "20260101T000000Z", "604801", "-1", "UNSIGNED-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"])
_text = st.lists(_pieces, max_size=24).map("".join)
_names = st.sampled_from(["Authorization", "x-amz-date", "X-Amz-Content-SHA256", "Host",
                          "x-amz-meta-a", "x-amz-decoded-content-length", "x-amz-trailer",
                          "Content-MD5", "x-amz-checksum-crc32", "x-amz-checksum-type",
                          "x-amz-checksum-bogus"])


@given(st.sampled_from(["GET", "PUT", "", "\x00"]), _text,
       st.lists(st.tuples(_names, _text), max_size=8))
def test_any_request_head_fails_only_with_an_s3_error(method: str, target: str,
                                                      headers: list[tuple[str, str]]) -> None:
    try:
        auth = authenticate(method, "/" + target, headers, lambda k: CRED if k == CRED.
                            access_key_id else None, now=NOW, region="us-east-1")
    except S3AuthError as exc:
        assert exc.code and 400 <= exc.status < 600 and exc.message
        return
    try:  # it verified (unlikely): the body checks are typed too
        body_decoder(auth, headers).finish()
    except S3AuthError:
        pass


_modes = st.sampled_from(["STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                          "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"])
_frames = st.lists(st.sampled_from([
    b"0", b"1", b"a", b"10", b"ffffffffffffffffff", b";", b"chunk-signature=", b"0" * 64, b"\r",
    b"\n", b"\r\n", b"x", b"x-amz-checksum-crc32:", b"AAAAAA==", b"x-amz-trailer-signature:",
    b":", b"\x00"]), max_size=40).map(b"".join)


@given(_modes, st.integers(0, 100), _frames, st.lists(st.integers(0, 200), max_size=6))
def test_any_chunked_body_fails_only_with_an_s3_error(mode: str, length: int, body: bytes,
                                                      cuts: list[int]) -> None:
    decoder = ChunkedDecoder(mode, decoded_length=length,
                             trailer_names=frozenset({"x-amz-checksum-crc32"}),
                             signing_key=b"k" * 32, amz_date="20260101T000000Z",
                             scope="20260101/us-east-1/s3/aws4_request", seed_signature="0" * 64)
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    try:
        for a, b in itertools.pairwise(points):
            decoder.feed(body[a:b])
        decoder.finish()
    except S3AuthError as exc:
        assert exc.code in ("IncompleteBody", "InvalidRequest", "SignatureDoesNotMatch"), exc


def test_a_chunk_header_that_never_ends_is_refused_at_the_line_limit() -> None:
    payload = PayloadMode(content_sha256="STREAMING-UNSIGNED-PAYLOAD-TRAILER", amz_date="",
                          scope="", signing_key=b"", seed_signature="")
    decoder = body_decoder(Authenticated(CRED, payload),
                           [("x-amz-decoded-content-length", "10")])
    fed = 0
    try:
        while fed < 100 * MAX_LINE:
            decoder.feed(b"0" * 1000)  # a size line that never ends
            fed += 1000
        raise AssertionError("an endless chunk header was buffered")
    except S3AuthError as exc:
        assert exc.code == "InvalidRequest" and fed <= MAX_LINE + 1000
