"""At first start each node waits for the other quietly: one line about the peer it cannot
reach yet, no WARNING, and a line when it connects — not a warning per retry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.cluster import NodeProcess, init_cluster

pytestmark = pytest.mark.e2e

ALONE_S = 8.0  # several repair, catalog sync and rebuild retries, well under the warning delay


def test_first_start_waits_for_the_other_node_quietly(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    first = NodeProcess(tmp_path / "dc1-n1" / "node.toml").start()
    second = NodeProcess(tmp_path / "dc2-n1" / "node.toml")
    try:
        time.sleep(ALONE_S)
        second.start()
        deadline = time.monotonic() + 60
        while not any("event=peer_connected" in line and "peer=dc2-n1" in line
                      for line in first.stderr_lines):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.2)
        time.sleep(2)  # the rounds that follow the connection
    finally:
        for node in (second, first):
            if node.alive:
                node.stop()
    log = list(first.stderr_lines)
    assert not [line for line in log if "level=WARNING" in line], first.log()
    # The audit continuity check ends in a verdict once dc2 answers, even when it answered only
    # after dc1 had stopped waiting for it.
    assert [line for line in log if "event=audit_continuity" in line and "state=new" in line], \
        first.log()
    joined = next(i for i, line in enumerate(log)
                  if "event=peer_connected" in line and "peer=dc2-n1" in line)
    assert "unreachable_s=" in log[joined], first.log()
    # (dc2 stops first at the end: dc1 then says it once more, which is news.)
    unreachable = [line for line in log[:joined] if "event=peer_unreachable" in line]
    assert len(unreachable) == 1 and "peer=dc2-n1" in unreachable[0], first.log()
    assert not [line for line in second.stderr_lines if "level=WARNING" in line], second.log()
