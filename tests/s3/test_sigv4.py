"""Signature V4 verification against botocore, the reference signer: random requests signed by
botocore (header and presigned) verify, and a byte flipped anywhere that matters (method, path,
query, a signed header, the signature, the date) fails."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote_to_bytes, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import assume, given
from hypothesis import strategies as st

from hdsd.s3 import S3AuthError, S3Credential, authenticate

REGION = "eu-west-3"
AKID = "HDSDTESTKEY000000001"
SECRET = "s3cr3t/with+odd=chars0123456789abcdefghij"
CRED = S3Credential(AKID, SECRET, "acme", "writer")


def lookup(akid: str) -> S3Credential | None:
    return CRED if akid == AKID else None


@dataclass
class Signed:
    method: str
    target: str
    headers: list[tuple[str, str]]


# Keys and query values as S3 users write them: unicode, spaces, plus signs, tildes, slashes.
_text = st.text(alphabet=st.sampled_from(list("abcXYZ019 +~-_.!*'()/%&=?é漢😀")),
                min_size=0, max_size=12)
_names = st.text(alphabet=st.sampled_from(list("abcdxyz-_.~+ é")), min_size=1, max_size=8)


def _target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _sign(method: str, key: str, params: list[tuple[str, str]], bare: list[str],
          headers: dict[str, str], *, presign: bool, body: bytes = b"",
          expires: int = 900) -> Signed:
    # As botocore's serializer builds an S3 URL: the key percent-encoded except '/' and '~',
    # the query pairs encoded by botocore itself (params), valueless keys (?uploads) in the URL.
    # botocore's endpoint does the same: the query goes into the URL (percent_encode_sequence)
    # and AWSRequest gets no params (with params it would sign those alone).
    url = "https://127.0.0.1:9443/bucket-1/" + quote(key, safe="/~")
    query = [quote(b, safe="-_.~") for b in bare]
    if params:
        query.append(percent_encode_sequence(params))
    if query:
        url += "?" + "&".join(query)
    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    creds = Credentials(AKID, SECRET)
    if presign:
        S3SigV4QueryAuth(creds, "s3", REGION, expires=expires).add_auth(req)
    else:
        if "X-Amz-Content-SHA256" not in req.headers:
            req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
        S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    prepared = req.prepare()
    # What the HTTP client adds and sends: the Host header (botocore signed its value).
    sent = [("Host", "127.0.0.1:9443"), *((k, v) for k, v in prepared.headers.items())]
    return Signed(method, _target(prepared.url), sent)


def _verify(s: Signed, now: datetime | None = None) -> S3Credential:
    auth = authenticate(s.method, s.target, s.headers, lookup,
                        now=now or datetime.now(UTC), region=REGION)
    return auth.credential


_requests = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "PUT", "HEAD", "DELETE", "POST"]),
    "key": _text.filter(lambda k: k.strip("/") != ""),
    "params": st.lists(st.tuples(_names, _text), max_size=4),
    "bare": st.lists(st.sampled_from(["uploads", "acl", "versioning", "tagging"]), max_size=2,
                     unique=True),
    "meta": st.lists(st.tuples(st.sampled_from(["x-amz-meta-a", "X-Amz-Meta-Note", "Range",
                                                "Content-Type", "x-amz-meta-b"]),
                               st.text(alphabet=st.sampled_from(list("ab \t,;=")),
                                       max_size=10)),
                     max_size=3, unique_by=lambda t: t[0].lower()),
    "presign": st.booleans(),
})


def _make(r: dict[str, object]) -> Signed:
    meta = {k: v for k, v in r["meta"]}  # type: ignore[attr-defined]
    return _sign(r["method"], r["key"], r["params"], r["bare"], meta,  # type: ignore[arg-type]
                 presign=bool(r["presign"]))


@given(_requests)
def test_botocore_signed_requests_verify(r: dict[str, object]) -> None:
    s = _make(r)
    assert _verify(s) == CRED


def _decoded_target(target: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    path, _, query = target.partition("?")
    pairs = sorted((unquote_to_bytes(k), unquote_to_bytes(v))
                   for k, _, v in (p.partition("=") for p in query.split("&") if p))
    return unquote_to_bytes(path), pairs


def _flip(text: str, i: int, c: str) -> str:
    return text[:i] + c + text[i + 1:]


@given(_requests, st.data())
def test_a_flipped_byte_fails(r: dict[str, object], data: st.DataObject) -> None:
    s = _make(r)
    where = data.draw(st.sampled_from(["method", "target", "header", "signature", "date"]))
    char = data.draw(st.sampled_from(list("aZ0/%=&?+ ~.-")))
    if where == "method":
        flipped = Signed(s.method[:-1] + ("X" if s.method[-1] != "X" else "Y"), s.target,
                         s.headers)
    elif where == "target":
        i = data.draw(st.integers(0, len(s.target) - 1))
        assume(s.target[i] != char)
        target = _flip(s.target, i, char)
        # The same resource spelled differently (%7e vs %7E) is the same request.
        assume(_decoded_target(target) != _decoded_target(s.target))
        flipped = Signed(s.method, target, s.headers)
    else:
        headers = list(s.headers)
        if where == "signature":
            if "X-Amz-Signature=" in s.target:
                i = s.target.index("X-Amz-Signature=") + len("X-Amz-Signature=")
                i += data.draw(st.integers(0, 63))
                assume(s.target[i] != char)
                flipped = Signed(s.method, _flip(s.target, i, char), headers)
                with pytest.raises(S3AuthError):
                    _verify(flipped)
                return
            idx = next(n for n, (k, _) in enumerate(headers) if k.lower() == "authorization")
            value = headers[idx][1]
            i = value.index("Signature=") + len("Signature=") + data.draw(st.integers(0, 63))
            assume(value[i] != char)
            headers[idx] = (headers[idx][0], _flip(value, i, char))
        elif where == "date":
            if "X-Amz-Date=" in s.target:
                i = s.target.index("X-Amz-Date=") + len("X-Amz-Date=") + data.draw(
                    st.integers(0, 15))
                assume(s.target[i] != char)
                with pytest.raises(S3AuthError):
                    _verify(Signed(s.method, _flip(s.target, i, char), headers))
                return
            idx = next(n for n, (k, _) in enumerate(headers) if k.lower() == "x-amz-date")
            value = headers[idx][1]
            i = data.draw(st.integers(0, len(value) - 1))
            assume(value[i] != char)
            headers[idx] = (headers[idx][0], _flip(value, i, char))
        else:
            signed = _signed_names(s)
            candidates = [n for n, (k, v) in enumerate(headers) if k.lower() in signed and v]
            idx = data.draw(st.sampled_from(candidates))
            name, value = headers[idx]
            i = data.draw(st.integers(0, len(value) - 1))
            new = _flip(value, i, char)
            # Whitespace that canonicalises away (trimmed, runs collapsed) signs the same.
            assume(" ".join(new.split()) != " ".join(value.split()))
            headers[idx] = (name, new)
        flipped = Signed(s.method, s.target, headers)
    with pytest.raises(S3AuthError):
        _verify(flipped)


def _signed_names(s: Signed) -> set[str]:
    if "X-Amz-SignedHeaders=" in s.target:
        raw = s.target.split("X-Amz-SignedHeaders=", 1)[1].split("&", 1)[0]
        return set(raw.replace("%3B", ";").split(";"))
    auth = next(v for k, v in s.headers if k.lower() == "authorization")
    return set(auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";"))


# -- fixed cases -------------------------------------------------------------------------------
def _put(**kw: object) -> Signed:
    return _sign("PUT", "dir/my file+v1~.txt", [("versionId", "")], [],
                 {"x-amz-meta-note": "  two   spaces "}, presign=False, body=b"hello", **kw)  # type: ignore[arg-type]


def _code(s: Signed, **kw: object) -> str:
    with pytest.raises(S3AuthError) as info:
        authenticate(s.method, s.target, s.headers, lookup, **{  # type: ignore[arg-type]
            "now": datetime.now(UTC), "region": REGION, **kw})
    return info.value.code


def test_header_auth_with_odd_characters_verifies() -> None:
    assert _verify(_put()) == CRED


def test_anonymous_is_access_denied() -> None:
    assert _code(Signed("GET", "/bucket-1/x", [("Host", "127.0.0.1:9443")])) == "AccessDenied"


def test_unknown_key_is_invalid_access_key_id() -> None:
    s = _put()
    with pytest.raises(S3AuthError) as info:
        authenticate(s.method, s.target, s.headers, lambda _k: None,
                     now=datetime.now(UTC), region=REGION)
    assert info.value.code == "InvalidAccessKeyId" and info.value.status == 403


def test_wrong_region_is_malformed() -> None:
    assert _code(_put(), region="us-east-1") == "AuthorizationHeaderMalformed"
    presigned = _sign("GET", "k", [], [], {}, presign=True)
    assert _code(presigned, region="us-east-1") == "AuthorizationQueryParametersError"


def test_clock_skew_beyond_15_minutes_is_refused() -> None:
    s = _put()
    now = datetime.now(UTC)
    _verify(s, now + timedelta(minutes=14))
    _verify(s, now - timedelta(minutes=14))
    assert _code(s, now=now + timedelta(minutes=16)) == "RequestTimeTooSkewed"
    assert _code(s, now=now - timedelta(minutes=16)) == "RequestTimeTooSkewed"


def test_presigned_url_expires() -> None:
    s = _sign("GET", "k", [], [], {}, presign=True, expires=60)
    now = datetime.now(UTC)
    _verify(s, now + timedelta(seconds=50))
    with pytest.raises(S3AuthError) as info:
        _verify(s, now + timedelta(seconds=70))
    assert info.value.code == "AccessDenied" and info.value.message == "Request has expired"


def test_presigned_expiry_at_most_a_week() -> None:
    week = 7 * 24 * 3600
    _verify(_sign("GET", "k", [], [], {}, presign=True, expires=week))
    too_long = _sign("GET", "k", [], [], {}, presign=True, expires=week + 1)
    assert _code(too_long) == "AuthorizationQueryParametersError"


def test_presigned_url_with_a_plain_http_client() -> None:
    # What `curl "$(aws s3 presign ...)"` sends: the URL and a Host header, nothing signed else.
    s = _sign("GET", "report 2026.pdf", [], [], {}, presign=True)
    plain = Signed("GET", s.target, [("Host", "127.0.0.1:9443"), ("User-Agent", "curl/8"),
                                     ("Accept", "*/*")])
    assert _verify(plain) == CRED
    assert authenticate("GET", s.target, plain.headers, lookup, now=datetime.now(UTC),
                        region=REGION).payload.content_sha256 == "UNSIGNED-PAYLOAD"


def test_unsigned_amz_header_is_refused() -> None:
    s = _put()
    s.headers.append(("x-amz-meta-sneaky", "1"))
    assert _code(s) == "AccessDenied"


def test_host_must_be_signed() -> None:
    s = _put()
    headers = [(k, v.replace("host;", "") if k.lower() == "authorization" else v)
               for k, v in s.headers]
    assert _code(Signed(s.method, s.target, headers)) == "AuthorizationHeaderMalformed"


def test_both_mechanisms_at_once_are_refused() -> None:
    p = _sign("GET", "k", [], [], {}, presign=True)
    h = _sign("GET", "k", [], [], {}, presign=False)
    assert _code(Signed("GET", p.target, h.headers)) == "InvalidArgument"


def test_other_algorithms_are_refused() -> None:
    s = Signed("GET", "/b/k", [("Host", "h"), ("Authorization", "AWS AKID:c2lnbmF0dXJl")])
    assert _code(s) == "InvalidArgument"


def test_missing_content_sha256_is_invalid_request() -> None:
    s = _put()
    headers = [(k, v) for k, v in s.headers if k.lower() != "x-amz-content-sha256"]
    assert _code(Signed(s.method, s.target, headers)) == "InvalidRequest"


def test_path_normalisation_is_not_applied() -> None:
    # S3 signs the path as sent: "a/../b" is not "b", "//" is not "/".
    for key in ("a/../b", "x//y", "./z"):
        s = _sign("GET", key, [], [], {}, presign=False)
        assert _verify(s) == CRED
        normalised = s.target.replace("/../", "/").replace("//", "/").replace("/./", "/")
        if normalised != s.target:
            assert _code(Signed("GET", normalised, s.headers)) == "SignatureDoesNotMatch"


def test_equivalent_encodings_of_the_path_verify() -> None:
    s = _sign("GET", "tilde~key", [], [], {}, presign=False)
    assert "~" in s.target
    assert _verify(Signed("GET", s.target.replace("~", "%7E"), s.headers)) == CRED


def test_payload_mode_is_reported() -> None:
    s = _put()
    auth = authenticate(s.method, s.target, s.headers, lookup, now=datetime.now(UTC),
                        region=REGION)
    assert auth.payload.expected_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert not auth.payload.streaming


@pytest.mark.parametrize("op,params", [
    ("get_object", {"Bucket": "scans", "Key": "2026/ct scan+1~é.dcm"}),
    ("put_object", {"Bucket": "scans", "Key": "up/a b", "ContentType": "application/dicom"}),
    ("list_objects_v2", {"Bucket": "scans", "Prefix": "2026/", "Delimiter": "/"}),
    ("get_object", {"Bucket": "scans", "Key": "k", "VersionId": "18a.dc1-n1",
                    "ResponseContentDisposition": "attachment; filename=\"a b.dcm\""}),
])
def test_boto3_generate_presigned_url_verifies(op: str, params: dict[str, str]) -> None:
    # What `aws s3 presign` and applications hand to a plain HTTP client.
    client = boto3.session.Session().client(
        "s3", endpoint_url="https://127.0.0.1:9443", region_name=REGION,
        aws_access_key_id=AKID, aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    url = client.generate_presigned_url(op, Params=params, ExpiresIn=300)
    method = {"get_object": "GET", "put_object": "PUT", "list_objects_v2": "GET"}[op]
    headers = [("Host", "127.0.0.1:9443"), ("User-Agent", "curl/8")]
    if op == "put_object":
        headers.append(("Content-Type", "application/dicom"))
    s = Signed(method, _target(url), headers)
    assert _verify(s) == CRED
    assert _code(Signed(method, s.target.replace("scans", "scanz", 1), headers)) == \
        "SignatureDoesNotMatch"


@given(st.one_of(
    st.datetimes(min_value=datetime(1000, 1, 1)).map(lambda d: d.strftime("%Y%m%dT%H%M%SZ")),
    st.text(alphabet="0123456789", min_size=14, max_size=14).map(
        lambda d: f"{d[:8]}T{d[8:]}Z")))
def test_the_request_time_reads_as_strptime_does(amz: str) -> None:
    """X-Amz-Date is sliced by hand (not strptime): same datetime, same refusals."""
    from hdsd.s3._sigv4 import SignedRequest

    req = SignedRequest(AKID, amz[:8], REGION, amz, ("host",), "0" * 64, False)
    try:
        want: datetime | None = datetime.strptime(amz, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(ValueError):
            _ = req.time
    else:
        assert req.time == want
    bad = SignedRequest(AKID, amz[:8], REGION, amz[:-1] + "X", ("host",), "0" * 64, False)
    with pytest.raises(ValueError):
        _ = bad.time
