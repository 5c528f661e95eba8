"""Scrub counts a damaged version record and goes on: one record whose names do not open is
what a scrub reports, never what ends it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from hdsd._packing import unpackb
from hdsd.repair._scrub import Scrubber
from hdsd.store import Store, replicated_version
from hdsd.store._sealed import seal_version
from tests.helpers.sealing import SEALING
from tests.store._util import inline_version
from tests.store.test_replicated_sealed import _sent


def test_a_record_whose_names_do_not_open_is_counted_and_the_scrub_goes_on(
        tmp_path: Path) -> None:
    good = [inline_version("t", "scans", f"ct/{i:03}.dcm", 10 + i, "dc1-n1", b"DICM" * 50)
            for i in range(3)]
    bad = good[1]
    with Store.open(tmp_path / "dc1", sealing=SEALING) as dc1, \
            Store.open(tmp_path / "dc2", sealing=SEALING) as dc2:
        sent = _sent(dc1, good)
        # The second version's names sealed for another record (another HLC): they pass the
        # replica's checks and fail to open when read (see tests/store/test_replicated_sealed).
        sent[1]["e"] = unpackb(seal_version(replace(bad, hlc=99), SEALING.seal_for("t")).body)["e"]
        dc2.commit_sync([replicated_version(m) for m in sent])
        scrubber = Scrubber(store=dc2, peers=None, layout_id="layout",  # type: ignore[arg-type]
                            sources=[], open_chunk=lambda *_: None, rate_bytes_s=1e12)
        report = trio.run(scrubber.run)  # (_sent runs trio itself: not a trio test)
    assert report.error is None  # (it was: "integrity: sealed names of tenant 't' do not open ...")
    assert report.versions_checked == 3
    assert report.damaged_version_records == 1
