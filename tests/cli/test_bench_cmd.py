"""`hdsd bench sync` outside a source checkout says so in one line and exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hdsd.cli import _bench
from hdsd.cli._main import main


def test_bench_sync_without_a_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What a wheel install looks like: no bench/ beside the package.
    monkeypatch.setattr(_bench, "_SCRIPT", tmp_path / "bench" / "sync_latency.py")
    result = CliRunner().invoke(main, ["bench", "sync", "--quick"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "hdsd: error: hdsd bench sync needs a source checkout of hdsd (the benchmark is not "
        "installed with the package): from a checkout, run `pip install -e .` and try again, "
        "or `python bench/sync_latency.py`"]


def test_bench_sync_finds_the_script_of_this_checkout() -> None:
    assert _bench._SCRIPT.is_file()
    assert _bench._SCRIPT == Path(__file__).resolve().parents[2] / "bench" / "sync_latency.py"
