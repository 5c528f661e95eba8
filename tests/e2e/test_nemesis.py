"""The acknowledgement promise under real faults: what a user was told is stored is stored.

A 2x2 cluster of real processes (2 sites x 2 nodes, ``replicas_per_site = 2``, policy
``each-site``), inter-site links through fault proxies. Writers in both sites put (and
sometimes overwrite or delete) objects with the client's own retries on, and retry a refused
request themselves with the *same request id* a few times, as the error message tells users to.
Meanwhile a seeded nemesis kills nodes and sites (-9), pauses them (SIGSTOP/SIGCONT), cuts and
resets the inter-site links (``tests/helpers/nemesis.py``). An ack under ``each-site`` means
fsynced in both sites *at the time of the ack*, so:

0. at the end of every fault that separates the sites, before its heal (the links still cut,
   every node up again), each site must return every version acknowledged so far, byte-exact:
   no hint replay or reconciliation can have brought it there after the ack;
1. **before any repair**, after the last heal, each site alone (the other one killed) must
   return every acknowledged version, byte-exact;
2. with everything up, the live RPO (every node's ``status``) must drain to 0 by itself
   (hint replay, reconciliation on reconnect), and at RPO 0 nothing may be missing anywhere:
   both sites list the same version set, and the repair that follows moves nothing;
3. after ``hdsd repair --wait`` the sites list identical version sets holding every
   acknowledged version, each read back byte-exact from both sites, and no request stored more
   than one version.

The summary (ops, acks, refusals by error code, lost, acknowledged-but-missing-before-repair,
time to RPO 0 after the last heal) is printed as a ``NEMESIS {json}`` line and a table (``-s``
shows them), written to ``nemesis-<seed>.json`` in the test's temporary directory, and appended
to ``$HDSD_NEMESIS_REPORT`` when set.

**The ``local`` form** (``policy=local``). Under ``local`` an ack means fsynced at the site
that acknowledged it, and, when the other site had not confirmed, a durable hint for it written
before the ack; the other site gets the version later (hint replay, reconciliation). So checks
0 and 1 above do *not* hold under ``local`` (a site cut off, or killed, may lack what the other
acknowledged), and what is checked instead is:

0. at the end of *every* fault (the sites cut apart, every node up again), each acknowledged
   version is in the site that acknowledged it (the writer's: a client talks to its own site
   only), byte-exact — whatever the fault, kill -9 included;
1. after the last heal, with everything up, the live RPO drains to 0 by itself, at RPO 0 both
   sites list the same version set, and then each site alone (the other one killed) returns
   every acknowledged version byte-exact — all of it **before any repair**;
2. the repair that follows moves nothing, and 3. as above.

Its cluster is one node per site (one replica each), so that every write is the pair write,
whose `local` form stops waiting for the peer after a grace (``replication/_replicator.py``).

The CI form runs seed 2 under both policies: ``each-site`` with 30 s of scheduled faults
(about 90 s in all), ``local`` with 12 s (a cut with a kill -9 inside it, a kill -9 of each
site; under a minute in all). ``HDSD_NEMESIS_POLICY=local`` (or ``each-site``) runs one of
them. The long form: ``HDSD_NEMESIS_S=150 HDSD_NEMESIS_SEEDS=3`` (or ``--nemesis-seconds 150
--nemesis-seeds 3``), for either policy; seeds are a count (from ``HDSD_NEMESIS_SEED``, default
2) or a comma-separated list. ``HDSD_NEMESIS_RETRIES=0`` turns every retry off (a diagnosis:
is it the retry path?). ``HDSD_NEMESIS_REPLICAS=1`` runs with one replica per site, where a
coordinator is often not a replica of the key it writes (a node loss then refuses the writes
of its keys). ``HDSD_NEMESIS_NODES`` sets the nodes per site (default: 2 under ``each-site``,
1 under ``local``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import hdsd
from hdsd.client import Profile
from tests.helpers import nemesis
from tests.helpers.grid import SITES, Grid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "nemesis"
CI_SECONDS = {"each-site": 30.0, "local": 5.0}
POLICIES = ("each-site", "local")
# Seed 2's first 30 s: kill -9 of a node and of a site, SIGSTOP of a node and of a site,
# connection resets, a cut with a kill -9 inside it, a slow link.
CI_SEED = 2
WRITERS = 6
# A writer's pause between operations (uniform 0..THINK_S): bounds the number of operations
# (and the length of the checks) and leaves CPU to the nodes on a small machine.
THINK_S = 0.3
USER_ATTEMPTS = 4  # a user re-runs a refused command with the same request id, up to 3 times
# HDSD_NEMESIS_RETRIES=0: no retry at all (neither the client's nor the user's), to tell a
# failure of the retry path from any other.
RETRIES = os.environ.get("HDSD_NEMESIS_RETRIES", "1") != "0"
CLIENT_TIMEOUT = 10.0
NODE_WRITE_TIMEOUT = 3.0
RPO_TIMEOUT = 180.0
# Object sizes: mostly small (inline in the version record), some chunked.
SIZES = [(0, 2), (1, 3), (100, 20), (3000, 20), (16384, 5), (16385, 5), (70_000, 8),
         ((1 << 20) + 7, 2)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        raw = metafunc.config.getoption("nemesis_seeds", None) or \
            os.environ.get("HDSD_NEMESIS_SEEDS", "")
        if "," in raw:
            seeds = [int(s) for s in raw.split(",") if s.strip()]
        else:
            first = int(os.environ.get("HDSD_NEMESIS_SEED", CI_SEED))
            seeds = list(range(first, first + (int(raw) if raw else 1)))
        metafunc.parametrize("seed", seeds, ids=[f"seed{s}" for s in seeds])
    if "policy" in metafunc.fixturenames:
        raw = os.environ.get("HDSD_NEMESIS_POLICY", "")
        policies = [p.strip() for p in raw.split(",") if p.strip()] or list(POLICIES)
        assert set(policies) <= set(POLICIES), f"HDSD_NEMESIS_POLICY: one of {POLICIES}"
        metafunc.parametrize("policy", policies)


@pytest.fixture
def nemesis_seconds(request: pytest.FixtureRequest, policy: str) -> float:
    raw = request.config.getoption("nemesis_seconds", None) or \
        os.environ.get("HDSD_NEMESIS_S")
    return float(raw) if raw else CI_SECONDS[policy]


@dataclass(slots=True)
class Op:
    writer: int
    site: str
    kind: str  # "put" | "delete"
    key: str
    request_id: bytes
    size: int = 0
    digest: str = ""  # sha256 of the body (puts)
    outcome: str = "pending"  # "ack" | "refused"
    code: str = ""  # error code of the final refusal
    message: str = ""
    version: str = ""
    coordinator: str = ""  # the node named in the ack (the version's writer)
    replayed: bool = False
    attempts: int = 0  # user-level attempts (each with the client's own retries)

    def brief(self) -> str:
        return (f"{self.kind} {self.key} v={self.version} by {self.coordinator} via {self.site}"
                f"{' replayed' if self.replayed else ''} after {self.attempts} attempt(s)")


# -- writers -----------------------------------------------------------------------------------
async def _writer(w: int, grid: Grid, seed: int, stop: threading.Event, ops: list[Op]) -> None:
    rng = random.Random(f"{seed}/writer{w}")
    site = SITES[w % 2]
    profile = grid.rotated(site, w // 2)  # writers start on different nodes of their site
    sizes, weights = zip(*SIZES, strict=True)
    mine: list[str] = []  # keys this writer has put (acknowledged or not)
    seq = 0
    async with hdsd.AsyncClient(profile, site=site, timeout=CLIENT_TIMEOUT,
                                retries=3 if RETRIES else 0) as c:
        while not stop.is_set():
            seq += 1
            roll = rng.random()
            if mine and roll < 0.05:
                op = Op(w, site, "delete", rng.choice(mine), rng.randbytes(16))
                data = b""
            else:
                key = rng.choice(mine) if mine and roll < 0.2 else f"w{w}/{seq:06d}"
                size = rng.choices(sizes, weights)[0]
                data = rng.randbytes(size)
                op = Op(w, site, "put", key, rng.randbytes(16), size,
                        hashlib.sha256(data).hexdigest())
                mine.append(key)
            ops.append(op)
            await _perform(c, op, data)
            await trio.sleep(rng.uniform(0, THINK_S))


async def _perform(c: hdsd.AsyncClient, op: Op, data: bytes) -> None:
    attempts = USER_ATTEMPTS if RETRIES else 1
    for attempt in range(1, attempts + 1):
        op.attempts = attempt
        try:
            if op.kind == "put":
                info = await c.put(BUCKET, op.key, data, request_id=op.request_id,
                                   retry=attempt > 1)
            else:
                info = await c.delete(BUCKET, op.key, request_id=op.request_id,
                                      retry=attempt > 1)
        except hdsd.Unavailable as exc:  # QuorumNotReached, timeouts, lost connections
            op.outcome, op.code, op.message = "refused", exc.code, str(exc)
            if attempt < attempts:
                await trio.sleep(0.5 * 2 ** (attempt - 1))
            continue
        except hdsd.HdsdError as exc:  # not retryable: a definite refusal
            op.outcome, op.code, op.message = "refused", exc.code, str(exc)
            return
        assert info.key == op.key and info.deleted == (op.kind == "delete"), (info, op)
        if op.kind == "put":
            assert info.size == op.size, (info, op)
        # The version first: the fault thread may look at this op between the two lines.
        op.version, op.coordinator, op.replayed = info.version, info.node, info.replayed
        op.code, op.message = "", ""
        op.outcome = "ack"
        return


def _run_writers(grid: Grid, seed: int, stop: threading.Event, ops: list[Op],
                 failure: list[BaseException], bound: float) -> None:
    async def main() -> None:
        with trio.fail_after(bound):
            async with trio.open_nursery() as nursery:
                for w in range(WRITERS):
                    nursery.start_soon(_writer, w, grid, seed, stop, ops)
    try:
        trio.run(main)
    except BaseException as exc:  # surfaced by the test thread after the join
        failure.append(exc)


# -- checks ------------------------------------------------------------------------------------
async def _read_back(profiles: list[Profile], ops: list[Op], indices: list[int]
                     ) -> dict[int, str]:
    """Read the exact version each acknowledged op of *indices* names, through *profiles*
    (the nodes of one site, used in turn); return {index: what was wrong} for those that
    did not read back byte-exact. A read the node cannot serve now (a node just restarted,
    a timeout) is tried again: only a definite answer counts."""
    bad: dict[int, str] = {}
    limit = trio.Semaphore(8)

    async def check(c: hdsd.AsyncClient, i: int, op: Op) -> None:
        async with limit:
            for attempt in range(4):
                bad.pop(i, None)  # only the last attempt's verdict counts
                try:
                    if op.kind == "put":
                        data = await c.get(BUCKET, op.key, version=op.version)
                        if len(data) != op.size or hashlib.sha256(data).hexdigest() != op.digest:
                            bad[i] = f"different bytes ({len(data)} B, {op.size} B acknowledged)"
                    else:
                        known = await c.versions(BUCKET, op.key)
                        if not any(v.version == op.version and v.deleted for v in known):
                            bad[i] = "delete marker absent"
                    return
                except hdsd.Unavailable as exc:
                    bad[i] = f"{exc.code}: {exc}"
                    await trio.sleep(1 + attempt)
                except hdsd.HdsdError as exc:
                    bad[i] = f"{exc.code}: {exc}"
                    return
            # still unavailable after the attempts: reported as it is

    with trio.fail_after(900):
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(hdsd.AsyncClient(p, timeout=30))
                       for p in profiles]
            async with trio.open_nursery() as checks:
                for n, i in enumerate(indices):
                    checks.start_soon(check, clients[n % len(clients)], i, ops[i])
    return bad


_WARM_S = 60.0  # per node


async def _warm(profiles: list[Profile]) -> None:
    """Until a listing succeeds through each node: a listing asks every node of the site, so
    each node's links to the others are up. Just after a restart they may still be in their
    reconnection backoff, and a node whose peer did not answer reads from its own disk only
    (a version held by the other node alone would then look missing)."""
    for profile in profiles:
        async with hdsd.AsyncClient(profile, timeout=30, retries=0) as c:
            with trio.move_on_after(_WARM_S):
                while True:
                    try:
                        await c.list(BUCKET, limit=1)
                        break
                    except hdsd.Unavailable:
                        await trio.sleep(0.5)
                    except hdsd.NotFound:
                        break  # nothing written yet: nothing to read either


async def _read_back_settled(profiles: list[Profile], ops: list[Op], indices: list[int],
                             stats: Counter[str] | None = None) -> dict[int, str]:
    """:func:`_read_back` with the site's links up, and those that failed read once more
    (counted in *stats*: a read answered "not found" by a node whose link to the version's
    other replica had dropped is a gap users meet too)."""
    await _warm(profiles)
    first = await _read_back(profiles, ops, indices)
    bad = first
    if first:  # a link may have dropped meanwhile (a node under load): a second look
        await _warm(profiles)
        bad = await _read_back(profiles, ops, sorted(first))
    if stats is not None:
        stats["found_on_second_look"] += len(first) - len(bad)
    return bad


class Verifier:
    """Reads acknowledged versions back from each site alone and keeps what was missing."""

    def __init__(self, grid: Grid, ops: list[Op], log: list[str], policy: str) -> None:
        self.grid = grid
        self.ops = ops
        self.log = log
        self.policy = policy
        self.checked: set[int] = set()
        self.missing: dict[int, list[str]] = {}  # op index -> "site, when: why"
        self.isolation_checks = 0
        self.stats: Counter[str] = Counter()

    def site_alone(self, site: str, indices: list[int], when: str) -> int:
        profiles = [self.grid.pinned(n) for n in self.grid.sites[site]]
        bad = trio.run(_read_back_settled, profiles, self.ops, indices, self.stats)
        for i, why in bad.items():
            self.missing.setdefault(i, []).append(f"{site} {when}: {why}")
        return len(bad)

    def isolated(self, fault: nemesis.Fault) -> None:
        """The nemesis callback: the sites are cut apart, every node is up. Every ack not
        checked yet is read back from each site (under ``local``: from the site that
        acknowledged it)."""
        # The writers keep appending: a snapshot, and only ops whose outcome is final.
        todo = [i for i, op in enumerate(list(self.ops))
                if op.outcome == "ack" and i not in self.checked]
        bad = {site: self.site_alone(site, [i for i in todo if self.policy != "local"
                                            or self.ops[i].site == site],
                                     f"isolated after {fault.kind}")
               for site in SITES}
        self.checked.update(todo)
        self.isolation_checks += 1
        self.log.append(f"          isolation check: {len(todo)} new acks, missing {bad}")

    def final(self) -> None:
        """Each site alone (the other one killed): every acknowledged version."""
        every = [i for i, op in enumerate(self.ops) if op.outcome == "ack"]
        for site, other in (("dc1", "dc2"), ("dc2", "dc1")):
            self.grid.kill(*self.grid.sites[other])
            n = self.site_alone(site, every, "with the other site killed")
            self.log.append(f"final check of {site} alone: {len(every)} acks, {n} missing")
            self.grid.start(*self.grid.sites[other])


def _site_versions(grid: Grid, site: str) -> dict[tuple[str, str], tuple[str, bool]]:
    """Every version of the bucket that *site* lists: (key, version) -> (hash, deleted)."""
    out: dict[tuple[str, str], tuple[str, bool]] = {}
    with hdsd.Client(grid.profile, site=site, timeout=60) as c:
        after = ""
        while True:
            # Small pages: a page of inline objects must stay far below the frame limit.
            page = _patiently(partial(c.list, BUCKET, after=after, limit=100, versions=True))
            for e in page.entries:
                out[(e.key, e.version)] = (e.content_hash, e.deleted)
            if page.next is None:
                return out
            after = page.next


T = TypeVar("T")


def _patiently(call: Callable[[], T], timeout: float = 120) -> T:
    """*call*, retried while it raises Unavailable: a listing needs every node of the site,
    and links to a node just restarted come back with backoff."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except hdsd.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _rpo_of_every_node(grid: Grid) -> dict[str, Any]:
    """{node: its live RPO}, each node asked directly: 0 when it reads zero (no version
    missing anywhere, no peer in doubt), else the versions it counts (and its peers in
    doubt), or the error code of a node that did not answer."""
    out: dict[str, Any] = {}
    for name in grid.nodes:
        try:
            with hdsd.Client(grid.pinned(name), timeout=10, retries=0) as c:
                rpo = c.status()["rpo"]
        except hdsd.HdsdError as exc:
            out[name] = f"{exc.code}"
            continue
        zero = rpo["versions"] == 0 and rpo.get("zero", True)
        out[name] = 0 if zero else {"versions": rpo["versions"],
                                    "peers_in_doubt": rpo.get("peers_in_doubt")}
    return out


def _wait_rpo_zero(grid: Grid, timeout: float) -> tuple[float | None, dict[str, Any]]:
    start = time.monotonic()
    while True:
        rpo = _rpo_of_every_node(grid)
        if all(v == 0 for v in rpo.values()):
            return time.monotonic() - start, rpo
        if time.monotonic() - start > timeout:
            return None, rpo
        time.sleep(0.25)


def _repair(grid: Grid, log: list[str]) -> dict[str, Any]:
    """``hdsd repair --wait``; a round that fails because a link is still reconnecting is run
    again (bounded), as an operator would."""
    failures: list[str] = []
    for _ in range(10):
        try:
            results = grid.cli("repair", "--wait", timeout=600)
        except AssertionError as exc:
            failures.append(str(exc))
            log.append(f"repair failed, retrying: {exc}")
            time.sleep(3)
            continue
        peers = [p for r in results for p in r.get("peers", [])]
        errors = [p["error"] for p in peers if p.get("error")]
        if errors:
            failures.append("; ".join(errors))
            log.append(f"repair round reported errors, retrying: {errors}")
            time.sleep(3)
            continue
        return {"runs_failed": len(failures),
                "versions_moved": sum(p["versions_received"] + p["versions_sent"]
                                      for p in peers)}
    raise AssertionError("hdsd repair --wait failed 10 times: " + " | ".join(failures[-3:]))


# -- the test ----------------------------------------------------------------------------------
def test_acknowledged_writes_survive_the_nemesis(tmp_path: Path, seed: int, policy: str,
                                                 nemesis_seconds: float) -> None:
    log: list[str] = []
    local = policy == "local"
    nodes = int(os.environ.get("HDSD_NEMESIS_NODES", "1" if local else "2"))
    faults = nemesis.schedule(seed, nemesis_seconds, [f"dc{s}-n{i}" for s in (1, 2)
                                                      for i in range(1, nodes + 1)])
    print(f"\nnemesis seed {seed}, {nemesis_seconds:g} s, policy {policy}; schedule:")
    for f in faults:
        print(f"  {f}")
    replicas = int(os.environ.get("HDSD_NEMESIS_REPLICAS", str(min(2, nodes))))
    grid = Grid(tmp_path / "c", nodes_per_site=nodes, replicas_per_site=replicas,
                write_timeout_s=NODE_WRITE_TIMEOUT, write_policy=policy)
    report: dict[str, Any] = {"seed": seed, "nemesis_s": nemesis_seconds, "policy": policy,
                              "nodes_per_site": nodes, "replicas_per_site": replicas,
                              "retries": RETRIES}
    try:
        grid.start()
        ops: list[Op] = []
        stop = threading.Event()
        writer_failure: list[BaseException] = []
        # Bound on the writers: the fault period plus an operation's worst case (every
        # attempt timing out) plus slack; only a hang reaches it.
        bound = nemesis_seconds + 60 + USER_ATTEMPTS * 4 * (CLIENT_TIMEOUT + 8) + 120
        writers = threading.Thread(target=_run_writers,
                                   args=(grid, seed, stop, ops, writer_failure, bound))
        verifier = Verifier(grid, ops, log, policy)
        t0 = time.monotonic()
        writers.start()
        try:
            time.sleep(2)  # a healthy start: the first writes meet every replica
            applied = nemesis.run(grid, faults, log, verifier.isolated,
                                  frozenset(nemesis.KINDS) if local else nemesis.ISOLATING)
        finally:
            stop.set()
            writers.join()
        if writer_failure:
            raise writer_failure[0]
        grid.heal_all()
        report["fault_period_s"] = round(time.monotonic() - t0, 1)
        report["faults"] = dict(applied)
        report["isolation_checks"] = verifier.isolation_checks

        last_heal = time.monotonic()
        if not local:
            # 1. Before any repair: each site alone returns every acknowledged version.
            verifier.final()

        # 2. The live RPO drains by itself; at RPO 0 the sites hold the same versions.
        rpo_zero_s, rpo_seen = _wait_rpo_zero(grid, RPO_TIMEOUT)
        at_rpo0 = {site: _site_versions(grid, site) for site in SITES}
        if local:
            # 1. Still before any repair, now that hint replay and reconciliation are done:
            # each site alone returns every acknowledged version.
            verifier.final()

        # 3. After repair: identical version sets holding every acknowledged version.
        report["repair"] = _repair(grid, log)
        after = {site: _site_versions(grid, site) for site in SITES}
        every = [i for i, op in enumerate(ops) if op.outcome == "ack"]
        unreadable = {i: why for site in SITES for i, why in trio.run(
            _read_back_settled, [grid.pinned(n) for n in grid.sites[site]], ops, every).items()}
        report["found_on_second_look"] = verifier.stats["found_on_second_look"]
        report.update(_figures(ops, verifier.missing, rpo_zero_s, rpo_seen, at_rpo0, after,
                               unreadable, time.monotonic() - last_heal))
    except BaseException:
        print("\n".join(log))
        print(grid.logs())
        raise
    finally:
        grid.close()

    _publish(report, tmp_path, log)
    problems = _problems(report)
    assert not problems, "\n".join(problems) + "\n" + json.dumps(report["examples"], indent=1)


def _figures(ops: list[Op], missing: dict[int, list[str]], rpo_zero_s: float | None,
             rpo_seen: dict[str, Any], at_rpo0: dict[str, dict[tuple[str, str], Any]],
             after: dict[str, dict[tuple[str, str], Any]], unreadable: dict[int, str],
             checks_s: float) -> dict[str, Any]:
    acked = [op for op in ops if op.outcome == "ack"]
    refusals = Counter(op.code for op in ops if op.outcome == "refused")
    by_site = {site: sum(any(m.startswith(site) for m in why) for why in missing.values())
               for site in SITES}
    acked_versions = {(op.key, op.version) for op in acked}
    union_after = set(after["dc1"]) | set(after["dc2"])
    lost = {i for i in unreadable} | {i for i, op in enumerate(ops) if op.outcome == "ack"
                                      and (op.key, op.version) not in union_after}
    ops_per_key = Counter(op.key for op in ops)
    versions_per_key: Counter[str] = Counter(key for key, _v in union_after)
    extra = sum(max(0, n - ops_per_key[k]) for k, n in versions_per_key.items())
    # A retry (sent with `retry`: looked for on every replica of both sites) that cannot see
    # its first attempt — the replica holding it was down or cut off — stores the same
    # request's content a second time: a documented limit, counted in `extra_versions`. What
    # must never happen is a version that no request wrote: more distinct contents than requests.
    merged = {**after["dc1"], **after["dc2"]}
    contents_per_key: dict[str, set[Any]] = {}
    for (key, version) in union_after:
        contents_per_key.setdefault(key, set()).add(merged[(key, version)])
    extra_contents = sum(max(0, len(c) - ops_per_key[k]) for k, c in contents_per_key.items())
    examples: dict[str, list[str]] = {
        "missing_before_repair": [f"{ops[i].brief()}: {'; '.join(why)}"
                                  for i, why in sorted(missing.items())[:8]]}
    examples["lost"] = [ops[i].brief() for i in sorted(lost)[:5]]
    examples["differ_at_rpo0"] = sorted(f"{k} {v}" for k, v in
                                        set(at_rpo0["dc1"]) ^ set(at_rpo0["dc2"]))[:5]
    return {
        "ops": len(ops),
        "puts": sum(op.kind == "put" for op in ops),
        "deletes": sum(op.kind == "delete" for op in ops),
        "acks": len(acked),
        "acks_replayed": sum(op.replayed for op in acked),
        "acks_after_a_user_retry": sum(op.attempts > 1 for op in acked),
        "refusals": dict(sorted(refusals.items())),
        "missing_before_repair": len(missing),
        "missing_before_repair_by_site": by_site,
        "missing_before_repair_replayed": sum(ops[i].replayed for i in missing),
        # Deletes: the reply of a replayed delete does not say so today; puts not replayed
        # would mean a first attempt acknowledged too early.
        "missing_before_repair_kinds": dict(Counter(
            f"{ops[i].kind}{' replayed' if ops[i].replayed else ''}" for i in missing)),
        "rpo_zero_after_last_heal_s": None if rpo_zero_s is None else round(rpo_zero_s, 2),
        "rpo_last_seen": rpo_seen,
        "differ_at_rpo0": len(set(at_rpo0["dc1"]) ^ set(at_rpo0["dc2"])),
        "differ_after_repair": len(set(after["dc1"]) ^ set(after["dc2"])),
        "versions_after_repair": len(union_after),
        "unacked_versions_present": len(union_after - acked_versions),
        "extra_versions": extra,
        "extra_contents": extra_contents,
        "lost": len(lost),
        "checks_s": round(checks_s, 1),
        "examples": examples,
    }


def _problems(r: dict[str, Any]) -> list[str]:
    problems = []
    if r["acks"] == 0:
        problems.append("no write was acknowledged at all: the run proves nothing")
    if r["missing_before_repair"]:
        problems.append(f"{r['missing_before_repair']} acknowledged writes were missing from a "
                        f"site before repair ({r['missing_before_repair_by_site']}, "
                        f"{r['missing_before_repair_replayed']} of them replayed acks)")
    if r["rpo_zero_after_last_heal_s"] is None:
        problems.append(f"the live RPO did not drain to 0 within {RPO_TIMEOUT:g} s of the last "
                        f"heal without a repair: {r['rpo_last_seen']}")
    if r["differ_at_rpo0"]:
        problems.append(f"every node showed RPO 0 but the sites' version sets differed by "
                        f"{r['differ_at_rpo0']} versions")
    if r["repair"]["versions_moved"] and r["rpo_zero_after_last_heal_s"] is not None:
        problems.append(f"every node showed RPO 0, yet the repair that followed moved "
                        f"{r['repair']['versions_moved']} versions to replicas missing them")
    if r["differ_after_repair"]:
        problems.append(f"after repair the sites' version sets differ by "
                        f"{r['differ_after_repair']} versions")
    if r["lost"]:
        problems.append(f"{r['lost']} acknowledged writes lost (unreadable after repair)")
    if r["extra_contents"]:
        problems.append(f"{r['extra_contents']} contents more than requests on their keys "
                        "(a version no request wrote)")
    return problems


def _publish(report: dict[str, Any], tmp_path: Path, log: list[str]) -> None:
    line = json.dumps({k: v for k, v in report.items() if k != "examples"}, sort_keys=True)
    print("\n".join(log))
    print(f"NEMESIS {line}")
    rows = [
        ("seed", report["seed"]),
        ("fault period (s)", report["fault_period_s"]),
        ("faults", ", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items()))),
        ("ops (puts/deletes)", f"{report['ops']} ({report['puts']}/{report['deletes']})"),
        ("acks (replayed)", f"{report['acks']} ({report['acks_replayed']})"),
        ("refusals", ", ".join(f"{k} {v}" for k, v in report["refusals"].items()) or "0"),
        ("acked, missing before repair", f"{report['missing_before_repair']} "
         f"{report['missing_before_repair_by_site']}"),
        ("time to RPO 0 after last heal (s)", report["rpo_zero_after_last_heal_s"]),
        ("sites differ at RPO 0", report["differ_at_rpo0"]),
        ("versions moved by repair", report["repair"]["versions_moved"]),
        ("sites differ after repair", report["differ_after_repair"]),
        ("lost", report["lost"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    (tmp_path / f"nemesis-{report['seed']}.json").write_text(json.dumps(report, indent=1))
    target = os.environ.get("HDSD_NEMESIS_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(line + "\n")
