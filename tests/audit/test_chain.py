"""The chain catches every kind of tampering, at the right record."""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import AuditTampered
from hdsd.audit import AuditRecord, read_records, verify_log
from hdsd.audit._format import HEADER
from hdsd.audit._verify import list_segments

from ._util import copy_log, frame_map, make_log, rewrite

N = 40
SEGMENT = 2048  # a few segments: the cut between them is checked too


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("audit") / "audit"
    audit = make_log(directory, N, segment_bytes=SEGMENT)
    return directory, audit.verify_key


def test_intact_log_verifies(original: tuple[Path, bytes]) -> None:
    directory, key = original
    report = verify_log(directory, key)
    assert report.first_seq == 1
    assert report.records == N
    assert report.segments > 2
    assert report.last_seq == N + report.checkpoints


def _expect(directory: Path, key: bytes, seq: int) -> AuditTampered:
    with pytest.raises(AuditTampered) as info:
        verify_log(directory, key)
    assert info.value.seq == seq, str(info.value)
    return info.value


@given(data=st.data())
def test_any_single_byte_edit_is_caught_at_its_record(original: tuple[Path, bytes],
                                                      data: st.DataObject) -> None:
    src, key = original
    ranges = frame_map(src)
    path, start, end, seq = data.draw(st.sampled_from(ranges))
    offset = data.draw(st.integers(start, end - 1))
    flip = data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as tmp:
        directory = copy_log(src, Path(tmp) / "audit")
        target = directory / path.name
        raw = bytearray(target.read_bytes())
        raw[offset] ^= flip
        target.write_bytes(bytes(raw))
        _expect(directory, key, seq)


@given(data=st.data())
def test_a_deleted_record_is_named(original: tuple[Path, bytes], data: st.DataObject) -> None:
    src, key = original
    ranges = [r for r in frame_map(src) if r[1] > 0][:-1]  # not the final checkpoint
    path, start, end, seq = data.draw(st.sampled_from(ranges))
    with tempfile.TemporaryDirectory() as tmp:
        directory = copy_log(src, Path(tmp) / "audit")
        target = directory / path.name
        raw = target.read_bytes()
        target.write_bytes(raw[:start] + raw[end:])
        error = _expect(directory, key, seq)
        assert "missing" in error.message


@given(data=st.data())
def test_two_swapped_records_are_named(original: tuple[Path, bytes], data: st.DataObject) -> None:
    src, key = original
    frames = [r for r in frame_map(src) if r[1] > 0]
    pairs = [(a, b) for a, b in itertools.pairwise(frames) if a[0] == b[0]]
    (path, s1, e1, seq), (_, s2, e2, _) = data.draw(st.sampled_from(pairs))
    with tempfile.TemporaryDirectory() as tmp:
        directory = copy_log(src, Path(tmp) / "audit")
        target = directory / path.name
        raw = target.read_bytes()
        target.write_bytes(raw[:s1] + raw[s2:e2] + raw[s1:e1] + raw[e2:])
        error = _expect(directory, key, seq)
        assert "reordered" in error.message


def test_forged_checkpoint_signature_is_caught(original: tuple[Path, bytes],
                                              tmp_path: Path) -> None:
    src, key = original
    directory = copy_log(src, tmp_path / "audit")
    forger = nacl.signing.SigningKey.generate()
    edited: list[int] = []

    def change(record: AuditRecord) -> AuditRecord:
        if record.kind == "request" and record.seq == 3:
            edited.append(record.seq)
            return dataclasses.replace(record, tenant="someone-else")
        return record

    # The forger edits record 3 and recomputes every hash; only the signatures betray it.
    rewrite(directory, change, signer=forger)
    assert edited == [3]
    first_checkpoint = next(r for r in read_records(src) if r.kind == "checkpoint").seq
    error = _expect(directory, key, first_checkpoint)
    assert "signature" in error.message
    # With the forger's key the forged log is self-consistent: pinning the key is what counts.
    verify_log(directory, bytes(forger.verify_key))


@given(data=st.data())
def test_a_truncated_tail_is_never_reported_signed(original: tuple[Path, bytes],
                                                   data: st.DataObject) -> None:
    """Cutting the newest segment leaves what a live or crashed node shows — an unsigned tail
    (see test_unsigned_tail) — never a fully signed log: the verdict says the signatures stop
    before the end. (A cut exactly after a checkpoint is undetectable locally: docs/audit.md.)"""
    src, key = original
    _, last = list_segments(src)[-1]
    size = last.stat().st_size
    cut = data.draw(st.integers(HEADER.size + 1, size - 1))
    whole = verify_log(src, key)
    with tempfile.TemporaryDirectory() as tmp:
        directory = copy_log(src, Path(tmp) / "audit")
        os.truncate(directory / last.name, cut)
        report = verify_log(directory, key)
        assert not report.fully_signed
        assert report.signed_seq < whole.signed_seq == whole.last_seq


def test_a_deleted_middle_segment_is_a_gap(original: tuple[Path, bytes], tmp_path: Path) -> None:
    src, key = original
    directory = copy_log(src, tmp_path / "audit")
    segments = list_segments(directory)
    first_seq, path = segments[1]
    path.unlink()
    error = _expect(directory, key, first_seq)
    assert "gap" in error.message
