"""The aws-chunked body decoder (``Content-Encoding: aws-chunked``): sans-IO, bounded memory.

Three payload modes frame the body in chunks (``x-amz-content-sha256`` names the mode)::

    STREAMING-AWS4-HMAC-SHA256-PAYLOAD
        <hex size>;chunk-signature=<sig>\\r\\n<data>\\r\\n ... 0;chunk-signature=<sig>\\r\\n\\r\\n
    STREAMING-UNSIGNED-PAYLOAD-TRAILER
        <hex size>\\r\\n<data>\\r\\n ... 0\\r\\nx-amz-checksum-crc32:<b64>\\r\\n\\r\\n
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER
        signed chunks ... 0;chunk-signature=<sig>\\r\\n, the trailer lines,
        x-amz-trailer-signature:<sig>\\r\\n\\r\\n

Each chunk signature signs the SHA-256 of its data and the previous signature (the first one
chains from the seed: the request's own signature), so chunks can be neither altered, dropped
nor reordered; the trailer signature chains from the final chunk's. A chunk's data is handed on
as it arrives (memoryviews of the caller's buffers, never copied) and its signature is checked
when the chunk ends: a bad signature raises before the next chunk is read, and the gateway
commits nothing before :meth:`ChunkedDecoder.finish` returns. Memory is bounded: only a chunk
header or trailer line is ever buffered (at most :data:`MAX_LINE` bytes).

``x-amz-decoded-content-length`` is enforced: no chunk may carry the body past it, and the
body must reach it exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import Enum, auto

from ._errors import S3AuthError, invalid_request
from ._sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    chunk_string_to_sign,
    sign,
    trailer_string_to_sign,
)

__all__ = ["MAX_LINE", "MAX_TRAILERS", "ChunkedDecoder"]

#: Longest chunk header or trailer line accepted (a size and a signature need ~100 bytes).
MAX_LINE = 4096
MAX_TRAILERS = 16
_SIZE_RE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIG_RE = re.compile(r"[0-9a-f]{64}")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"


class _State(Enum):
    HEADER = auto()
    DATA = auto()
    DATA_END = auto()  # a data chunk's CRLF
    FINAL_END = auto()  # the empty line after the final chunk (no trailer)
    TRAILER = auto()
    DONE = auto()


def incomplete(message: str = "The request body terminated unexpectedly") -> S3AuthError:
    return S3AuthError("IncompleteBody", 400, message)


def _bad_signature() -> S3AuthError:
    return S3AuthError("SignatureDoesNotMatch", 403, "The chunk signature we calculated does "
                       "not match the signature you provided")


class ChunkedDecoder:
    """Decode one aws-chunked body: :meth:`feed` the bytes as they come, then :meth:`finish`."""

    def __init__(self, mode: str, *, decoded_length: int, trailer_names: frozenset[str],
                 signing_key: bytes = b"", amz_date: str = "", scope: str = "",
                 seed_signature: str = "") -> None:
        if mode not in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
            raise ValueError(f"not an aws-chunked mode: {mode!r}")
        self._signed = mode != STREAMING_UNSIGNED_TRAILER
        self._with_trailer = mode != STREAMING_SIGNED
        self._key = signing_key
        self._amz_date = amz_date
        self._scope = scope
        self._previous = seed_signature
        self._expected_length = decoded_length
        self._trailer_names = trailer_names
        self._state = _State.HEADER
        self._line = bytearray()
        self._remaining = 0  # of the current chunk's data
        self._claimed = ""  # the current chunk's signature
        self._hash = hashlib.sha256()
        self._total = 0
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_signature = ""
        self.trailers: dict[str, str] = {}

    @property
    def total(self) -> int:
        """Decoded bytes so far."""
        return self._total

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """The decoded payload pieces in *data* (views of it); :class:`S3AuthError` as soon as
        the framing is wrong, a chunk's signature does not match or the body overruns its
        declared length."""
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        out: list[memoryview] = []
        pos = 0
        end = len(view)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, end - pos)
                piece = view[pos:pos + take]
                if self._signed:
                    self._hash.update(piece)
                out.append(piece)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = _State.DATA_END
            elif state is _State.DONE:
                # Nothing may follow the body but line ends (some clients send one more).
                if any(b not in (0x0D, 0x0A) for b in view[pos:end]):
                    raise invalid_request("data after the end of the aws-chunked body")
                self._line += view[pos:end]
                if len(self._line) > 4:
                    raise invalid_request("data after the end of the aws-chunked body")
                pos = end
            else:
                pos = self._read_line(view, pos, end)
        return out

    def _read_line(self, view: memoryview, pos: int, end: int) -> int:
        """Accumulate one CRLF-terminated line (bounded) and act on it; returns the new pos."""
        chunk = bytes(view[pos:min(end, pos + MAX_LINE + 2)])
        nl = chunk.find(b"\n")
        if nl < 0:
            self._line += chunk
            if len(self._line) > MAX_LINE + 1:
                raise invalid_request("aws-chunked line too long")
            return pos + len(chunk)
        self._line += chunk[:nl + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) > MAX_LINE + 2 or not line.endswith(b"\r\n"):
            raise invalid_request("aws-chunked lines must end with CRLF and be short")
        self._on_line(line[:-2])
        return pos + nl + 1

    def _on_line(self, line: bytes) -> None:
        state = self._state
        if state is _State.DATA_END or state is _State.FINAL_END:
            if line:
                raise invalid_request("aws-chunked chunk data longer than its size")
            if state is _State.FINAL_END:
                self._state = _State.DONE
            else:
                self._check_chunk_signature()
                self._state = _State.HEADER
        elif state is _State.HEADER:
            self._on_header(line)
        elif state is _State.TRAILER:
            self._on_trailer(line)

    def _on_header(self, line: bytes) -> None:
        size_part, *extensions = line.split(b";")
        if not _SIZE_RE.fullmatch(size_part):
            raise invalid_request("aws-chunked chunk size is not hexadecimal")
        size = int(size_part, 16)
        claimed = ""
        for ext in extensions:
            name, _, value = ext.partition(b"=")
            if name.strip() == b"chunk-signature":
                claimed = value.strip().decode("ascii", "replace")
        if self._signed and not _SIG_RE.fullmatch(claimed):
            raise invalid_request("aws-chunked chunk without a valid chunk-signature")
        if size > self._expected_length - self._total:
            raise incomplete("a chunk carries the body past x-amz-decoded-content-length")
        self._claimed = claimed
        self._remaining = size
        self._total += size
        if size:
            self._state = _State.DATA
            return
        # The final chunk: its signature (of no data) now; then the trailer, or the end.
        self._check_chunk_signature()
        self._state = _State.TRAILER if self._with_trailer else _State.FINAL_END

    def _check_chunk_signature(self) -> None:
        digest = self._hash.hexdigest()
        self._hash = hashlib.sha256()
        if not self._signed:
            return
        expected = sign(self._key, chunk_string_to_sign(self._amz_date, self._scope,
                                                         self._previous, digest))
        if not hmac.compare_digest(expected.encode(), self._claimed.encode()):
            raise _bad_signature()
        self._previous = self._claimed

    def _on_trailer(self, line: bytes) -> None:
        if not line:
            self._end_trailer()
            return
        if len(self._trailer_lines) >= MAX_TRAILERS:
            raise invalid_request("too many aws-chunked trailers")
        name, colon, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise invalid_request("aws-chunked trailer line is not name:value")
        if name == _TRAILER_SIGNATURE:
            if not self._signed or self._trailer_signature:
                raise invalid_request("unexpected x-amz-trailer-signature")
            self._trailer_signature = value.strip()
            return
        if self._trailer_signature:
            raise invalid_request("a trailer after x-amz-trailer-signature")
        if name not in self._trailer_names:
            raise invalid_request(f"trailer {name} was not declared in x-amz-trailer")
        if name in self.trailers:
            raise invalid_request(f"trailer {name} given twice")
        self._trailer_lines.append((name, value.strip()))
        self.trailers[name] = value.strip()

    def _end_trailer(self) -> None:
        if self._signed:
            canonical = "".join(f"{n}:{v}\n" for n, v in self._trailer_lines)
            expected = sign(self._key, trailer_string_to_sign(
                self._amz_date, self._scope, self._previous,
                hashlib.sha256(canonical.encode("latin-1")).hexdigest()))
            if not _SIG_RE.fullmatch(self._trailer_signature) or not hmac.compare_digest(
                    expected.encode(), self._trailer_signature.encode()):
                raise S3AuthError("SignatureDoesNotMatch", 403, "The trailer signature we "
                                  "calculated does not match the signature you provided")
        missing = self._trailer_names - set(self.trailers)
        if missing:
            raise invalid_request(f"declared trailer {', '.join(sorted(missing))} was not sent")
        self._state = _State.DONE

    def finish(self) -> dict[str, str]:
        """The body ended: check it was whole; returns the trailers (lowercase names)."""
        if self._state is not _State.DONE:
            raise incomplete()
        if self._total != self._expected_length:
            raise incomplete("You did not provide the number of bytes specified by the "
                             "x-amz-decoded-content-length HTTP header")
        return dict(self.trailers)
