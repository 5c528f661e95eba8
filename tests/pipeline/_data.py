"""Test data helpers: deterministic random, compressible and image-like bytes."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from hdsd.pipeline import ChunkCodec, TenantKeys

KINDS = ("random", "repetitive", "image")


def make_data(kind: str, size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "repetitive":
        block = rnd.randbytes(rnd.randint(1, 200))
        return (block * (size // len(block) + 1))[:size]
    # "image": a smooth 16-bit gradient with a little noise in the low byte, like a CT slice.
    out = bytearray(size)
    base = rnd.randrange(4096)
    for i in range(0, size - 1, 2):
        value = base + (i // 512) + rnd.randrange(4)
        out[i] = value & 0xFF
        out[i + 1] = (value >> 8) & 0x0F
    if size % 2:
        out[-1] = rnd.randrange(256)
    return bytes(out)


def data_strategy(max_size: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        make_data,
        st.sampled_from(KINDS),
        st.integers(0, max_size),
        st.integers(0, 2**32),
    )


def codec_for(tenant: str = "hospital-a", **kwargs: int) -> ChunkCodec:
    # Fixed keys so derandomized CI runs are reproducible.
    keys = TenantKeys(tenant, data_key=bytes([1]) * 32, dedup_key=bytes([2]) * 32)
    return ChunkCodec(keys, **kwargs)
