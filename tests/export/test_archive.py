"""The archive's path encoding is reversible, collision-free and safe to extract."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import ArchiveError
from hdsd.client import _archive as A

# Keys as the node accepts them: 1-1024 UTF-8 bytes, no NUL; slashes, dots, '@' and '%' likely.
_pieces = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                  max_size=6) | st.sampled_from(["/", ".", "..", "@", "%", " ", "@versions",
                                                 "@empty", "%2F", "a/"])
keys = st.lists(_pieces, min_size=1, max_size=12).map("".join).filter(bool)


@given(keys)
def test_key_paths_round_trip(key: str) -> None:
    path = A.encode_key_path(key)
    assert A.decode_key_path(path) == key
    # As docs/export-format.md tells a reader without hdsd to decode it.
    assert "/".join("" if s == "@empty" else unquote(s, errors="strict")
                    for s in path.split("/")) == key


@given(keys)
def test_each_segment_is_percent_encoded_as_the_format_says(key: str) -> None:
    # docs/export-format.md: UTF-8, every byte but A-Z a-z 0-9 - _ . ~ as %XX (upper case), a
    # leading '.' too, an empty segment as @empty (plain segments take a shortcut: same bytes).
    def reference(segment: str) -> str:
        if not segment:
            return "@empty"
        out = quote(segment, safe="")
        return "%2E" + out[1:] if out.startswith(".") else out
    assert A.encode_key_path(key) == "/".join(reference(s) for s in key.split("/"))


@given(keys)
def test_paths_are_safe_to_extract(key: str) -> None:
    path = A.object_path("bucket", key, "0000019a2b3c4d5e.dc1-n1")
    segments = path.split("/")
    assert all(s and s not in (".", "..") and not s.startswith(".") for s in segments)
    assert path.isascii() and not any(c in path for c in "\\\n\t ")
    # The key's own segments never take the reserved names.
    assert all(not s.startswith("@") for s in A.encode_key_path(key).split("/") if s != "@empty")


@given(keys, keys)
def test_distinct_keys_never_share_an_object_path(a: str, b: str) -> None:
    if a != b:
        va, vb = A.object_path("b", a, "v1.n"), A.object_path("b", b, "v1.n")
        assert va != vb
        # Nor is one key's version file a directory of another key.
        assert not vb.startswith(va + "/") and not va.startswith(vb + "/")


def test_examples_are_readable() -> None:
    assert A.object_path("scans", "2026/ct-001.dcm", "01a2.dc1") == \
        "objects/scans/2026/ct-001.dcm/@versions/01a2.dc1"
    assert A.encode_key_path("a b/é/../.x//") == "a%20b/%C3%A9/%2E./%2Ex/@empty/@empty"


@pytest.mark.parametrize(("doc", "why"), [
    ({"format": "tar"}, "not an hdsd export"),
    ({"format": A.FORMAT, "format_version": 99}, "not supported"),
    ({"format": A.FORMAT, "format_version": 1, "tenant": "t"}, "cluster"),
])
def test_bad_headers_are_refused(doc: dict[str, object], why: str) -> None:
    with pytest.raises(ArchiveError, match=why):
        A.check_header(doc)


def test_bad_lines_are_refused() -> None:
    with pytest.raises(ArchiveError, match="line 3 is not valid JSON"):
        A.parse_line(b"{nope", "line 3")
    entry = {"bucket": "b", "key": "k", "version": "v", "created": "", "hlc": 1, "size": 1,
             "deleted": False, "metadata": {}, "content_id": "", "sha256": "0" * 64,
             "path": "objects/b/elsewhere/@versions/v"}
    with pytest.raises(ArchiveError, match="line 4: path"):
        A.check_entry(entry, 4)
    with pytest.raises(ArchiveError, match="line 5: size"):
        A.check_entry({**entry, "size": "1"}, 5)
