"""Fixed-size chunking of a stream that arrives in pieces of any size."""

from __future__ import annotations

__all__ = ["DEFAULT_CHUNK_SIZE", "MAX_CHUNK_SIZE", "Chunker"]

DEFAULT_CHUNK_SIZE = 1 << 20
# The codec refuses payloads that declare more plaintext than this, so a payload can never make
# a reader allocate more; the chunker refuses to cut bigger chunks for the same reason.
MAX_CHUNK_SIZE = 1 << 26


class Chunker:
    """Cuts a stream fed in arbitrary pieces into chunks of exactly ``chunk_size`` bytes.

    Only the last chunk (returned by :meth:`finish`) may be shorter. Memory is bounded by one
    partial chunk plus the piece being fed. A chunker is single-use: after :meth:`finish`,
    :meth:`feed` and :meth:`finish` raise :class:`RuntimeError`.

    Every stream, even an empty one, yields at least one chunk: ``finish()`` returns ``b""`` when
    nothing at all was fed, so an empty blob is one empty chunk.
    """

    __slots__ = ("_buf", "_emitted", "_finished", "chunk_size")

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = chunk_size
        self._buf = bytearray()
        self._emitted = False
        self._finished = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add *data*; return the chunks it completed, in order (often none)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        size = self.chunk_size
        out: list[bytes] = []
        if not self._buf and len(data) == size and isinstance(data, bytes):
            # The common case of a source that already yields whole chunks: no copy.
            out.append(data)
        else:
            view = memoryview(data).cast("B")
            pos = 0
            if self._buf:
                pos = min(size - len(self._buf), len(view))
                self._buf += view[:pos]
                if len(self._buf) < size:
                    return out
                out.append(bytes(self._buf))
                self._buf.clear()
            while len(view) - pos >= size:
                out.append(bytes(view[pos : pos + size]))
                pos += size
            self._buf += view[pos:]
        if out:
            self._emitted = True
        return out

    def finish(self) -> bytes | None:
        """The last, partial chunk; ``None`` if the stream ended exactly on a chunk boundary
        (after at least one chunk), ``b""`` if the stream was empty."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if self._buf:
            rest = bytes(self._buf)
            self._buf = bytearray()
            return rest
        return None if self._emitted else b""
