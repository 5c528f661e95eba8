"""The writer: checkpoints by count and by time, crash recovery, retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hdsd import AuditTampered
from hdsd.audit import AuditLog, AuditSettings, read_records, verify_log
from hdsd.audit import _format as F
from hdsd.audit._chain import parse_segment
from hdsd.audit._verify import list_segments

from ._util import make_log

DAY_NS = 86_400 * 10**9


def _kinds(directory: Path) -> list[str]:
    return [r.kind for r in read_records(directory)]


def test_checkpoint_every_n_records(tmp_path: Path) -> None:
    make_log(tmp_path / "a", 12, checkpoint_records=5)
    kinds = _kinds(tmp_path / "a")
    assert kinds == ["request"] * 5 + ["checkpoint"] + ["request"] * 5 + ["checkpoint"] + \
        ["request"] * 2 + ["checkpoint"]


def test_checkpoint_after_t_seconds_without_more_records(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a", "n1", AuditSettings(checkpoint_s=0.05))
    try:
        audit.record("c", "reader", "t", "GetRequest", "b", "k", "", 0, 3, "ok", "?")
        deadline = time.monotonic() + 30  # generous: only bounds a hang, never asserted
        while audit.durable[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert audit.durable[0] == 2
    finally:
        audit.close()
    assert _kinds(tmp_path / "a") == ["request", "checkpoint", "checkpoint"]


def test_clean_close_signs_the_tail_and_reopen_continues(tmp_path: Path) -> None:
    first = make_log(tmp_path / "a", 3)
    second = make_log(tmp_path / "a", 2)
    assert first.verify_key == second.verify_key
    report = verify_log(tmp_path / "a", first.verify_key)
    assert report.records == 5 and report.last_seq == 7


def test_torn_last_frame_is_cut_and_the_rest_signed(tmp_path: Path) -> None:
    directory = tmp_path / "a"
    audit = make_log(directory, 4)
    _, last = list_segments(directory)[-1]
    parsed = parse_segment(last.read_bytes())
    final_offset = parsed.frames[-1][0]
    # The final checkpoint was being written when the power went: half of it reached the disk.
    raw = last.read_bytes()
    last.write_bytes(raw[:final_offset + 20])
    AuditLog(directory, "n1").close()
    report = verify_log(directory, audit.verify_key)
    assert report.records == 4
    assert _kinds(directory)[-2:] == ["checkpoint", "checkpoint"]  # recovery, then clean stop


def test_damage_before_the_tail_refuses_to_start(tmp_path: Path) -> None:
    directory = tmp_path / "a"
    make_log(directory, 4)
    _, last = list_segments(directory)[-1]
    raw = bytearray(last.read_bytes())
    raw[F.HEADER.size + 10] ^= 1
    last.write_bytes(bytes(raw))
    with pytest.raises(AuditTampered):
        AuditLog(directory, "n1")


def test_retention_prunes_whole_shipped_segments_and_verify_stays_green(tmp_path: Path) -> None:
    directory = tmp_path / "a"
    key = make_log(directory, 30, segment_bytes=1024).verify_key
    before = list_segments(directory)
    assert len(before) > 3

    def later() -> int:
        return time.time_ns() + 400 * DAY_NS

    # Nothing shipped yet: nothing may go, however old.
    AuditLog(directory, "n1", AuditSettings(segment_bytes=1024), clock_ns=later).close()
    assert list_segments(directory)[0] == before[0]
    # Shipped up to the middle: segments before that point go, whole.
    middle_seq = before[len(before) // 2][0]
    audit = AuditLog(directory, "n1", AuditSettings(segment_bytes=1024), clock_ns=later)
    audit.shipped_seq = middle_seq - 1
    audit._prune()
    audit.close()
    after = list_segments(directory)
    assert after[0][0] == middle_seq
    report = verify_log(directory, key)
    assert report.first_seq == middle_seq and report.last_seq > middle_seq
