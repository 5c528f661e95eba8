"""Soak: many clients for a long time on a 1+1 cluster; is the node flat (memory, descriptors,
CPU per operation, latency) and is every acknowledged write there at the end?

    python bench/soak.py [--clients 64] [--duration 1800] [--interval 60] [--json PATH]
    python bench/soak.py --quick            # 2 minutes, 16 clients, 10 s samples
    python bench/soak.py --limit max_unsent_mib=4 --node-env MALLOC_ARENA_MAX=4

The mix, per operation: 70 % puts (of which 60 % 4 KiB, 30 % 64 KiB, 10 % 1 MiB; nine in ten
to a new key, one in ten overwriting one of the client's keys), 25 % gets of one of the
client's keys (checked byte for byte), 5 % deletes. Each client owns its keys, so the expected
state of every key is known without locking; half the clients talk to dc1, half to dc2.
``--think-ms`` makes each client pause between operations (a lighter load), ``--rate`` holds all
clients together to a steady number of operations per second; ``--min-free-gib``
ends the load early when the disk runs low (the mix at full speed writes ~30 MB/s here).

Every ``--interval`` seconds: each node's RSS and its peak since the last sample (VmHWM, reset
through /proc/PID/clear_refs), open descriptors and CPU seconds (from /proc), the node's own
split of its memory (``memory`` in its status: glibc's bytes in use and free in its arenas;
Python's traced bytes with ``--node-env PYTHONTRACEMALLOC=1``; the body budget's peak since the
start and the requests that waited for it),
each node's RSS split by mapping (glibc's main heap, its other arenas' heaps, thread stacks,
other anonymous memory — Python's arenas —, pages of files; from /proc/PID/smaps) with the
node's count of Python's arenas and of SQLite's bytes and its last trim's time and yield,
the operations done in the interval by kind with p50/p99 latency, the CPU per operation (both
nodes' CPU over all operations) and errors. At the end, every key is read back from each site
with the other site's node stopped (so the answer is that node's own copy, never forwarded),
byte for byte; deleted keys must be gone. JSON always; a PNG of the time series if matplotlib is
installed (``pip install -e '.[bench]'``).

Never asserts a time. ``--quick`` exits 1 if any operation failed or any acknowledged write is
missing or wrong at either site: tests/bench/ runs it in CI as a correctness test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import hdsd
from bench._harness import NodeProcess, init_cluster, machine_info, print_table, write_json

BUCKET = "soak"
SIZES = ((4096, 0.6), (64 << 10, 0.3), (1 << 20, 0.1))
_POOL = random.Random(0).randbytes(4 << 20)


def _log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def content(key: str, generation: int, size: int) -> bytes:
    """Unique, reproducible bytes of *size* for (key, generation), cheap to make: a header
    naming them, then a slice of a random pool at an offset they choose (no two objects share
    a chunk, and zstd finds nothing to compress, as with real medical images)."""
    head = hashlib.blake2b(f"{key}#{generation}".encode(), digest_size=32).digest()
    start = int.from_bytes(head[:4], "big") % (len(_POOL) - size) if size > 32 else 0
    return (head + _POOL[start:start + max(0, size - 32)])[:size]


@dataclass(slots=True)
class Interval:
    ops: dict[str, list[float]] = field(default_factory=lambda: {"put": [], "get": [],
                                                                 "delete": []})
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Expected:
    generation: int
    size: int  # -1: deleted


class Soak:
    def __init__(self, profile: Path, clients: int, seed: int,
                 sizes: tuple[tuple[int, float], ...] = SIZES, think_s: float = 0.0,
                 rate: float = 0.0) -> None:
        self.profile = profile
        self.think_s = think_s  # mean pause between a client's operations (0: none)
        self.rate = rate  # operations per second for all clients together (0: no limit)
        self._next_slot = 0.0
        self.sizes = sizes
        self.clients = clients
        self.seed = seed
        self.now = Interval()
        self.keys: list[dict[str, Expected]] = [{} for _ in range(clients)]
        self.wrong_reads = 0
        self.total_errors = 0

    async def client(self, n: int, stop: trio.Event) -> None:
        rng = random.Random(self.seed * 1000 + n)
        site = "dc1" if n % 2 == 0 else "dc2"
        mine = self.keys[n]
        names: list[str] = []  # keys with a live value
        counter = 0
        async with hdsd.AsyncClient(self.profile, site=site) as c:
            while not stop.is_set():
                if self.rate:
                    await self._pace()
                r = rng.random()
                t0 = time.perf_counter()
                try:
                    if r < 0.70 or not names:
                        size = rng.choices([s for s, _ in self.sizes],
                                           [w for _, w in self.sizes])[0]
                        if names and rng.random() < 0.1:
                            key = rng.choice(names)
                        else:
                            key = f"c{n:03d}/{counter:08d}"
                            counter += 1
                        gen = mine[key].generation + 1 if key in mine else 0
                        await c.put(BUCKET, key, content(key, gen, size))
                        if key not in mine or mine[key].size < 0:
                            names.append(key)
                        mine[key] = Expected(gen, size)
                        op = "put"
                    elif r < 0.95:
                        key = rng.choice(names)
                        want = mine[key]
                        data = await c.get(BUCKET, key)
                        if data != content(key, want.generation, want.size):
                            self.wrong_reads += 1
                            self.now.errors.append(f"get {key}: wrong bytes")
                        op = "get"
                    else:
                        key = names.pop(rng.randrange(len(names)))
                        await c.delete(BUCKET, key)
                        mine[key] = Expected(mine[key].generation, -1)
                        op = "delete"
                except hdsd.HdsdError as exc:
                    self.total_errors += 1
                    self.now.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                self.now.ops[op].append(time.perf_counter() - t0)
                if self.think_s:
                    await trio.sleep(rng.expovariate(1 / self.think_s))


    async def _pace(self) -> None:
        """Wait for this operation's slot: slots are 1/rate apart for all clients together, so
        the load stays the same whatever else the machine runs (a saturated soak's throughput,
        and with it the node's memory in flight, follows the other work on a shared machine).
        A slot missed is not made up: a late client takes the next one."""
        now = trio.current_time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1 / self.rate
        await trio.sleep_until(slot)


def _proc(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    try:  # "5" resets VmHWM to the current RSS: the next sample's peak is the interval's own
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak is since the node started
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / tick, "rss_mib": rss / 2**20,
            "peak_rss_mib": peak / 2**20, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


_HEAP_MAX = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heaps are aligned on it


def _smaps(pid: int) -> dict[str, float]:
    """The node's resident memory by kind of mapping, in MiB, from /proc/PID/smaps: ``heap``
    (glibc's main arena, the brk heap), ``arena_heaps`` (its other arenas' heaps: an anonymous
    read-write mapping whose reserved rest, an inaccessible mapping just above, ends on a
    64 MiB boundary), ``stacks`` (the main stack and each thread's: a mapping just above a
    one-page guard), ``anon_other`` (every other anonymous page: Python's 1 MiB arenas, the
    blocks glibc maps on their own, what libraries map themselves) and ``file`` (pages of
    files: the interpreter and libraries' code, SQLite's shared-memory index of its WAL)."""
    out = {"heap": 0.0, "arena_heaps": 0.0, "stacks": 0.0, "anon_other": 0.0, "file": 0.0}
    maps: list[tuple[int, int, str, str, int, int]] = []  # start, end, perms, path, rss, anon
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    low, _, high = head[0].partition("-")
                    maps.append((int(low, 16), int(high, 16), head[1],
                                 head[5].strip() if len(head) > 5 else "", 0, 0))
                elif head[0] == "Rss:":
                    maps[-1] = (*maps[-1][:4], int(head[1]) << 10, maps[-1][5])
                elif head[0] == "Anonymous:":
                    maps[-1] = (*maps[-1][:5], int(head[1]) << 10)
    except (OSError, ValueError, IndexError):
        return {}
    for i, (lo, hi, _perms, path, rss, anon) in enumerate(maps):
        below = maps[i - 1] if i else None
        above = maps[i + 1] if i + 1 < len(maps) else None
        out["file"] += (rss - anon) / 2**20
        if not anon:
            continue
        if path == "[heap]":
            kind = "heap"
        elif path == "[stack]" or (below is not None and below[1] == lo and
                                   below[2].startswith("---") and below[1] - below[0] == 4096):
            kind = "stacks"
        elif (not path and above is not None and above[0] == hi and above[2].startswith("---")
              and above[1] % _HEAP_MAX == 0) or (hi - lo == _HEAP_MAX and lo % _HEAP_MAX == 0):
            kind = "arena_heaps"
        else:
            kind = "anon_other"
        out[kind] += anon / 2**20
    return {k: round(v, 1) for k, v in out.items()}


async def _memory(client: hdsd.AsyncClient) -> dict[str, float]:
    """The node's own account of its memory (``memory`` in its status), in MiB: glibc's
    bytes in use and free in its arenas, Python's traced bytes when the node runs with
    PYTHONTRACEMALLOC — what separates live data from memory the allocator keeps.

    *client* is a session opened before the load and kept: one opened per sample competed
    with the load's clients for the identity's sessions (``max_sessions_per_identity``) and
    was refused under 64 clients, and its handshake would be counted in the sample."""
    try:
        with trio.fail_after(30):
            status = await client.status()
    except (hdsd.HdsdError, trio.TooSlowError):
        return {}
    mem = status.get("memory") or {}
    out: dict[str, float] = {}
    # The node-wide body budget ([limits] max_body_mib_in_flight): its peak since the start
    # and how many requests waited for it so far (it binds when that count moves).
    budget = (status.get("limits") or {}).get("body_budget") or {}
    if budget:
        out["budget_peak"] = round(budget["peak"] / 2**20, 1)
        out["budget_waited"] = budget["waited"]
        out["budget_over"] = budget["over"]
    for k, v in (mem.get("malloc") or {}).items():
        out[k] = round(v / 2**20, 1)
    arenas = mem.get("python_arenas") or {}
    if arenas:  # obmalloc's arenas (mapped, outside glibc's heaps) and their live blocks
        out["py_arenas"] = round(arenas["arenas"] / 2**20, 1)
        out["py_blocks"] = round(arenas["blocks"] / 2**20, 1)
    if mem.get("sqlite") is not None:  # SQLite's own bytes, part of malloc's in_use
        out["sqlite"] = round(mem["sqlite"] / 2**20, 1)
    trim = mem.get("trim") or {}
    if trim:  # the node's last periodic malloc_trim: its time and what it gave back
        out["trims"] = trim["count"]
        out["trim_ms"] = trim["ms"]
        out["trim_gave"] = round((trim["rss_before"] - trim["rss_after"]) / 2**20, 1)
    if "python_blocks" in mem:  # a count of live Python objects: a leak of them climbs
        out["python_kblocks"] = round(mem["python_blocks"] / 1000, 1)
    if "python_traced" in mem:
        out["python_traced"] = round(mem["python_traced"]["current"] / 2**20, 1)
    return out


async def _load_for(duration: float, min_free_gib: float, where: Path | None) -> str | None:
    """Sleep through the load; with *min_free_gib*, end it early (and say why) once the disk
    holding the nodes has less free: the mix writes ~30 MB/s on this machine (~55 GB in 30
    minutes), and filling a disk shared with other work would break that work, not the soak."""
    end = trio.current_time() + duration
    path = str(where or tempfile.gettempdir())
    while trio.current_time() < end:
        await trio.sleep(min(5.0, end - trio.current_time()))
        if min_free_gib:
            free = shutil.disk_usage(path).free / 2**30
            if free < min_free_gib:
                _log(f"stopping the load early: {free:.1f} GiB free on {path}")
                return f"{free:.1f} GiB free after {duration - (end - trio.current_time()):.0f} s"
    return None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 2)


async def _verify(profile: Path, soak: Soak, tasks: int, nodes: dict[str, NodeProcess],
                  sample: int = 0) -> dict[str, Any]:
    """Every key, from each site alone: the last acknowledged bytes, or gone if deleted."""
    items = [(k, e) for keys in soak.keys for k, e in keys.items()]
    out: dict[str, Any] = {"keys": len(items), "live": sum(e.size >= 0 for _, e in items)}
    if sample and sample < len(items):  # a long run: a random sample (said in the result)
        items = random.Random(soak.seed).sample(items, sample)
    out["verified"] = len(items)
    for site, other in (("dc1", "dc2"), ("dc2", "dc1")):
        await trio.to_thread.run_sync(nodes[other].stop)
        queue = iter(items)
        lost: list[str] = []

        async def worker(s: str = site, q: Any = queue, lost: list[str] = lost) -> None:
            async with hdsd.AsyncClient(profile, site=s) as c:
                for key, e in q:
                    try:
                        data = await c.get(BUCKET, key)
                    except hdsd.NotFound:
                        if e.size >= 0:
                            lost.append(f"{key}: not found")
                        continue
                    if e.size < 0:
                        lost.append(f"{key}: deleted but still there")
                    elif data != content(key, e.generation, e.size):
                        lost.append(f"{key}: wrong bytes")

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(worker)
        out[site] = {"lost": len(lost), "examples": lost[:10],
                     "seconds": round(time.perf_counter() - t0, 1)}
        await trio.to_thread.run_sync(nodes[other].start)
    out["lost"] = out["dc1"]["lost"] + out["dc2"]["lost"]
    return out


async def _run(profile: Path, nodes: dict[str, NodeProcess], args: argparse.Namespace
               ) -> dict[str, Any]:
    soak = Soak(profile, args.clients, args.seed, args.sizes, args.think_ms / 1e3, args.rate)
    stop = trio.Event()
    pids = {s: n.proc.pid for s, n in nodes.items() if n.proc is not None}
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    last = {s: _proc(p) for s, p in pids.items()}
    start = dict(last)

    async def sampler() -> None:
        nonlocal last
        while not stop.is_set():
            with trio.move_on_after(args.interval):
                await stop.wait()
            interval, soak.now = soak.now, Interval()
            now = {s: _proc(p) for s, p in pids.items()}
            parts = {s: _smaps(p) for s, p in pids.items()}
            memory = {s: await _memory(status_clients[s]) for s in pids}
            n_ops = sum(len(v) for v in interval.ops.values())
            cpu = sum(now[s]["cpu_s"] - last[s]["cpu_s"] for s in now)
            elapsed = time.monotonic() - t0
            span = args.interval if not stop.is_set() else max(1e-3, elapsed - (
                samples[-1]["t_s"] if samples else 0))
            row = {"t_s": round(elapsed, 1), "ops": n_ops,
                   "ops_s": round(n_ops / span, 1),
                   "cpu_ms_per_op": round(cpu / n_ops * 1e3, 3) if n_ops else None,
                   "errors": len(interval.errors), "error_examples": interval.errors[:3],
                   **{f"{op}_{k}": v for op, lat in interval.ops.items()
                      for k, v in (("n", len(lat)), ("p50_ms", _pct(lat, 0.5)),
                                   ("p99_ms", _pct(lat, 0.99)))},
                   **{f"{s}_{k}": round(v, 1) if k != "fds" else v
                      for s, m in now.items() for k, v in m.items()},
                   **{f"{s}_rss_{k}_mib": v for s, m in parts.items() for k, v in m.items()},
                   **{f"{s}_{k}" + ("" if k.endswith(("kblocks", "waited", "over", "trims",
                                                     "_ms")) else "_mib"): v
                      for s, m in memory.items() for k, v in m.items()}}
            samples.append(row)
            last = now
            _log(f"t={row['t_s']:.0f}s ops/s={row['ops_s']} cpu/op={row['cpu_ms_per_op']} ms "
                 f"rss={[round(now[s]['rss_mib']) for s in now]} MiB "
                 f"(peak {[round(now[s]['peak_rss_mib']) for s in now]}) "
                 f"fds={[now[s]['fds'] for s in now]} "
                 f"threads={[now[s]['threads'] for s in now]} errors={row['errors']} "
                 f"malloc in use/free={[(m.get('in_use'), m.get('free')) for m in memory.values()]}"
                 f" MiB body budget peak/waited="
                 f"{[(m.get('budget_peak'), m.get('budget_waited')) for m in memory.values()]}"
                 f" rss parts heap/arenas/stacks/other/file="
                 f"{[tuple(p.values()) for p in parts.values()]} py arenas/blocks="
                 f"{[(m.get('py_arenas'), m.get('py_blocks')) for m in memory.values()]} sqlite="
                 f"{[m.get('sqlite') for m in memory.values()]} trim ms/gave="
                 f"{[(m.get('trim_ms'), m.get('trim_gave')) for m in memory.values()]}")

    async with contextlib.AsyncExitStack() as stack:
        # Connected now, before the load, and never idle-closed: see _memory.
        status_clients = {s: await stack.enter_async_context(
            hdsd.AsyncClient(profile, site=s, idle_reconnect_s=float("inf"))) for s in pids}
        for c in status_clients.values():
            await c.status()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            for n in range(args.clients):
                nursery.start_soon(soak.client, n, stop)
            stopped_early = await _load_for(args.duration, args.min_free_gib, args.dir)
            stop.set()
    end = {s: _proc(p) for s, p in pids.items()}
    _log("verifying every key at each site, the other one stopped")
    verify = await _verify(profile, soak, 8, nodes, args.verify_sample)
    totals = {op: sum(r[f"{op}_n"] for r in samples) for op in ("put", "get", "delete")}
    return {"clients": args.clients, "duration_s": args.duration, "interval_s": args.interval,
            "stopped_early": stopped_early, "think_ms": args.think_ms, "rate": args.rate,
            "sizes": [list(p) for p in args.sizes],
            "totals": totals, "errors": soak.total_errors + soak.wrong_reads,
            "wrong_reads": soak.wrong_reads, "verify": verify, "samples": samples,
            "nodes_at_start": start, "nodes_at_end": end}


def _plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["samples"]
    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for s in ("dc1", "dc2"):
        axes[0][0].plot(t, [r[f"{s}_rss_mib"] for r in rows], label=s)
        axes[0][1].plot(t, [r[f"{s}_fds"] for r in rows], label=s)
    axes[0][0].set_ylabel("RSS MiB")
    axes[0][1].set_ylabel("open fds")
    axes[1][0].plot(t, [r["ops_s"] for r in rows], label="ops/s")
    ax2 = axes[1][0].twinx()
    ax2.plot(t, [r["cpu_ms_per_op"] or 0 for r in rows], color="tab:red", label="CPU ms/op")
    axes[1][0].set_ylabel("ops/s")
    ax2.set_ylabel("node CPU ms per op")
    for op in ("put", "get", "delete"):
        axes[1][1].plot(t, [r[f"{op}_p99_ms"] or 0 for r in rows], label=f"{op} p99")
    axes[1][1].set_ylabel("ms")
    for ax in (axes[0][0], axes[0][1], axes[1][1]):
        ax.legend()
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.suptitle(f"hdsd soak: {result['clients']} clients, 1+1 cluster")
    fig.tight_layout()
    fig.savefig(path)
    return True


def _sizes(text: str) -> tuple[tuple[int, float], ...]:
    pairs = [item.split(":") for item in text.split(",")]
    return tuple((int(size), float(weight)) for size, weight in pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per sample")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="16 clients, 120 s (or --duration), 10 s samples; exit 1 on any error "
                         "or lost write")
    ap.add_argument("--verify-sample", type=int, default=0,
                    help="verify this many random keys, not all (long runs; 0: every key)")
    ap.add_argument("--node-env", action="append", default=[],
                    help="NAME=VALUE in the nodes' environment (e.g. MALLOC_ARENA_MAX=2)")
    ap.add_argument("--sizes", type=_sizes, default=SIZES,
                    help="put sizes and weights, e.g. 1048576:1 for 1 MiB objects only "
                         "(default: 4096:0.6,65536:0.3,1048576:0.1)")
    ap.add_argument("--limit", action="append", default=[],
                    help="KEY=VALUE in the nodes' [limits] (e.g. max_unsent_mib=4)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="operations per second for all clients together (0: as fast as "
                         "they go): a steady load, so memory can be compared minute to minute "
                         "on a machine whose other work comes and goes")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="mean pause of each client between operations (exponential): a "
                         "lighter load, e.g. to keep a long run within the disk")
    ap.add_argument("--min-free-gib", type=float, default=0.0,
                    help="end the load early once the nodes' disk has less free (0: never)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    ap.add_argument("--png", type=Path, default=None, help="default: the JSON path, .png")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    args = ap.parse_args()
    if args.quick:
        args.clients = min(args.clients, 16)
        args.duration = args.duration if args.duration != 1800.0 else 120.0
        args.interval = min(args.interval, 10.0)
    for item in args.node_env:
        name, _, value = item.partition("=")
        os.environ[name] = value  # the nodes inherit the bench's environment

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cluster"
        profile = init_cluster(root)
        configs = {s: root / f"{s}-n1" / "node.toml" for s in ("dc1", "dc2")}
        if not any(item.startswith("max_sessions_per_identity") for item in args.limit):
            # The load's clients share one identity, half of them at each node, plus the
            # sampler's status session: more than the default 32 would be refused.
            args.limit.append(f"max_sessions_per_identity = {args.clients // 2 + 4}")
        if args.limit:  # hdsd init leaves [limits] commented out: a table of our own
            for cfg in configs.values():
                with cfg.open("a") as f:
                    f.write("\n[limits]\n" + "".join(f"{item}\n" for item in args.limit))
        nodes = {s: NodeProcess(cfg) for s, cfg in configs.items()}
        try:
            for node in nodes.values():
                node.start()
            _log(f"{args.clients} clients for {args.duration:.0f} s")
            result = trio.run(_run, profile, nodes, args)
            result["node_env"] = args.node_env
            result["limits"] = args.limit
        finally:
            for node in nodes.values():
                node.stop()

    rows = result["samples"]
    first, last = rows[0], rows[-1]
    # Rates and latencies of the last full interval: the sample taken as the load stops covers
    # only the seconds since the one before (one second when --min-free-gib ended it early).
    full = last if len(rows) < 2 or last["t_s"] - rows[-2]["t_s"] >= args.interval / 2 \
        else rows[-2]
    # Warm-up: RSS "at minute 5" in the terms; the first sample at or after 300 s,
    # else the first sample (short runs).
    warm = next((r for r in rows if r["t_s"] >= 300), first)
    table = [
        ["operations", f"{sum(result['totals'].values()):,} "
                       f"({', '.join(f'{k} {v:,}' for k, v in result['totals'].items())})", ""],
        ["errors / wrong reads", f"{result['errors']} / {result['wrong_reads']}", "0"],
        ["lost at dc1 / dc2", f"{result['verify']['dc1']['lost']} / "
                              f"{result['verify']['dc2']['lost']} of "
                              f"{result['verify']['verified']:,} keys verified "
                              f"({result['verify']['keys']:,} written)", "0"],
    ]
    for s in ("dc1", "dc2"):
        table.append([f"{s} RSS first / warm (t={warm['t_s']:.0f}s) / last",
                      f"{first[f'{s}_rss_mib']} / {warm[f'{s}_rss_mib']} / "
                      f"{last[f'{s}_rss_mib']} MiB "
                      f"({100 * (last[f'{s}_rss_mib'] / warm[f'{s}_rss_mib'] - 1):+.1f} %)",
                      "within 10 % of warm"])
        after = [r[f"{s}_peak_rss_mib"] for r in rows if r["t_s"] >= warm["t_s"]]
        table.append([f"{s} interval's peak RSS warm / highest after / last",
                      f"{warm[f'{s}_peak_rss_mib']} / {max(after)} / "
                      f"{last[f'{s}_peak_rss_mib']} MiB "
                      f"({100 * (max(after) / warm[f'{s}_peak_rss_mib'] - 1):+.1f} %)",
                      "within 10 % of warm"])
        # One instant sample moves by 5-8 MiB from a minute to the next (a burst, or the
        # minute's trim just before it): three around the reference against the last three
        # full intervals say more about a trend than two single samples.
        around = [r[f"{s}_rss_mib"] for r in rows if abs(r["t_s"] - 300) <= 90] or [first[
            f"{s}_rss_mib"]]
        ending = [r[f"{s}_rss_mib"] for r in (rows[:-1] if full is not last else rows)][-3:]
        ref, end = statistics.median(around), statistics.median(ending)
        table.append([f"{s} RSS median minutes 4-6 / last 3", f"{ref:.1f} / {end:.1f} MiB "
                      f"({100 * (end / ref - 1):+.1f} %)", "within 10 %"])
        table.append([f"{s} fds first / last", f"{first[f'{s}_fds']} / {last[f'{s}_fds']}",
                      "bounded"])
    table += [
        ["ops/s first / last", f"{first['ops_s']} / {full['ops_s']}", ""],
        ["CPU ms per op first / last", f"{first['cpu_ms_per_op']} / {full['cpu_ms_per_op']}",
         ""],
        ["put p50/p99 first", f"{first['put_p50_ms']} / {first['put_p99_ms']} ms", ""],
        ["put p50/p99 last", f"{full['put_p50_ms']} / {full['put_p99_ms']} ms", ""],
        ["get p50/p99 first", f"{first['get_p50_ms']} / {first['get_p99_ms']} ms", ""],
        ["get p50/p99 last", f"{full['get_p50_ms']} / {full['get_p99_ms']} ms", ""],
    ]
    print(f"\nsoak: {args.clients} clients x {args.duration:.0f} s on a 1+1 cluster "
          f"({os.cpu_count()} cores, shared)" + (f"; load ended early: {result['stopped_early']}"
                                                 if result["stopped_early"] else ""))
    print_table(["measure", "value", "target"], table)
    write_json(args.json, {"machine": machine_info(), "results": result})
    png = args.png or args.json.with_suffix(".png")
    print(f"\nJSON: {args.json}" + (f"; PNG: {png}" if _plot(result, png) else
                                    " (no PNG: matplotlib is not installed)"))
    if args.quick and (result["errors"] or result["verify"]["lost"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
