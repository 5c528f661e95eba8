"""AWS Signature Version 4 as S3 verifies it: sans-IO, pure functions over the request's text.

Two forms carry a signature:

* the ``Authorization`` header: ``AWS4-HMAC-SHA256 Credential=AKID/20260101/region/s3/
  aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=<64 hex>``, the
  time in ``x-amz-date`` and the payload's hash (or its mode) in ``x-amz-content-sha256``;
* the query string of a presigned URL: ``X-Amz-Algorithm``, ``X-Amz-Credential``,
  ``X-Amz-Date``, ``X-Amz-Expires`` (at most 7 days), ``X-Amz-SignedHeaders`` and
  ``X-Amz-Signature``; the payload is ``UNSIGNED-PAYLOAD`` unless the URL says otherwise.

The canonical request follows S3's rules, not the other services': the path is used **as
sent** (no dot-segment normalisation, no second encoding), the query's pairs are percent-encoded
(RFC 3986 unreserved characters bare) and sorted, header values are trimmed with inner runs of
whitespace collapsed, names lowercased, and ``host`` must be signed. Clients build the path and
query the way S3 canonicalises them and send exactly that, so the bytes as sent *are* the
canonical form; a client that sends a different but equivalent encoding (``~`` as ``%7E``, or
a query pair not re-encoded) gets a second chance with the canonical re-encoding of the decoded
path and query — the same resource either way, since the gateway decodes both with
:func:`decode_path` and :func:`parse_query`, exactly as here.

Signatures are compared in constant time (:func:`hmac.compare_digest`). Nothing here logs, and
no error message carries a secret or a signature this side computed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, unquote_to_bytes

from ._errors import S3AuthError, access_denied, invalid_argument, invalid_request

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_EXPIRES_S",
    "MAX_SKEW",
    "STREAMING_SIGNED",
    "STREAMING_SIGNED_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "UNSIGNED_PAYLOAD",
    "SignedRequest",
    "canonical_headers",
    "canonical_query_candidates",
    "canonical_request",
    "canonical_uri_candidates",
    "chunk_string_to_sign",
    "decode_path",
    "header_map",
    "parse_query",
    "parse_signed_request",
    "sign",
    "signing_key",
    "split_target",
    "string_to_sign",
    "trailer_string_to_sign",
    "verify_signature",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SERVICE = "s3"
TERMINATOR = "aws4_request"
#: S3 refuses a request whose time is further than this from its own clock.
MAX_SKEW = timedelta(minutes=15)
#: A presigned URL lives at most 7 days (S3's limit for SigV4).
MAX_EXPIRES_S = 7 * 24 * 3600

_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_SIG_RE = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: Query parameters of a presigned URL (their names as S3 spells them).
_Q_ALGORITHM = "X-Amz-Algorithm"
_Q_CREDENTIAL = "X-Amz-Credential"
_Q_DATE = "X-Amz-Date"
_Q_EXPIRES = "X-Amz-Expires"
_Q_SIGNED_HEADERS = "X-Amz-SignedHeaders"
_Q_SIGNATURE = "X-Amz-Signature"
_Q_CONTENT_SHA256 = "X-Amz-Content-Sha256"
_MAX_SIGNED_HEADERS = 64


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a request's signature names, parsed from its header or its query (not verified)."""

    access_key_id: str
    date: str  # the credential scope's date, YYYYMMDD
    region: str
    amz_date: str  # the request time, YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str = field(repr=False)
    presigned: bool
    expires_s: int = 0  # presigned only
    content_sha256: str = UNSIGNED_PAYLOAD

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{SERVICE}/{TERMINATOR}"

    @property
    def time(self) -> datetime:
        """The request time; ValueError if ``amz_date`` is not one. (Sliced by hand: strptime
        costs as much as the rest of a signature check.)"""
        d = self.amz_date
        if not _AMZ_DATE_RE.fullmatch(d):
            raise ValueError(f"not an X-Amz-Date: {d!r}")
        return datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]),
                        int(d[13:15]), tzinfo=UTC)


# -- the request's parts, decoded the one way the gateway decodes them too ----------------------
def split_target(raw_target: str) -> tuple[str, str]:
    """(raw path, raw query) of a request target as sent; an absolute-form target
    (``http://host/path``) loses its scheme and authority."""
    target = raw_target
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        cut = min(i for i in (rest.find("/"), rest.find("?"), len(rest)) if i >= 0)
        target = rest[cut:]
    path, _, query = target.partition("?")
    return path or "/", query


def decode_path(raw_path: str) -> str:
    """The path percent-decoded as UTF-8 (``+`` stays a plus: it is not a query)."""
    return unquote(raw_path, errors="strict")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs in order, percent-decoded (``+`` stays a plus, as
    S3's signature rules read it); a name without ``=`` has the value ``""``."""
    pairs = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((unquote(name, errors="strict"), unquote(value, errors="strict")))
    return pairs


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Lowercased name → its values in the order received."""
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


def _one(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_argument(f"header {name} given {len(values)} times")
    return values[0]


# -- canonical forms -----------------------------------------------------------------------------
def _aws_quote(text: str, safe: str) -> str:
    # RFC 3986 unreserved characters stay bare, everything else is %XX of its UTF-8 bytes with
    # upper-case hex: what every AWS SDK sends and signs.
    return quote(text, safe=safe)


def canonical_uri_candidates(raw_path: str) -> list[str]:
    """The path as sent, then (if different) the canonical encoding of its decoded form."""
    out = [raw_path]
    try:
        again = quote(unquote_to_bytes(raw_path), safe="/")
    except ValueError:
        return out
    if again != raw_path:
        out.append(again)
    return out


def canonical_query_candidates(raw_query: str, *, drop_signature: bool) -> list[str]:
    """The canonical query (pairs decoded, re-encoded, sorted), then (if different) the pairs
    as sent, sorted. ``drop_signature``: a presigned URL's own ``X-Amz-Signature`` is left
    out."""
    raw_pairs = []
    encoded = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        decoded_name = unquote(name)
        if drop_signature and decoded_name == _Q_SIGNATURE:
            continue
        raw_pairs.append((name, value))
        encoded.append((_aws_quote(decoded_name, "-_.~"), _aws_quote(unquote(value), "-_.~")))
    first = "&".join(f"{k}={v}" for k, v in sorted(encoded))
    second = "&".join(f"{k}={v}" for k, v in sorted(raw_pairs))
    return [first] if second == first else [first, second]


def canonical_headers(headers: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` for each signed header (values of a repeated header joined by
    commas, each trimmed and with inner whitespace collapsed to one space)."""
    lines = []
    for name in signed:
        values = headers.get(name, [])
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, Sequence[str]],
                      signed: Sequence[str], payload_hash: str) -> str:
    return "\n".join((method, uri, query, canonical_headers(headers, signed), ";".join(signed),
                      payload_hash))


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def chunk_string_to_sign(amz_date: str, scope: str, previous: str, chunk_sha256: str) -> str:
    """What one aws-chunked chunk's signature signs (chained to the previous signature)."""
    return (f"{ALGORITHM}-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_SHA256}\n"
            f"{chunk_sha256}")


def trailer_string_to_sign(amz_date: str, scope: str, previous: str, trailer_sha256: str) -> str:
    """What the trailer signature signs: the hash of the trailer lines (``name:value\\n``)."""
    return f"{ALGORITHM}-TRAILER\n{amz_date}\n{scope}\n{previous}\n{trailer_sha256}"


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The day's key for (secret, date, region): four HMACs of a few bytes, a few microseconds
    — not cached, so no secret of a revoked key lingers in a cache."""
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode(), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, TERMINATOR.encode(), "sha256")


def sign(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()


# -- parsing ------------------------------------------------------------------------------------
def _malformed(presigned: bool, message: str) -> S3AuthError:
    if presigned:
        return S3AuthError("AuthorizationQueryParametersError", 400, message)
    return S3AuthError("AuthorizationHeaderMalformed", 400,
                       f"The authorization header is malformed; {message}")


def _credential(value: str, presigned: bool) -> tuple[str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or not parts[0]:
        raise _malformed(presigned, "the Credential is mal-formed; expecting "
                         "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    akid, date, region, service, terminator = parts
    if not re.fullmatch(r"\d{8}", date):
        raise _malformed(presigned, f"invalid credential date {date!r}.")
    if service != SERVICE:
        raise _malformed(presigned, f"incorrect service {service!r}. This endpoint belongs to "
                         f"{SERVICE!r}.")
    if terminator != TERMINATOR:
        raise _malformed(presigned, f"incorrect terminal {terminator!r}. This endpoint uses "
                         f"{TERMINATOR!r}.")
    return akid, date, region


def _signed_headers(value: str, presigned: bool) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if (not value or len(names) > _MAX_SIGNED_HEADERS
            or any(not _HEADER_NAME_RE.fullmatch(n) for n in names)
            or list(names) != sorted(set(names))):
        raise _malformed(presigned, "SignedHeaders must be lowercase header names, sorted, "
                         "separated by ';'.")
    if "host" not in names:
        raise _malformed(presigned, "the host header must be signed.")
    return names


def _content_sha256(value: str) -> str:
    if value in (UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER,
                 STREAMING_UNSIGNED_TRAILER):
        return value
    if _SIG_RE.fullmatch(value.lower()):
        return value  # as sent: the canonical request's last line is the client's text
    if value.startswith("STREAMING-AWS4-ECDSA"):
        raise S3AuthError("NotImplemented", 501, "Signature Version 4A (ECDSA) is not "
                          "supported; sign with AWS4-HMAC-SHA256")
    raise invalid_argument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                           "STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER), "
                           "STREAMING-UNSIGNED-PAYLOAD-TRAILER or a SHA-256 in hex")


def _header_auth(value: str, headers: Mapping[str, Sequence[str]]) -> SignedRequest:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise invalid_argument("The authorization mechanism you have provided is not "
                               "supported. Please use AWS4-HMAC-SHA256.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, val = part.strip().partition("=")
        if not eq or name in fields:
            raise _malformed(False, f"bad component {part.strip()[:64]!r}.")
        fields[name] = val.strip()
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise _malformed(False, "expecting Credential, SignedHeaders and Signature.")
    akid, date, region = _credential(fields["Credential"], False)
    signed = _signed_headers(fields["SignedHeaders"], False)
    amz_date = _one(headers, "x-amz-date")
    if amz_date is None:
        raise access_denied("AWS authentication requires a valid Date or x-amz-date header")
    payload = _one(headers, "x-amz-content-sha256")
    if payload is None:
        raise invalid_request("Missing required header for this request: "
                              "x-amz-content-sha256")
    return SignedRequest(access_key_id=akid, date=date, region=region,
                         amz_date=amz_date.strip(), signed_headers=signed,
                         signature=fields["Signature"], presigned=False,
                         content_sha256=_content_sha256(payload.strip()))


def _query_auth(query: list[tuple[str, str]],
                headers: Mapping[str, Sequence[str]]) -> SignedRequest:
    params: dict[str, str] = {}
    for name, value in query:
        if name.startswith("X-Amz-"):
            if name in params:
                raise _malformed(True, f"{name} given twice.")
            params[name] = value
    if params.get(_Q_ALGORITHM) != ALGORITHM:
        raise _malformed(True, "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    missing = [n for n in (_Q_CREDENTIAL, _Q_DATE, _Q_EXPIRES, _Q_SIGNED_HEADERS, _Q_SIGNATURE)
               if n not in params]
    if missing:
        raise _malformed(True, f"Query-string authentication requires {', '.join(missing)}.")
    akid, date, region = _credential(params[_Q_CREDENTIAL], True)
    signed = _signed_headers(params[_Q_SIGNED_HEADERS], True)
    expires = params[_Q_EXPIRES]
    if not expires.isdigit() or len(expires) > 9:
        raise _malformed(True, "X-Amz-Expires should be a number")
    expires_s = int(expires)
    if expires_s < 1:
        raise _malformed(True, "X-Amz-Expires must be non-negative")
    if expires_s > MAX_EXPIRES_S:
        raise _malformed(True, "X-Amz-Expires must be less than a week (in seconds) that is "
                         "604800")
    payload = _one(headers, "x-amz-content-sha256") or params.get(_Q_CONTENT_SHA256)
    content = _content_sha256(payload.strip()) if payload else UNSIGNED_PAYLOAD
    if content.startswith("STREAMING-"):
        raise invalid_request("a presigned URL cannot carry an aws-chunked payload")
    return SignedRequest(access_key_id=akid, date=date, region=region, amz_date=params[_Q_DATE],
                         signed_headers=signed, signature=params[_Q_SIGNATURE], presigned=True,
                         expires_s=expires_s, content_sha256=content)


def parse_signed_request(raw_query: str,
                         headers: Mapping[str, Sequence[str]]) -> SignedRequest | None:
    """The signature's claims, from the Authorization header or a presigned query; None when
    the request carries neither (anonymous). Raises :class:`S3AuthError` when malformed."""
    try:
        query = parse_query(raw_query)
    except UnicodeDecodeError:
        raise invalid_argument("the query string is not valid UTF-8") from None
    in_query = any(name == _Q_SIGNATURE or name == _Q_ALGORITHM for name, _ in query)
    authorization = _one(headers, "authorization")
    if authorization is not None and in_query:
        raise invalid_argument("Only one auth mechanism allowed; only the X-Amz-Algorithm "
                               "query parameter, Signature query string parameter or the "
                               "Authorization header should be specified")
    if authorization is not None:
        req = _header_auth(authorization, headers)
    elif in_query:
        req = _query_auth(query, headers)
    else:
        return None
    if not _AMZ_DATE_RE.fullmatch(req.amz_date):
        raise access_denied("AWS authentication requires a valid Date or x-amz-date header")
    if req.date != req.amz_date[:8]:
        raise _malformed(req.presigned, f"Invalid credential date {req.date!r}. This date is "
                         f"not the same as X-Amz-Date: {req.amz_date[:8]!r}.")
    unsigned = sorted(n for n in headers if n.startswith("x-amz-")
                      and n not in req.signed_headers)
    if unsigned:
        raise access_denied("There were headers present in the request which were not "
                            f"signed: {', '.join(unsigned)}")
    return req


# -- verification -------------------------------------------------------------------------------
def check_time(req: SignedRequest, now: datetime) -> None:
    """Clock skew (header form) or validity window (presigned), against *now*."""
    try:
        when = req.time
    except ValueError:
        raise access_denied("AWS authentication requires a valid Date or x-amz-date "
                            "header") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if req.presigned:
        if now > when + timedelta(seconds=req.expires_s):
            raise access_denied("Request has expired")
        if when > now + MAX_SKEW:
            raise access_denied("Request is not valid yet")
        return
    if abs(now - when) > MAX_SKEW:
        raise S3AuthError("RequestTimeTooSkewed", 403, "The difference between the request "
                          "time and the server's time is too large.")


def verify_signature(req: SignedRequest, method: str, raw_path: str, raw_query: str,
                     headers: Mapping[str, Sequence[str]], secret: str) -> bytes:
    """Check the signature against every acceptable canonical form (the bytes as sent, the
    canonical re-encoding); returns the signing key (aws-chunked bodies chain from it).
    :class:`S3AuthError` ``SignatureDoesNotMatch`` when none matches."""
    key = signing_key(secret, req.date, req.region)
    # The signature exactly as sent: lowercase hex, as every SDK writes it (not case-folded,
    # so no two spellings of one signature are accepted).
    claimed = req.signature.encode()
    ok = False
    for uri in canonical_uri_candidates(raw_path):
        for query in canonical_query_candidates(raw_query, drop_signature=req.presigned):
            canonical = canonical_request(method, uri, query, headers, req.signed_headers,
                                          req.content_sha256)
            expected = sign(key, string_to_sign(req.amz_date, req.scope, canonical))
            # Every candidate is computed and compared: the time taken does not depend on
            # which one (or how much of one) matched.
            ok |= hmac.compare_digest(expected.encode(), claimed)
    if not ok or not _SIG_RE.fullmatch(req.signature):
        raise S3AuthError("SignatureDoesNotMatch", 403, "The request signature we calculated "
                          "does not match the signature you provided. Check your key and "
                          "signing method.")
    return key
