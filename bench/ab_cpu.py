"""A/B CPU per small put: two hdsd trees, each with its own two-site cluster, measured in turn.

    python bench/ab_cpu.py --base PATH --candidate PATH [--ops 2000] [--rounds 5]
                           [--concurrency 1,16,64] [--size 4096] [--gets] [--json PATH]
                           [--policy each-site]

*PATH* is a checkout of hdsd with its own ``.venv`` (e.g. a ``git worktree`` of main beside the
branch under test). Each side runs in a worker process under its own interpreter: it starts its
cluster (``hdsd init``, one ``hdsd serve`` per site, write policy ``--policy``: ``each-site`` by
default, ``local`` to measure a node acknowledging on its own fsync) and its clients, so the
client, the coordinator (dc1) and the replica (dc2) are all that tree's code. Both clusters stay
up for the whole run; each cell (concurrency x op) is measured on one side then the other, the
order alternating round by round, so a pair is seconds apart while the shared machine's load
drifts.

Per cell and side: ops/s, latency p50, and the CPU per op of each process from /proc —
utime + stime of every thread (``/proc/PID/stat``, 10 ms ticks, exited threads included), and of
the node's main thread (the trio loop) in nanoseconds from ``/proc/PID/task/PID/schedstat``;
``threads`` is the rest (worker threads: fsync, crypto, ...). Reports the median over rounds per
side, the candidate/base ratio of the medians and the median of the per-round ratios, as a table
and as JSON (default ``bench/results/ab_cpu.json``). CPU time is what a change moves on a loaded
2-core machine; latency and ops/s are printed but are noisy there. Never asserts.
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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROLES = ("client", "coordinator", "replica")


# -- the worker: one side's cluster and clients, driven over stdin/stdout -----------------------
def _main_thread_ns(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _snapshot(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    from _harness import process_cpu_seconds

    return {role: {"all": process_cpu_seconds(pid), "main": _main_thread_ns(pid) / 1e9}
            for role, pid in pids.items()}


def worker(scratch: Path, size: int, connections: int, policy: str) -> int:
    """Serve cells on stdin (one JSON object a line) until EOF; answer one JSON line each."""
    import trio

    sys.path.insert(0, str(HERE))
    from _harness import NodeProcess, init_cluster, set_write_policy

    out = sys.stdout
    sys.stdout = sys.stderr  # only this protocol's lines go to the orchestrator
    scratch.mkdir(parents=True, exist_ok=True)
    profile = init_cluster(scratch / "cluster")
    nodes = []
    try:
        for site in ("dc1", "dc2"):
            cfg = scratch / "cluster" / f"{site}-n1" / "node.toml"
            set_write_policy(cfg, policy)
            node = NodeProcess(cfg)
            nodes.append(node)
            node.start()
        pids = {"client": os.getpid(), "coordinator": nodes[0].proc.pid,  # type: ignore[union-attr]
                "replica": nodes[1].proc.pid}  # type: ignore[union-attr]
        trio.run(_serve, profile, pids, size, connections, out)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


async def _serve(profile: Path, pids: dict[str, int], size: int, connections: int,
                 out: IO[str]) -> None:
    from contextlib import AsyncExitStack

    import trio

    import hdsd

    base = os.urandom(size)
    tags = iter(range(1, 1 << 62))

    async def put(client: hdsd.AsyncClient, key: str) -> float:
        body = next(tags).to_bytes(8, "little") + base[8:]
        t0 = time.perf_counter()
        await client.put("bench", key, body)
        return time.perf_counter() - t0

    async def get(client: hdsd.AsyncClient, key: str) -> float:
        t0 = time.perf_counter()
        await client.get("bench", key)
        return time.perf_counter() - t0

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            hdsd.AsyncClient(profile, site="dc1", timeout=600)) for _ in range(connections)]
        for i in range(50):  # warm-up: connections, the peer link, caches
            await put(clients[i % connections], f"warm/{i}")
        print(json.dumps({"ready": True, "pids": pids}), file=out, flush=True)
        cell_no = 0
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            req = json.loads(line)
            cell_no += 1
            c, n, op = int(req["c"]), int(req["ops"]), req["op"]
            prefix = f"ab/{req.get('key', cell_no)}"
            fn = put if op == "put" else get
            per_task = max(1, n // c)
            samples: list[float] = []

            async def task(t: int, per_task: int = per_task, fn: Any = fn,
                           prefix: str = prefix, samples: list[float] = samples) -> None:
                cl = clients[t % connections]
                for i in range(per_task):
                    samples.append(await fn(cl, f"{prefix}/{t}/{i}"))

            cpu0 = _snapshot(pids)
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for t in range(c):
                    nursery.start_soon(task, t)
            elapsed = time.perf_counter() - t0
            cpu1 = _snapshot(pids)
            done = len(samples)
            cpu = {role: {k: (cpu1[role][k] - cpu0[role][k]) / done * 1e3 for k in ("all", "main")}
                   for role in pids}
            print(json.dumps({"ops": done, "elapsed_s": elapsed, "ops_per_s": done / elapsed,
                              "p50_ms": statistics.median(samples) * 1e3,
                              "cpu_ms_per_op": cpu}), file=out, flush=True)


# -- the orchestrator ------------------------------------------------------------------------
class Side:
    def __init__(self, name: str, repo: Path, scratch: Path, size: int, connections: int,
                 policy: str) -> None:
        python = repo / ".venv" / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{name}: no interpreter at {python}")
        self.name = name
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # cwd outside both trees: `python -m hdsd` must import the tree its venv installed.
        self.proc = subprocess.Popen(
            [str(python), str(HERE / "ab_cpu.py"), "--worker", str(scratch), "--size",
             str(size), "--connections", str(connections), "--policy", policy],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=scratch.parent, env=env)
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"{name}: worker did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker exited ({self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(60)


def _metrics(r: dict[str, Any]) -> dict[str, float]:
    m = {"ops_per_s": r["ops_per_s"], "p50_ms": r["p50_ms"]}
    cpu = r["cpu_ms_per_op"]
    for role in ROLES:
        m[f"{role}"] = cpu[role]["all"]
    m["total"] = sum(cpu[role]["all"] for role in ROLES)
    for role in ("coordinator", "replica"):
        m[f"{role}.main"] = cpu[role]["main"]
        m[f"{role}.threads"] = cpu[role]["all"] - cpu[role]["main"]
    return m


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for cell, sides in runs.items():
        base = [_metrics(r) for r in sides["base"]]
        cand = [_metrics(r) for r in sides["candidate"]]
        for metric in base[0]:
            b = statistics.median(x[metric] for x in base)
            c = statistics.median(x[metric] for x in cand)
            paired = [y[metric] / x[metric] for x, y in zip(base, cand, strict=False)
                      if x[metric] > 0]
            out.append({"cell": cell, "metric": metric, "base": b, "candidate": c,
                        "ratio": c / b if b else None,
                        "paired_ratio": statistics.median(paired) if paired else None,
                        "base_runs": [x[metric] for x in base],
                        "candidate_runs": [y[metric] for y in cand]})
    return out


def show(rows: list[dict[str, Any]]) -> None:
    sys.path.insert(0, str(HERE))
    from _harness import print_table

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}" if v < 100 else f"{v:.0f}"

    print_table(["cell", "metric (CPU: ms/op)", "base", "candidate", "cand/base", "paired"],
                [[r["cell"], r["metric"], fmt(r["base"]), fmt(r["candidate"]), fmt(r["ratio"]),
                  fmt(r["paired_ratio"])] for r in rows])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=16,
                   help="client connections per side; more tasks share them (default 16)")
    p.add_argument("--base", type=Path)
    p.add_argument("--candidate", type=Path)
    p.add_argument("--ops", type=int, default=2000, help="ops per cell (default 2000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--gets", action="store_true", help="also get what each cell put")
    p.add_argument("--policy", default="each-site",
                   help="the clusters' write policy (default each-site; e.g. local)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--json", type=Path, default=HERE / "results" / "ab_cpu.json")
    args = p.parse_args(argv)
    if args.worker is None and (args.base is None or args.candidate is None):
        p.error("--base and --candidate are required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.size, args.connections, args.policy)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    ops = ["put", "get"] if args.gets else ["put"]
    scratch = Path(tempfile.mkdtemp(prefix="ab-cpu-", dir=args.dir))
    started = time.time()
    sides: dict[str, Side] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for name, repo in (("base", args.base), ("candidate", args.candidate)):
            print(f"starting {name} ({repo})", file=sys.stderr)
            sides[name] = Side(name, repo.resolve(), scratch / name, args.size, args.connections,
                               args.policy)
        for r in range(args.rounds):
            order = ["base", "candidate"] if r % 2 == 0 else ["candidate", "base"]
            for c in concurrency:
                for name in order:
                    for op in ops:
                        cell = f"{op} {args.size} x{c}"
                        got = sides[name].run(c=c, ops=args.ops, op=op, key=f"{r}-{c}")
                        runs.setdefault(cell, {"base": [], "candidate": []})[name].append(got)
                        cpu = sum(got["cpu_ms_per_op"][role]["all"] for role in ROLES)
                        print(f"round {r} {name:9} {cell}: {got['ops_per_s']:.0f} ops/s, p50 "
                              f"{got['p50_ms']:.2f} ms, CPU {cpu:.3f} ms/op", file=sys.stderr)
    finally:
        for side in sides.values():
            side.close()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(runs)
    show(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "ab_cpu", "started": started, "seconds": time.time() - started,
        "base": str(args.base), "candidate": str(args.candidate), "ops": args.ops,
        "rounds": args.rounds, "size": args.size, "policy": args.policy, "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(), "summary": rows, "runs": runs}, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
