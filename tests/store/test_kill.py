"""kill -9 of a process in the middle of a burst of commits: every acknowledged key survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from hdsd.store import Store
from tests.helpers.sealing import SEALING

from ._writer_script import payload

ROOT = Path(__file__).resolve().parents[2]


async def test_kill_9_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acked: list[str] = []
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.store._writer_script", str(tmp_path)],
            stdout=subprocess.PIPE, cwd=ROOT, env=env)
        assert proc.stdout is not None
        buffer = b""
        try:
            while len(acked) < 2000:
                data = await proc.stdout.receive_some()
                assert data, "the writer exited early"
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                acked.extend(line.decode() for line in lines)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    with Store.open(tmp_path, segment_bytes=64 << 10, sealing=SEALING) as store:
        for key in acked:
            (v,) = store.versions("t", "b", key)
            assert v.inline == payload(key)
        # Keys from more than one segment: the burst crossed rotations.
        assert store.statistics().segments > 1
