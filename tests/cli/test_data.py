"""The data commands (hdsd/cli/_data.py, _export.py): which of them tune the allocator."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hdsd.cli import _data
from hdsd.cli._main import main


@pytest.mark.parametrize(("args", "tuned"), [
    (["get", "b/k"], True),
    (["get", "b/k", "-o", "out"], True),
    (["get", "b/", "--to-dir", "d"], True),
    (["export", "t", "-"], True),
    (["put", "b/k", "-"], False),
    (["stat", "b/k"], False),
    (["ls", "b"], False),
])
def test_commands_receiving_bytes_tune_the_allocator_first(
        args: list[str], tuned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI owns its process: a get pays ~130 page faults per MiB read untuned. Replaced
    # here by a recorder (the real setting is process-wide and would leak into other tests);
    # the profile does not exist, so each command fails right after, on the client's start.
    calls: list[bool] = []
    monkeypatch.setattr(_data, "tune_allocator", lambda: calls.append(True) or True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--profile", str(tmp_path / "none.toml"), *args],
                                input=b"x")
    assert result.exit_code != 0  # reached the client, which found no profile
    assert "none.toml" in result.output
    assert calls == ([True] if tuned else [])
