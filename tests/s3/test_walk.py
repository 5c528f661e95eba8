"""The gateway's listing walk (prefix, delimiter, max-keys, continuation) over a backend whose
pages are small, against a direct computation of what S3 lists."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st

from hdsd.s3 import Gateway

KEYS = st.lists(st.text(alphabet="ab/", min_size=1, max_size=5), unique=True, max_size=30)


class _Pages:
    """list(): keys after *after* with *prefix*, *page* at a time, ``next`` = the last one."""

    def __init__(self, keys: list[str], page: int) -> None:
        self.keys = sorted(keys)
        self.page = page

    async def list(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                   versions: bool) -> tuple[list[dict[str, Any]], str | None]:
        found = [k for k in self.keys if k > after and k.startswith(prefix)]
        page = found[:min(limit, self.page)]
        more = len(found) > len(page)
        return [{"key": k} for k in page], (page[-1] if more else None)


def _expected(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    out: list[str] = []
    for k in sorted(keys):
        if not k.startswith(prefix):
            continue
        cut = k.find(delimiter, len(prefix)) if delimiter else -1
        item = k[:cut + len(delimiter)] if cut >= 0 else k
        if item not in out:
            out.append(item)
    return out


@given(KEYS, st.sampled_from(["", "a", "a/", "b"]), st.sampled_from(["", "/"]),
       st.integers(1, 5), st.integers(1, 4))
def test_walk_pages_match_a_direct_listing(keys: list[str], prefix: str, delimiter: str,
                                           max_keys: int, page: int) -> None:
    gateway = Gateway(_Pages(keys, page), None, region="us-east-1",  # type: ignore[arg-type]
                      lookup=lambda key_id: None)

    async def walk_all() -> list[str]:
        seen: list[str] = []
        position = ""
        for _ in range(100):
            contents, prefixes, truncated, position = await gateway._walk(
                "t", "b", prefix, delimiter, position, max_keys)
            assert len(contents) + len(prefixes) <= max_keys
            seen += [c["key"] for c in contents] + prefixes
            if not truncated:
                return seen
        raise AssertionError("the walk did not end")

    got = trio.run(walk_all)
    # Within a page contents and prefixes come apart; across pages everything is in order.
    assert sorted(got) == _expected(keys, prefix, delimiter)
    assert len(got) == len(set(got))
