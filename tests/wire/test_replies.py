"""The typed reply bodies: every request names one, docs/wire.md documents each, and a received
body is checked against it (a typing and validation layer: the bytes do not change)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from hdsd import InvalidRequest, ProtocolError
from hdsd.wire import (
    MESSAGE_TYPES,
    UNSENT,
    AuditShip,
    FetchChunk,
    FetchChunks,
    GetRequest,
    ListRequest,
    PutStart,
    Replicate,
    Reply,
    Request,
    S3KeyList,
    StatRequest,
    TenantCreate,
    VersionInfo,
)
from hdsd.wire._messages import reply_type
from hdsd.wire._registry import decode_body, encode_body

_DOC = Path(__file__).parents[2] / "docs" / "wire.md"
_INFO: dict[str, Any] = {"bucket": "b", "key": "k", "version": "0000000000000001.n1", "hlc": 1,
                         "node": "n1", "size": 3, "content_hash": "ab", "deleted": False,
                         "metadata": {"a": "b"}}


def _requests() -> list[type[Request[Any]]]:
    return [t.cls for t in MESSAGE_TYPES if issubclass(t.cls, Request)]


def _is_info(td: Any) -> bool:
    return set(get_type_hints(VersionInfo)) <= set(get_type_hints(td))


def _fields(td: Any) -> set[str]:
    """The fields of *td* a reader must find documented: its own, and those of the maps it
    lists (version info is documented once, above the table)."""
    out: set[str] = set()
    for name, tp in get_type_hints(td).items():
        out.add(name)
        inner = get_args(tp)[0] if get_origin(tp) is list else tp
        if is_typeddict(inner) and not _is_info(inner):
            out |= _fields(inner)
    return out


def _doc_rows() -> dict[str, str]:
    text = _DOC.read_text()
    section = text[text.index("### Reply bodies, per request"):
                   text.index("**Listings page by bytes.**")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            for name in cells[0].split(", "):
                rows[name] = line
    return rows


def test_every_request_names_its_reply_type() -> None:
    for cls in _requests():
        tp = reply_type(cls)
        assert is_typeddict(tp) or tp == dict[str, Any], cls


@pytest.mark.parametrize("cls", _requests(), ids=lambda c: c.__name__)
def test_every_reply_is_documented_field_by_field(cls: type[Request[Any]]) -> None:
    rows = _doc_rows()
    assert cls.__name__ in rows, f"docs/wire.md has no reply row for {cls.__name__}"
    row = rows[cls.__name__]
    tp = reply_type(cls)
    name = "NodeStatus" if tp == dict[str, Any] else tp.__name__
    assert f"| `{name}` |" in row, f"{cls.__name__}: the row should name `{name}`"
    if name == "NodeStatus":
        return
    fields = _fields(tp)
    if _is_info(tp):  # "version info" stands for those
        fields -= set(get_type_hints(VersionInfo))
    if {"applied_on", "pending"} <= fields and "applied" in row:
        fields -= {"applied_on", "pending"}
    missing = sorted(f for f in fields if f"`{f}`" not in row)
    assert not missing, f"{cls.__name__}: docs/wire.md does not describe {missing}"


def test_a_well_formed_body_is_returned_as_is_unknown_keys_kept() -> None:
    request = StatRequest(UNSENT, "b", "k", None)
    body = {**_INFO, "later": [1, 2]}
    assert request.decode_reply(body) is body
    assert PutStart(UNSENT, b"r" * 16, "b", "k", 3, {}, None).decode_reply(
        {**_INFO, "replayed": True})["replayed"] is True


@pytest.mark.parametrize(("body", "field"), [
    ({k: v for k, v in _INFO.items() if k != "hlc"}, "hlc: missing"),
    ({**_INFO, "size": True}, "size: expected int, got bool"),  # a flag is not a size
    ({**_INFO, "metadata": {"a": 1}}, "metadata['a']"),
    ({**_INFO, "replayed": "yes"}, "replayed"),  # optional, but typed when present
])
def test_a_malformed_body_is_a_protocol_error_naming_the_field(body: dict[str, Any],
                                                                field: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(field)) as info:
        StatRequest(UNSENT, "b", "k", None).decode_reply(body)
    assert "StatRequest" in str(info.value)


def test_nested_rows_optional_fields_and_literals_are_checked() -> None:
    listing = ListRequest(UNSENT, "b", "", "", 10, False)
    assert listing.decode_reply({"entries": [_INFO], "next": None})["next"] is None
    with pytest.raises(ProtocolError, match=r"entries\[1\]\.key: missing"):
        listing.decode_reply({"entries": [_INFO, {k: v for k, v in _INFO.items() if k != "key"}],
                              "next": None})
    row = {"access_key_id": "K" * 20, "tenant": "t", "role": "reader", "state": "active",
           "created_ms": 1, "by": "op", "revoked_ms": None, "revoked_by": None}
    keys = S3KeyList(UNSENT, "")
    assert keys.decode_reply({"node": "n1", "keys": [row]})["keys"][0] == row
    with pytest.raises(ProtocolError, match=r"keys\[0\]\.state: 'gone' is not one of"):
        keys.decode_reply({"node": "n1", "keys": [{**row, "state": "gone"}]})
    # An existing tenant's new quota: no creation fields, still well-formed.
    TenantCreate(UNSENT, "t", 5).decode_reply({
        "tenant": "t", "created": False, "state": "confirmed", "plan": "standard",
        "quota_bytes": 5, "applied_on": ["n1"], "pending": []})
    assert GetRequest(UNSENT, "b", "k", None, None, None).decode_reply(
        {**_INFO, "start": 0, "end": 3})["end"] == 3
    assert FetchChunk(UNSENT, "l", "t", b"c" * 32).decode_reply({"payload": b"x"})
    chunks = FetchChunks(UNSENT, "l", [["t", b"c" * 32]])
    assert chunks.decode_reply({"sizes": [3]})["sizes"] == [3]
    with pytest.raises(ProtocolError, match=r"sizes\[0\]: expected int"):
        chunks.decode_reply({"sizes": ["3"]})
    with pytest.raises(ProtocolError, match="hash: expected bytes, got str"):
        AuditShip(UNSENT, "l", "n1", b"k" * 32, 0, b"h" * 32, []).decode_reply(
            {"seq": 1, "hash": "00"})


def test_with_rid_stamps_only_the_rid_and_the_frame_is_unchanged() -> None:
    unsent = PutStart(UNSENT, b"r" * 16, "b", "k", 3, {"m": "v"}, None)
    sent = unsent.with_rid(7)
    assert sent == PutStart(7, b"r" * 16, "b", "k", 3, {"m": "v"}, None)
    assert unsent.rid == UNSENT  # the unsent request is untouched (it may be sent again)
    assert decode_body(*encode_body(sent))[0] == sent
    for bad in (1 << 32, -1, True, 7.0):
        with pytest.raises(InvalidRequest, match="rid"):
            unsent.with_rid(bad)  # type: ignore[arg-type]
    # Every field is copied (a default one too), none is built again.
    retried = PutStart(UNSENT, b"r" * 16, "b", "k", None, {}, None, retry=True).with_rid(9)
    assert retried == PutStart(9, b"r" * 16, "b", "k", None, {}, None, retry=True)
    versions = [{"t": "x"}]
    replicate = Replicate(UNSENT, "l1", [], versions, True).with_rid(5)
    assert replicate == Replicate(5, "l1", [], versions, True)
    assert replicate.versions is versions
    # The copy is whole because a request's whole state is its fields: every request class
    # is a slots dataclass (no __dict__ to carry anything else).
    for cls in (t.cls for t in MESSAGE_TYPES):
        if issubclass(cls, Request):
            slots = {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}
            assert {f.name for f in dataclasses.fields(cls)} <= slots
            assert "__dict__" not in slots, cls


def test_reply_bodies_are_plain_maps_on_the_wire() -> None:
    # The typed layer adds nothing to the frame: a Reply still carries the map as it is.
    body = StatRequest(UNSENT, "b", "k", None).decode_reply(dict(_INFO))
    assert decode_body(*encode_body(Reply(3, dict(body))))[0] == Reply(3, _INFO)
