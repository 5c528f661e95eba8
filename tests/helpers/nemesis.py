"""A seeded fault schedule for a :class:`~tests.helpers.grid.Grid`, and its runner.

The schedule is drawn up front from ``random.Random(seed)`` and printed, so a failing run is
replayed by its seed. Faults come one after another, each healed before a quiet gap: kill -9 of
a node or of a whole site (restarted after the fault's duration), SIGSTOP of a node or of a
site (SIGCONT after it), inter-site cuts (both ways or toward one site), connection resets
(new connections refused until the heal), a slow link, and a cut during which a node is killed.

Faults that separate the sites end with an **isolation check**: before the heal, the links are
cut (if the fault had not cut them), every node is brought back behind the cut, and the caller's
``isolated`` callback runs while each site is alone. Nothing crosses between the sites then, so
no hint replay or reconciliation can bring a site a version after the fact: a version
acknowledged under ``each-site`` must already be in both. Under ``local`` the check follows
every fault (a version acknowledged there must be in the site that acknowledged it, whatever
the fault was).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tests.helpers.grid import SITES, Grid

KINDS = {  # kind -> weight
    "kill_node": 3,
    "kill_site": 2,
    "pause_node": 2,
    "pause_site": 1,
    "cut": 3,
    "cut_toward": 2,
    "reset": 2,
    "slow_link": 1,
    "cut_and_kill": 2,
}
# Faults after which the sites are checked alone, before the heal.
ISOLATING = frozenset({"kill_site", "pause_site", "cut", "cut_toward", "reset", "cut_and_kill"})


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    target: str  # a node, a site, or "" (every inter-site link)
    duration: float  # seconds the fault lasts before its heal
    gap: float  # quiet seconds after the heal
    delay: float = 0.0  # slow_link: one-way delay added

    def __str__(self) -> str:
        extra = f" delay={self.delay:.3f}" if self.kind == "slow_link" else ""
        return (f"{self.kind:<12} {self.target or 'all-links':<9} for {self.duration:4.1f} s, "
                f"then {self.gap:3.1f} s quiet{extra}")


def schedule(seed: int, seconds: float, nodes: list[str]) -> list[Fault]:
    """Faults whose durations and gaps add up to at least *seconds*."""
    rng = random.Random(seed)
    kinds, weights = zip(*KINDS.items(), strict=True)
    out: list[Fault] = []
    total = 0.0
    while total < seconds:
        kind = rng.choices(kinds, weights)[0]
        if kind in ("kill_node", "pause_node", "cut_and_kill"):
            target = rng.choice(nodes)
        elif kind in ("kill_site", "pause_site", "cut_toward"):
            target = rng.choice(SITES)
        else:
            target = ""
        duration = round(rng.uniform(1.0, 5.0), 1)
        gap = round(rng.uniform(0.5, 2.5), 1)
        delay = round(rng.uniform(0.02, 0.3), 3) if kind == "slow_link" else 0.0
        out.append(Fault(kind, target, duration, gap, delay))
        total += duration + gap
    return out


def run(grid: Grid, faults: list[Fault], log: list[str],
        isolated: Callable[[Fault], None] | None = None,
        isolate: frozenset[str] = ISOLATING) -> Counter[str]:
    """Apply every fault of *faults* in order, each healed before the next starts (and before
    this returns). *isolated* runs at the end of each fault whose kind is in *isolate*
    (default: those that separate the sites), every node up and the sites cut apart. Restarts
    and checks take real time on top of the schedule's: what is applied depends on the seed
    only, not on the machine's speed."""
    start = time.monotonic()
    applied: Counter[str] = Counter()
    for fault in faults:
        log.append(f"{time.monotonic() - start:7.2f} s  {fault}")
        _apply(grid, fault, isolated if fault.kind in isolate else None)
        applied[fault.kind] += 1
        time.sleep(fault.gap)
    return applied


def _apply(grid: Grid, fault: Fault, isolated: Callable[[Fault], None] | None) -> None:
    site_nodes = grid.sites.get(fault.target, [])
    try:
        if fault.kind == "kill_node":
            grid.kill(fault.target)
            time.sleep(fault.duration)
        elif fault.kind == "kill_site":
            grid.kill(*site_nodes)
            time.sleep(fault.duration)
        elif fault.kind == "pause_node":
            grid.pause(fault.target)
            time.sleep(fault.duration)
        elif fault.kind == "pause_site":
            for n in site_nodes:
                grid.pause(n)
            time.sleep(fault.duration)
        elif fault.kind == "cut":
            grid.link("blackhole")
            time.sleep(fault.duration)
        elif fault.kind == "cut_toward":
            grid.link("blackhole", toward=fault.target)
            time.sleep(fault.duration)
        elif fault.kind == "reset":
            grid.link("reset")
            time.sleep(fault.duration)
        elif fault.kind == "slow_link":
            grid.link("set_delay", fault.delay)
            time.sleep(fault.duration)
        elif fault.kind == "cut_and_kill":
            grid.link("blackhole")
            time.sleep(fault.duration / 2)
            grid.kill(fault.target)
            time.sleep(fault.duration / 2)
        else:
            raise AssertionError(f"unknown fault {fault.kind}")
        if isolated is not None:
            if fault.kind != "reset":  # resetting refuses new connections: already apart
                grid.link("blackhole")
            for name in list(grid.paused):
                grid.resume(name)
            grid.start()
            isolated(fault)
    finally:
        grid.heal_all()
