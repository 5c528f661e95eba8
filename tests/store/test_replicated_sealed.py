"""Versions replicated as their coordinator sealed them: the coordinator's commit gives the
maps it sends (``EncodedCommit.wire_versions``), a replica stores the record they carry when it
belongs to the version under its own key (``ReplicatedVersion``) and seals the names itself
otherwise; a node that predates this reads the same maps as the clear versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio

from hdsd._errors import IntegrityError
from hdsd._packing import unpackb
from hdsd.pipeline import TenantKeys, TenantNameSealing
from hdsd.store import Location, ReplicatedVersion, Store, Version, replicated_version
from hdsd.store._log import check_frame
from hdsd.store._sealed import SealedVersion, seal_version
from hdsd.wire import UNSENT, Replicate
from hdsd.wire._registry import decode_body, encode_body
from tests.helpers.sealing import SEALING, tenant_keys

from ._util import inline_version, tombstone


def _versions() -> list[Version]:
    v = replace(inline_version("t", "scans", "ct/001.dcm", 10, "dc1-n1", b"DICM" * 100,
                               request_id=b"r" * 16),
                metadata={"patient": "4242", "modality": "CT"})
    return [v,
            tombstone("t", "scans", "ct/002.dcm", 11, "dc1-n1"),
            Version("t", "scans", "ct/001.dcm", 12, "dc1-n1", 0, b"", purges=(5, "dc1-n1")),
            Version("t", "scans", "ct/003.dcm", 13, "dc1-n1", 0, b"",
                    retains=(9, "dc1-n1", 1 << 42))]


def _location(store: Store, v: Version) -> Location:
    store.has_chunk(v.tenant, b"\0" * 32)  # (waits until the index holds every commit)
    nid = store.name_id(v.tenant, v.bucket, v.key)
    loc = store._index.location_of(SealedVersion(v.tenant, b"", nid, v.hlc, v.node, b"",
                                                 False, b""))
    assert loc is not None
    return loc


def _stored_body(store: Store, v: Version) -> bytes:
    """The record body of *v* as the store's log holds it."""
    loc = _location(store, v)
    return bytes(check_frame("segment", loc.offset, store._pread(loc)).body)


def _sent(store: Store, versions: list[Version]) -> list[dict[str, Any]]:
    """What a coordinator holding *store* sends: its own copy committed, the maps of the
    versions through a Replicate frame and back (what the replica decodes)."""
    async def coordinator() -> list[dict[str, Any]]:
        encoded = store.encode_commit(versions)
        maps = encoded.wire_versions(versions)
        await store.start_encoded(encoded).wait()
        return maps

    code, body = encode_body(Replicate(UNSENT, "layout", [], trio.run(coordinator), False))
    msg, _ = decode_body(code, body)
    assert isinstance(msg, Replicate)
    return msg.versions


def test_the_replica_stores_the_bytes_its_coordinator_sealed(tmp_path: Path) -> None:
    versions = _versions()
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=SEALING) as dc2:
        sent = _sent(dc1, versions)
        records = [replicated_version(m) for m in sent]
        assert all(isinstance(r, ReplicatedVersion) for r in records)
        dc2.commit_sync(records)
        for v in versions:
            assert _stored_body(dc2, v) == _stored_body(dc1, v)  # not sealed a second time
        assert dc2.current("t", "scans", "ct/001.dcm") == dc1.current("t", "scans", "ct/001.dcm")
        assert dc2.versions("t", "scans", "ct/001.dcm")[0] == versions[0]
        assert dc2.list_current("t", "scans", include_deleted=True) == \
            dc1.list_current("t", "scans", include_deleted=True)
        assert dc2.find_request("t", b"r" * 16) == versions[0]


def test_a_node_that_predates_sealed_replication_reads_the_clear_versions(
        tmp_path: Path) -> None:
    # Such a node decodes the Replicate (its version maps are free-form maps) and reads each
    # version by its keys: the sealed ones are ignored, and it seals the names itself.
    versions = _versions()
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=SEALING) as old:
        sent = _sent(dc1, versions)
        assert [Version.from_wire(m) for m in sent] == versions
        old.commit_sync([Version.from_wire(m) for m in sent])
        for v in versions:
            assert _stored_body(old, v) != _stored_body(dc1, v)  # its own nonce
        assert old.versions("t", "scans", "ct/001.dcm")[0] == versions[0]


def test_versions_from_a_coordinator_that_predates_it_are_sealed_here(tmp_path: Path) -> None:
    versions = _versions()
    with Store.open(tmp_path, sealing=SEALING) as dc2:
        records = [replicated_version(v.to_wire()) for v in versions]
        assert records == versions  # plain versions: nothing sealed came with them
        dc2.commit_sync(records)
        assert dc2.versions("t", "scans", "ct/001.dcm")[0] == versions[0]
        assert unpackb(_stored_body(dc2, versions[0]))["y"] == \
            dc2.name_id("t", "scans", "ct/001.dcm")


def _other_keys(tenant: str) -> TenantKeys:
    keys = tenant_keys(tenant)
    return TenantKeys(tenant=tenant, data_key=blake3.blake3(b"another" + keys.data_key).digest(),
                      dedup_key=keys.dedup_key)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.pop(key)


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize("change", [
    _set("e", b"\0" * 10),  # names of another length than the clear ones sealed
    _set("e", "not bytes"),
    _set("y", b"\1" * 16),  # a name id that is not the clear names' here
    _set("g", b"\1" * 16),
    _drop("g"),
    _set("later", 1),  # a key this version does not know: kept out of the record
    # Clear metadata other than the sealed one (of another length: an equal length passes,
    # see _adopt — the coordinator takes both from one version, sealed_wire).
    _set("d", {"patient": "42", "modality": "CT"}),
], ids=["e-length", "e-type", "y", "g", "no-g", "unknown-key", "metadata"])
def test_sealed_names_that_do_not_belong_to_the_version_are_sealed_here(
        tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    v = _versions()[0]
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=SEALING) as dc2:
        [m] = _sent(dc1, [v])
        change(m)
        expected = Version.from_wire(m)
        dc2.commit_sync([replicated_version(m)])
        body = _stored_body(dc2, expected)
        assert body != _stored_body(dc1, v)
        assert dc2.versions("t", "scans", "ct/001.dcm") == [expected]
        assert unpackb(body).keys() == unpackb(_stored_body(dc1, v)).keys()


def test_a_replica_under_another_tenant_key_seals_the_names_with_its_own(tmp_path: Path) -> None:
    v = _versions()[0]
    other = TenantNameSealing(_other_keys)
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=other) as dc2:
        dc2.commit_sync([replicated_version(m) for m in _sent(dc1, [v])])
        assert dc2.versions("t", "scans", "ct/001.dcm") == [v]  # opens under its own key
        assert _stored_body(dc2, v) != _stored_body(dc1, v)


def test_names_sealed_for_another_record_are_caught_when_read_not_when_stored(
        tmp_path: Path) -> None:
    # The replica does not open what it keeps (that would cost what sealing does): names of
    # the right length sealed for another record (here another HLC) pass its checks, and
    # fail to open at the first read or scrub, which then says so.
    v = _versions()[0]
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=SEALING) as dc2:
        [m] = _sent(dc1, [v])
        m["e"] = unpackb(seal_version(replace(v, hlc=99), SEALING.seal_for("t")).body)["e"]
        dc2.commit_sync([replicated_version(m)])
        with pytest.raises(IntegrityError):
            dc2.versions("t", "scans", "ct/001.dcm")
        with pytest.raises(IntegrityError):
            dc2.check_record(_location(dc2, v))
