"""Instructions per op by process: hdsd against the trio floor, counted by valgrind, not timed.

    python bench/instructions.py [--quick] [--n1 50] [--n2 250] [--repeat 2]
                                 [--cells put1,put16,get1] [--systems hdsd,trio-floor]
                                 [--json PATH] [--dir DIR]

Wall-clock and /proc CPU figures move +-40 % on the shared 2-core machine; the number of
instructions a process executes does not depend on the load. So this runs the client, the
coordinator (dc1) and the replica (dc2) each under ``valgrind --tool=callgrind`` and counts
what each executes per op, for hdsd (write policy ``each-site``, TLS, fsync, audit and metrics as
``hdsd init`` writes them, as ``bench/sync_latency.py`` runs it) and for the trio floor
(``bench/trio_floor.py``), cells put 4 KiB x1, put 4 KiB x16 (16 tasks, 16 connections) and
get 4 KiB x1.

Method. Every process starts with instrumentation off (``--instr-atstart=no``: valgrind runs
the interpreter without counting, several times faster), so start-up, the TLS handshakes and a
warm-up of 20 puts and 5 gets are not counted. Then instrumentation is switched on in all three
(through vgdb, ``instrumentation on``) until the last window. A *window* zeroes each process's
count (``zero``), has the client run N ops, then has each process write its count (``dump``).
Each cell runs one window that is not counted (first-time code paths), then a window of N1 and
one of N2 ops; per op = (I(N2) - I(N1)) / (N2 - N1), so what a window costs whatever its length
(the vgdb requests, the client's request line and answer) cancels out. The pair is measured
``--repeat`` times, alternating which of N1 and N2 comes first; the result is the median and
the spread (max - min over median). Switching instrumentation on and off around each window
instead would keep the runs fast, but valgrind 3.19 then wrote wrong counts (negative
differences between dumps).

What still moves: (1) work done per second rather than per op (timers, the nodes' periodic
loops): a window lasts ~50x longer under valgrind than natively, so that work is over-counted
~50x, and more so the slower the loaded machine runs the window. It is measured in an idle
window of ``--idle-s`` seconds per process and reported as ``idle_per_s``, as the share of each
figure it could explain (``idle_share``) and subtracted in ``idle_corrected`` (not in the
headline figure: busy nodes do more per-second work than idle ones, so the correction is
partial). ``valgrind_s_per_op`` says how long an op took: compare hdsd node figures of runs
where it is similar. (2) Batching that depends on timing (group commit): under valgrind more
requests arrive while one is processed, so x16 cells batch differently than natively. Both are
why the spread is printed.

The nodes' timeouts are raised for the run (valgrind slows an instrumented Python ~50x) and
their periodic work pushed out of the windows, in each node.toml (:data:`CLUSTER_SETTINGS`,
:data:`EXTRA_SECTIONS`); the client's timeout is 600 s. The JSON records the settings.

The measured tree is the one the interpreter running this script imports (run it with another
tree's ``.venv/bin/python`` to measure that tree). Writes JSON (default
``bench/results/instructions.json``) with one flat ``results`` list and prints a table. Never
asserts; stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import NodeProcess, init_cluster, machine_info, print_table, write_json  # noqa: E402

ROLES = ("client", "coordinator", "replica")
SYSTEMS = ("hdsd", "trio-floor")
SIZE = 4096
CONNECTIONS = 16
WARM_PUTS = 20
WARM_GETS = 5
# cell name -> (op, concurrency)
CELLS: dict[str, tuple[str, int]] = {"put1": ("put", 1), "put16": ("put", 16), "get1": ("get", 1)}
# An uninstrumented start under valgrind is several times slower than a native one.
START_TIMEOUT = 600.0
TIMEOUT_S = 600
VGDB_TIMEOUT = 300.0


def progress(msg: str) -> None:
    print(f"[instructions {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def valgrind_argv(out_dir: Path, role: str) -> list[str]:
    """Callgrind, counting nothing until told to, its files in *out_dir* named after *role*."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_dir / role}.%p.out",
            f"--log-file={out_dir / role}.%p.log"]


def on_all(pids: dict[str, int], *commands: str) -> None:
    """Callgrind monitor *commands* (e.g. ``dump``) to every process at once, through vgdb
    (each call takes ~0.5 s)."""
    procs = {}
    for role, pid in pids.items():
        argv = ["vgdb", f"--pid={pid}"]
        for i, cmd in enumerate(commands):
            argv += (["-c"] if i else []) + cmd.split()
        procs[role] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    failed = []
    for role, proc in procs.items():
        _, err = proc.communicate(timeout=VGDB_TIMEOUT)
        if proc.returncode != 0:
            failed.append(f"{role}: {err.decode(errors='replace')[-1000:]}")
    if failed:
        raise RuntimeError(f"vgdb {commands} failed: " + "; ".join(failed))


class Counters:
    """The dumps callgrind writes for one process: ``ROLE.PID.out.K`` for the K-th dump."""

    def __init__(self, out_dir: Path, role: str, pid: int) -> None:
        self.stem = out_dir / f"{role}.{pid}.out"
        self.dumps = 0

    def next(self) -> int:
        """Instructions counted since the previous dump (read from the dump just requested)."""
        self.dumps += 1
        path = Path(f"{self.stem}.{self.dumps}")
        deadline = time.monotonic() + VGDB_TIMEOUT
        while True:  # the dump is written before vgdb returns; allow for a slow file system
            try:
                for line in path.read_text().splitlines():
                    if line.startswith("totals:") or line.startswith("summary:"):
                        return int(line.split()[1])
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no callgrind dump at {path}")
            time.sleep(0.1)


# -- the client: a worker under valgrind, driven over stdin/stdout ------------------------------
def worker(system: str, cluster: Path, port: int, connections: int) -> int:
    """Open the connections and warm up (not counted), answer ``ready``, then run one window's
    ops per request line (``{"op", "c", "n"}``) and answer each with one line."""
    import trio

    out = sys.stdout
    sys.stdout = sys.stderr  # only this protocol's lines go to the orchestrator
    trio.run(_serve, system, cluster, port, connections, out)
    return 0


async def _serve(system: str, cluster: Path, port: int, connections: int,
                 out: IO[str]) -> None:
    from contextlib import AsyncExitStack

    import trio

    base = os.urandom(SIZE)
    tags = iter(range(1, 1 << 62))
    written: list[str] = []

    async with AsyncExitStack() as stack:
        if system == "hdsd":
            import hdsd

            clients: list[Any] = [await stack.enter_async_context(
                hdsd.AsyncClient(cluster / "client.toml", site="dc1", timeout=TIMEOUT_S,
                                  connect_timeout=TIMEOUT_S))
                for _ in range(connections)]

            async def put(client: Any, key: str, body: bytes) -> None:
                await client.put("bench", key, body)

            async def get(client: Any, key: str) -> bytes:
                got: bytes = await client.get("bench", key)
                return got
        else:
            import trio_floor

            from hdsd.client import load_profile

            prof = load_profile(cluster / "client.toml")
            ctx = trio_floor.client_context(prof.cert, prof.key, prof.ca)
            clients = [await stack.enter_async_context(trio_floor.FloorClient(port, ctx))
                       for _ in range(connections)]

            async def put(client: Any, key: str, body: bytes) -> None:
                await client.put(key, body)

            async def get(client: Any, key: str) -> bytes:
                got: bytes = await client.get(key)
                return got

        async def one_put(client: Any, key: str) -> None:
            await put(client, key, next(tags).to_bytes(8, "little") + base[8:])
            written.append(key)

        for i, client in enumerate(clients):  # every connection used once, then 20 puts
            await one_put(client, f"warm/c{i}")
        for i in range(WARM_PUTS):
            await one_put(clients[0], f"warm/{i}")
        for key in written[-WARM_GETS:]:
            await get(clients[0], key)
        print(json.dumps({"ready": True, "pid": os.getpid()}), file=out, flush=True)
        window = 0
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            req = json.loads(line)
            window += 1
            op, c, n = req["op"], int(req["c"]), int(req["n"])
            keys = written[-n:]  # a get cell reads 4 KiB bodies this run wrote
            if op == "get" and len(keys) < n:
                raise RuntimeError(f"only {len(keys)} keys to get, {n} asked")

            async def task(t: int, op: str = op, c: int = c, n: int = n, window: int = window,
                           keys: list[str] = keys) -> None:
                for i in range(t, n, c):
                    if op == "put":
                        await one_put(clients[t % connections], f"w{window}/{t}/{i}")
                    else:
                        got = await get(clients[t % connections], keys[i])
                        if len(got) != SIZE:
                            raise RuntimeError(f"get {keys[i]}: {len(got)} bytes")

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for t in range(c):
                    nursery.start_soon(task, t)
            print(json.dumps({"ops": n, "elapsed_s": time.perf_counter() - t0}), file=out,
                  flush=True)


class Client:
    """The client worker process under valgrind."""

    def __init__(self, system: str, cluster: Path, port: int, out_dir: Path,
                 connections: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [*valgrind_argv(out_dir, "client"), sys.executable, str(HERE / "instructions.py"),
             "--worker", system, "--cluster", str(cluster), "--port", str(port),
             "--connections", str(connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=out_dir, env=env)
        ready = self.read()
        if not ready.get("ready"):
            raise RuntimeError(f"client worker did not start: {ready}")
        self.pid = self.proc.pid  # valgrind runs the program in its own process: the same pid

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client worker exited ({self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(60)


# -- the servers -------------------------------------------------------------------------------
# Written into each node.toml for the run (see the module doc): timeouts a run ~50x slower than
# native would hit, and the periodic work that runs per second, not per op.
CLUSTER_SETTINGS = {"write_timeout_s": TIMEOUT_S, "catalog_sync_s": 3600}
EXTRA_SECTIONS = {
    "limits": {"request_timeout_s": TIMEOUT_S, "handshake_timeout_s": TIMEOUT_S,
               "min_upload_rate_kib_s": 1, "malloc_trim_s": 86400},
    "audit": {"checkpoint_s": 3600},
    "repair": {"interval_s": 0, "scrub_interval_h": 0, "snapshot_s": 86400},
}


def configure(config: Path) -> None:
    """Apply :data:`CLUSTER_SETTINGS` and :data:`EXTRA_SECTIONS` to *config* as ``hdsd init``
    wrote it (those sections commented out or absent)."""
    lines = [ln for ln in config.read_text().splitlines()
             if ln.split("=")[0].strip() not in CLUSTER_SETTINGS]
    for section in EXTRA_SECTIONS:
        if f"[{section}]" in (ln.split("#")[0].strip() for ln in lines):
            raise RuntimeError(f"{config} already has a [{section}] section")
    at = lines.index("[cluster]") + 1
    lines[at:at] = [f"{k} = {v}" for k, v in CLUSTER_SETTINGS.items()]
    for section, values in EXTRA_SECTIONS.items():
        lines += ["", f"[{section}]", *(f"{k} = {v}" for k, v in values.items())]
    config.write_text("\n".join(lines) + "\n")


def start_hdsd(cluster: Path, out_dir: Path, stack: ExitStack) -> tuple[dict[str, int], int]:
    from _harness import set_write_policy

    nodes = {}
    for role, site in (("replica", "dc2"), ("coordinator", "dc1")):
        config = cluster / f"{site}-n1" / "node.toml"
        set_write_policy(config, "each-site")
        configure(config)
        nodes[role] = NodeProcess(config, wrapper=valgrind_argv(out_dir, role),
                                  start_timeout=START_TIMEOUT)
        stack.callback(nodes[role].stop)
    # Both at once: a start under valgrind takes a minute on the loaded machine, and each node
    # waits for the other site's answer at start anyway (up to the write timeout).
    errors: list[BaseException] = []

    def start(node: NodeProcess) -> None:
        try:
            node.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(node,)) for node in nodes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {role: node.proc.pid for role, node in nodes.items()  # type: ignore[union-attr]
            }, 0


def start_floor(cluster: Path, out_dir: Path, stack: ExitStack) -> tuple[dict[str, int], int]:
    import sync_latency

    floor = sync_latency.TrioFloor(
        out_dir / "floor", cluster, sync_latency.QUICK, stack,
        process={role: {"wrapper": valgrind_argv(out_dir, role), "start_timeout": START_TIMEOUT}
                 for role in ("coordinator", "replica")})
    pids = floor.pids()
    del pids["client"]
    return pids, floor.port


STARTERS: dict[str, Callable[[Path, Path, ExitStack], tuple[dict[str, int], int]]] = {
    "hdsd": start_hdsd, "trio-floor": start_floor}


# -- the orchestrator --------------------------------------------------------------------------
@dataclass
class Plan:
    n1: int
    n2: int
    repeat: int
    cells: tuple[str, ...]
    systems: tuple[str, ...]
    idle_s: float


def window(pids: dict[str, int], counters: dict[str, Counters], client: Client,
           **req: Any) -> tuple[dict[str, int], float]:
    """Instructions per process over one window of the client's *req*, and its wall time."""
    on_all(pids, "zero")
    elapsed = float(client.run(**req)["elapsed_s"])
    on_all(pids, "dump")
    return {role: counters[role].next() for role in pids}, elapsed


def idle_window(pids: dict[str, int], counters: dict[str, Counters],
                seconds: float) -> dict[str, float]:
    """Instructions per second each process executes with no request in flight."""
    t0 = time.monotonic()
    on_all(pids, "zero")
    time.sleep(seconds)
    on_all(pids, "dump")
    took = time.monotonic() - t0
    return {role: counters[role].next() / took for role in pids}


def measure_system(system: str, cluster: Path, scratch: Path, plan: Plan) -> list[dict[str, Any]]:
    out_dir = scratch / system
    out_dir.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        progress(f"{system}: starting the nodes under valgrind")
        pids, port = STARTERS[system](cluster, out_dir, stack)
        progress(f"{system}: starting the client under valgrind, warming up")
        # One connection per task up to 16, as sync_latency.py (each TLS handshake under
        # valgrind takes a while: a run of x1 cells opens one).
        connections = min(CONNECTIONS, max(CELLS[name][1] for name in plan.cells))
        client = Client(system, cluster, port, out_dir, connections)
        stack.callback(client.close)
        pids = {"client": client.pid, **pids}
        counters = {role: Counters(out_dir, role, pid) for role, pid in pids.items()}
        on_all(pids, "instrumentation on")
        idle = idle_window(pids, counters, plan.idle_s)
        progress(f"{system}: idle instructions/s " +
                 ", ".join(f"{r} {v / 1e6:.2f} M" for r, v in idle.items()))
        for name in plan.cells:
            op, c = CELLS[name]
            n1 = -(-plan.n1 // c) * c  # whole rounds of c tasks
            n2 = max(-(-plan.n2 // c) * c, n1 + c)
            runs: dict[str, list[float]] = {role: [] for role in ROLES}
            seconds_per_op: list[float] = []
            # Not counted: the cell's first window runs code paths the warm-up did not (the
            # first concurrent puts cost ~100 M instructions more in the client and coordinator).
            window(pids, counters, client, op=op, c=c, n=n1)
            for r in range(plan.repeat):
                got: dict[int, tuple[dict[str, int], float]] = {}
                for n in ((n1, n2) if r % 2 == 0 else (n2, n1)):
                    got[n] = window(pids, counters, client, op=op, c=c, n=n)
                    progress(f"{system} {name} n={n}: " + ", ".join(
                        f"{role} {got[n][0][role] / 1e6:.1f} M" for role in ROLES) +
                        f" in {got[n][1]:.1f} s")
                span = n2 - n1
                for role in ROLES:
                    runs[role].append((got[n2][0][role] - got[n1][0][role]) / span)
                seconds_per_op.append((got[n2][1] - got[n1][1]) / span)
            runs["total"] = [sum(runs[role][i] for role in ROLES) for i in range(plan.repeat)]
            idle["total"] = sum(idle[role] for role in ROLES)
            s_per_op = statistics.median(seconds_per_op)
            for process, values in runs.items():
                med = statistics.median(values)
                rows.append({
                    "system": system, "cell": name, "op": op, "size_bytes": SIZE,
                    "concurrency": c, "process": process, "instructions_per_op": med,
                    "runs": values,
                    "spread_pct": (max(values) - min(values)) / med * 100 if med else None,
                    "idle_per_s": idle[process],
                    "idle_share": idle[process] * s_per_op / med if med > 0 else None,
                    "idle_corrected": med - idle[process] * s_per_op,
                    "valgrind_s_per_op": s_per_op, "n1": n1, "n2": n2})
        on_all(pids, "instrumentation off")  # the stop runs several times faster
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """hdsd rows get ``vs_trio_floor``: hdsd's instructions per op over the floor's, same cell
    and process — unless the floor's process has no part in the op (under 1 % of the floor's
    total, e.g. its replica in a get: a ratio to nothing)."""
    floor = {(r["cell"], r["process"]): r["instructions_per_op"] for r in rows
             if r["system"] == "trio-floor"}
    for r in rows:
        f = floor.get((r["cell"], r["process"]))
        total = floor.get((r["cell"], "total"))
        if r["system"] == "hdsd" and f and total and f >= total / 100:
            r["vs_trio_floor"] = r["instructions_per_op"] / f


def show(rows: list[dict[str, Any]]) -> None:
    def mi(r: dict[str, Any] | None) -> str:
        return "-" if r is None else f"{r['instructions_per_op'] / 1e6:.2f}"

    def spread(r: dict[str, Any] | None) -> str:
        return "-" if r is None or r["spread_pct"] is None else f"{r['spread_pct']:.1f}%"

    def idle(r: dict[str, Any] | None) -> str:
        return "-" if r is None or r["idle_share"] is None else f"{r['idle_share'] * 100:.1f}%"

    by = {(r["system"], r["cell"], r["process"]): r for r in rows}
    table = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        for process in (*ROLES, "total"):
            h, f = by.get(("hdsd", cell, process)), by.get(("trio-floor", cell, process))
            ratio = f"{h['vs_trio_floor']:.2f}x" if h and "vs_trio_floor" in h else "-"
            op, c = CELLS[cell]
            table.append([f"{op} 4 KiB x{c}", process, mi(h), mi(f), ratio, spread(h), spread(f),
                          idle(h), idle(f)])
    print_table(["cell", "process", "hdsd Minstr/op", "floor Minstr/op", "hdsd/floor",
                 "spread hdsd", "spread floor", "idle hdsd", "idle floor"], table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--cluster", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=CONNECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="the smallest form: put 4 KiB x1 only, N1=2, N2=4, one repeat, a 1 s "
                        "idle window (each can still be given)")
    p.add_argument("--n1", type=int, help="ops in the short window (default 50; x16: rounded "
                   "up to whole rounds of 16)")
    p.add_argument("--n2", type=int, help="ops in the long window (default 250)")
    p.add_argument("--repeat", type=int, help="measure each pair this many times (default 2)")
    p.add_argument("--cells", help=f"a comma-separated subset of {','.join(CELLS)} (default "
                                    "all; --quick: put1)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--idle-s", type=float, help="the idle window, seconds (default 5)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory: its callgrind dumps (ROLE.PID.out.K, the "
                        "K-th window) read with callgrind_annotate")
    p.add_argument("--json", type=Path, default=HERE / "results" / "instructions.json")
    args = p.parse_args(argv)
    if args.cells is None:
        args.cells = "put1" if args.quick else ",".join(CELLS)
    if args.idle_s is None:
        args.idle_s = 1.0 if args.quick else 5.0
    for name in args.cells.split(","):
        if name not in CELLS:
            p.error(f"unknown cell {name!r}")
    for name in args.systems.split(","):
        if name not in SYSTEMS:
            p.error(f"unknown system {name!r}")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    n1 = args.n1 if args.n1 is not None else 2 if args.quick else 50
    n2 = args.n2 if args.n2 is not None else 4 if args.quick else 250
    if not 0 < n1 < n2:
        raise SystemExit(f"need 0 < n1 < n2, got {n1}, {n2}")
    repeat = args.repeat if args.repeat is not None else 1 if args.quick else 2
    return Plan(n1, n2, repeat, tuple(args.cells.split(",")), tuple(args.systems.split(",")),
                args.idle_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.cluster, args.port, args.connections)
    if shutil.which("valgrind") is None or shutil.which("vgdb") is None:
        raise SystemExit("valgrind (with vgdb) is not installed: apt-get install valgrind")
    plan = make_plan(args)
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="instructions-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    try:
        cluster = init_cluster(scratch / "cluster").parent  # the floor uses its certificates
        for system in plan.systems:
            rows += measure_system(system, cluster, scratch, plan)
    finally:
        if args.keep:
            progress(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    add_ratios(rows)
    show(rows)
    write_json(args.json, {
        "benchmark": "instructions", "started": started, "seconds": time.time() - started,
        "n1": plan.n1, "n2": plan.n2, "repeat": plan.repeat, "size_bytes": SIZE,
        "policy": "each-site", "node_settings": {"cluster": CLUSTER_SETTINGS, **EXTRA_SECTIONS},
        "load_avg": os.getloadavg(), "machine": machine_info(),
        "results": rows})
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
