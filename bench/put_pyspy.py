"""Where a replicated 4 KiB put spends CPU, by process: client, coordinator and replica, each
sampled by py-spy (``pip install py-spy``; not a dependency of hdsd).

    python bench/put_pyspy.py [--puts N] [--concurrency C] [--rate HZ] [--dir DIR] [--get]

Starts a two-site cluster (``hdsd init``, one ``hdsd serve`` per site) with both nodes under
``py-spy record --gil`` (non-blocking; only the thread holding the GIL is sampled: on this VM
py-spy cannot tell idle threads, so without ``--gil`` a thread blocked in fdatasync or epoll
counts as busy; C code that releases the GIL — crypto, syscalls — is therefore not seen), then
a client process, also under py-spy, that warms up and runs *N* puts of 4 KiB (``each-site``) in *C*
tasks. Prints, per process, the share of samples by layer (the deepest hdsd frame of each
sample decides: ``hdsd/transport``, ``hdsd/wire``...; none: the library the leaf is in) and the
top functions by self samples. With ``--get`` the timed part is *N* gets of 4 KiB objects
written during the warm-up (the get path; the replica then only takes the audit shipping).
Keeps the raw files (flamegraph.pl input) in DIR. The sampler
itself costs some CPU: compare shares, not absolute times.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import NodeProcess, init_cluster, print_table, set_write_policy  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def spy(out: Path, rate: int) -> list[str]:
    return [py_spy(), "record", "--nonblocking", "--gil", "-r", str(rate), "-f", "raw",
            "-o", str(out), "--"]


class SpiedNode(NodeProcess):
    def __init__(self, config: Path, out: Path, rate: int) -> None:
        super().__init__(config)
        self.spy = spy(out, rate)

    def command(self) -> list[str]:
        return [*self.spy, *super().command()]

    def stop(self) -> int | None:
        # The node first (its graceful stop): py-spy then sees it exit and writes its file. A
        # SIGTERM to py-spy itself would end it without writing.
        if self.proc is not None and self.proc.poll() is None:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    os.kill(int(child), signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass  # stop() below ends it
        return super().stop()


def drive(profile: Path, puts: int, concurrency: int, get: bool) -> None:
    import trio

    import hdsd

    async def run() -> None:
        data = os.urandom(4096)
        async with hdsd.AsyncClient(profile, site="dc1", timeout=600) as client:
            for i in range(200):
                await client.put("bench", f"warm/{i}", data)
            t0 = time.perf_counter()

            async def task(t: int) -> None:
                for i in range(puts // concurrency):
                    if get:
                        await client.get("bench", f"warm/{(t * 7 + i) % 200}")
                    else:
                        await client.put("bench", f"p/{t}/{i}", data)

            async with trio.open_nursery() as nursery:
                for t in range(concurrency):
                    nursery.start_soon(task, t)
            took = time.perf_counter() - t0
            what = "gets" if get else "puts"
            print(f"{puts} {what} in {took:.2f} s: {puts / took:.0f}/s", file=sys.stderr)

    trio.run(run)


def layer(frame: str) -> str | None:
    """``func (path:line)`` -> ``hdsd/<pkg>`` for an hdsd frame, else None."""
    path = frame[frame.rfind("(") + 1:]
    at = path.find("hdsd/")
    if at < 0 or ("site-packages" in path and "/hdsd/" not in path):
        return None
    parts = path[at:].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else "hdsd"


def library(frame: str) -> str:
    path = frame[frame.rfind("(") + 1:].split(":")[0]
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0]
    return "python: " + Path(path).name if path else "?"


def summarise(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    by_layer: collections.Counter[str] = collections.Counter()
    by_self: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if any("_find_and_load" in f for f in frames):
            continue  # start-up imports, not the put path
        total += n
        owner = next((lay for f in reversed(frames) if (lay := layer(f))), None)
        by_layer[owner or library(frames[-1])] += n
        by_self[frames[-1]] += n
    return total, by_layer.most_common(), by_self.most_common(top)


def print_shares(layers: list[tuple[str, int]], top: list[tuple[str, int]], total: int) -> None:
    """The two tables of a summarised profile: by layer, and the top self frames."""
    print_table(["layer (deepest hdsd frame, else the leaf's library)", "share"],
                [[name, f"{n / total:.1%}"] for name, n in layers[:14]])
    print_table(["top self frames", "share"],
                [[name[:110], f"{n / total:.1%}"] for name, n in top])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    ap.add_argument("--get", action="store_true", help="profile gets of 4 KiB instead of puts")
    ap.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        drive(args.drive, args.puts, args.concurrency, args.get)
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="pyspy-", dir=args.dir))
    raws = {role: args.dir.resolve() / f"pyspy_{role}.txt"
            for role in ("client", "coordinator", "replica")}
    nodes: list[NodeProcess] = []
    try:
        profile = init_cluster(scratch / "cluster")
        for role, site in (("replica", "dc2"), ("coordinator", "dc1")):
            cfg = scratch / "cluster" / f"{site}-n1" / "node.toml"
            set_write_policy(cfg, "each-site")
            node = SpiedNode(cfg, raws[role], args.rate)
            nodes.append(node)
            node.start()
        subprocess.run([*spy(raws["client"], args.rate), sys.executable, __file__, "--drive",
                        str(profile), "--puts", str(args.puts), "--concurrency",
                        str(args.concurrency), *(["--get"] if args.get else [])],
                       check=True, timeout=1800)
    finally:
        for node in nodes:
            node.stop()  # SIGTERM reaches py-spy, which writes its file and stops the node
        shutil.rmtree(scratch, ignore_errors=True)
    for role, raw in raws.items():
        deadline = time.monotonic() + 30
        while not raw.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        total, layers, top = summarise(raw, 15)
        per_put = 1e3 / args.rate / args.puts
        what = "get" if args.get else "put"
        print(f"\n{role}: {total} samples at {args.rate} Hz "
              f"(~{total * per_put:.3f} ms CPU per {what}, start-up and warm-up included)")
        print_shares(layers, top, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
