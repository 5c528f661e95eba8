"""Free TCP ports for the benchmarks' and the tests' real processes on 127.0.0.1.

Standard library only: ``tests/helpers/cluster.py`` imports it too (one rule for both).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from pathlib import Path

# `hdsd init` puts a node's S3 gateway on its port + 80, and refuses a spec where that is another
# node's port on the same machine.
GATEWAY_OFFSET = 80


def free_ports(n: int, exclude: Collection[int] = ()) -> list[int]:
    """*n* distinct ports free now, each with its port + 80 (where ``hdsd init`` puts a node's
    S3 gateway) free too, none in *exclude* (ports already given to a configuration but not
    listened on yet: the bind test below cannot see them), never 80 apart.

    Drawn at random **below** the kernel's ephemeral range: a port the kernel hands out (bind to
    port 0) may be taken by any outgoing connection before the server binds it — the suite runs
    two test processes making thousands — and a node killed and restarted must bind it again.
    Below that range only another listener can take it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < n:
        port = rng.randrange(10_000, max(low - GATEWAY_OFFSET, 10_001))
        if port in exclude or any(abs(port - c) in (0, GATEWAY_OFFSET) for c in chosen):
            continue
        if all(_bindable(p) for p in (port, port + GATEWAY_OFFSET)):
            chosen.append(port)
    return chosen


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
