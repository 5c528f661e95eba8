"""bench/chunk_path_bench.py runs its stages (one round each) and reports every one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_chunk_path_bench_measures_every_stage(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import chunk_path_bench

    out = tmp_path / "chunk_path.json"
    monkeypatch.setattr(sys, "argv", ["chunk_path_bench", "--rounds", "1", "--json", str(out)])
    chunk_path_bench.main()
    results = json.loads(out.read_text())["results"]
    assert {name.split(" (")[0] for name in results} == {
        "store write", "store encode", "store read", "wire send", "wire receive",
        "reply send", "reply receive"}
    assert all(ms > 0 for ms in results.values())
