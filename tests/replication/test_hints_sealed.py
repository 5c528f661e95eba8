"""Hints keep bucket and key sealed under the tenant's key; a shredded tenant's hints come
back nameless (replay drops them)."""

from __future__ import annotations

from pathlib import Path

from hdsd.replication import HintStore
from hdsd.store import Version
from tests.helpers.sealing import TestSealing


def _v(tenant: str) -> Version:
    return Version(tenant, "patient-31-morel", "irm/patient-31-morel.dcm", 5, "n1", size=3,
                   content_hash=b"h" * 32)


def test_hint_names_are_sealed_and_opened_back(tmp_path: Path) -> None:
    sealing = TestSealing()
    path = tmp_path / "hints.sqlite"
    hints = HintStore(path, sealing)
    hints.add(["dc2-n1"], [_v("t"), _v("gone")])
    [a, b] = hints.pending("dc2-n1")
    assert (a.bucket, a.key, a.hlc, a.node) == ("patient-31-morel", "irm/patient-31-morel.dcm",
                                                5, "n1")
    sealing.shred("gone")
    [a, b] = hints.pending("dc2-n1")
    assert a.bucket == "patient-31-morel" and (b.bucket, b.key) == (None, None)
    hints.remove([a.id, b.id])
    hints.close()
    for f in tmp_path.iterdir():
        assert b"patient-31" not in f.read_bytes(), f
