"""The audit record of a client put (audit_request, which takes a short path for it, and
audit_put, that path, which a group of small puts calls directly): who, which names (sealed
under the client's tenant's key), which version, how many bytes, how it ended."""

from __future__ import annotations

from typing import Any, cast

import pytest

from hdsd.audit import ObservedSession, audit_put, audit_request
from hdsd.transport import Identity, WireSession
from hdsd.wire import PutStart

IDENT = Identity("client", "alice", None, "acme", "writer", "c")


class _Log:
    """What audit_request needs of an AuditLog: the name seal and record()."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.sealed: list[tuple[str, str, str]] = []

    def seal_names(self, owner: str, bucket: str, key: str) -> tuple[str, str]:
        self.sealed.append((owner, bucket, key))
        return f"sealed:{bucket}", f"id:{key}"

    def record(self, **fields: Any) -> None:
        self.records.append(fields)


@pytest.fixture
def log() -> _Log:
    return _Log()


def _observed(info: dict[str, Any] | None, bytes_in: int = 0) -> ObservedSession:
    observed = ObservedSession(cast(WireSession, object()))
    observed.info, observed.bytes_in = info, bytes_in
    return observed


def _put(size: int | None = 4096) -> PutStart:
    return PutStart(rid=1, request_id=bytes(16), bucket="b", key="patient/1", size=size,
                    metadata={}, policy=None)


CASES = [
    ("ok", {"size": 4096, "version": "v1"}, 0, (4096, "v1")),  # small: whole, no credit
    ("ok", {"size": 4096, "version": "v1"}, 8192, (8192, "v1")),
    ("quota_exceeded", None, 100, (100, "")),
    ("ok", {"size": "4096", "version": 7}, 0, (0, "")),  # mistyped info: not taken
    ("cancelled", {}, 0, (0, "")),
]


@pytest.mark.parametrize(("outcome", "info", "bytes_in", "recorded"), CASES)
def test_a_put_is_recorded_with_its_sealed_names_version_and_bytes(
        log: _Log, outcome: str, info: dict[str, Any] | None, bytes_in: int,
        recorded: tuple[int, str]) -> None:
    observed = _observed(info, bytes_in)
    observed.bytes_out = 3
    audit_request(log, IDENT, _put(), observed, outcome,  # type: ignore[arg-type]
                  "10.0.0.1:4000")
    assert log.records == [{
        "identity": "alice", "role": "writer", "tenant": "acme", "op": "PutStart",
        "bucket": "sealed:b", "key": "id:patient/1", "version": recorded[1],
        "bytes_in": recorded[0], "bytes_out": 3, "outcome": outcome, "peer": "10.0.0.1:4000"}]
    assert log.sealed == [("acme", "b", "patient/1")]  # under the client's tenant


@pytest.mark.parametrize(("outcome", "info", "bytes_in", "recorded"), CASES)
def test_a_group_s_put_gets_the_record_audit_request_makes(
        log: _Log, outcome: str, info: dict[str, Any] | None, bytes_in: int,
        recorded: tuple[int, str]) -> None:
    # put_group has no ObservedSession per put: it hands its reply's info and bytes over.
    observed = _observed(info, bytes_in)
    observed.bytes_out = 3
    audit_request(log, IDENT, _put(), observed, outcome,  # type: ignore[arg-type]
                  "10.0.0.1:4000")
    group = _Log()
    audit_put(group, IDENT, _put(), info, bytes_in, 3, outcome,  # type: ignore[arg-type]
              "10.0.0.1:4000")
    assert group.records == log.records
    assert group.sealed == log.sealed
    assert group.records[0]["bytes_in"] == recorded[0]
