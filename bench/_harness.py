"""Helpers shared by the benchmarks: percentiles, the disk floor, machine info, real nodes, tables.

Nothing here asserts a time. The node helpers start the real ``hdsd`` CLI as subprocesses so a
benchmark measures what an operator runs, and :class:`NodeProcess` always stops what it started
(SIGTERM, then kill) — use it as a context manager.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio
from _ports import free_ports

from hdsd.catalog import KEYRING_FILE, load_master_key
from hdsd.pipeline import TenantNameSealing

if TYPE_CHECKING:
    import hdsd

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# -- statistics ----------------------------------------------------------------------------
def pct(samples: Sequence[float], q: float) -> float:
    """The *q* quantile (0..1) of *samples*, nearest rank: an observed value, never interpolated."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p999/max in milliseconds of *samples* given in seconds."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": ordered[-1] * 1e3}


# -- the disk floor ------------------------------------------------------------------------
def fsync_floor(directory: str | os.PathLike[str], size: int, n: int, *,
                zero_filled: bool = True) -> list[float]:
    """Seconds per ``pwrite`` + ``fdatasync`` of *size* random bytes, appended one after the
    other into a preallocated file in *directory* (zero-filled, like the store's spare segments,
    unless *zero_filled* is false: fallocate only). The file is removed afterwards."""
    path = os.path.join(directory, f"floor-{size}.bin")
    total = size * (n + 2)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, total)
        if zero_filled:
            zeros = bytes(min(total, 8 << 20))
            for off in range(0, total, len(zeros)):
                os.pwrite(fd, zeros[: total - off], off)
        os.fsync(fd)
        data = os.urandom(size)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, data, i * size)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


# -- reporting -----------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for dist in ("hdsd", "trio", "msgpack", "zstandard", "pynacl", "blake3", "xxhash",
                 "cryptography"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "?"
    import ssl

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "openssl": ssl.OPENSSL_VERSION, "versions": versions}


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns sized to their widest cell; the last column is not padded."""
    every = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in every) for i in range(len(header) - 1)]
    for n, r in enumerate(every):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
        if n == 0:
            print("-" * (sum(widths) + 2 * len(widths) + len(r[-1])))


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


# -- real nodes ----------------------------------------------------------------------------
def init_cluster(root: Path) -> Path:
    """``hdsd init ROOT`` on free ports (two sites, one node each); returns the admin profile.

    Subprocesses run outside the work tree (``python -m`` puts the working directory first on
    ``sys.path``), so ``PYTHONPATH`` chooses which hdsd is measured, e.g. a snapshot of HEAD."""
    ports = free_ports(2)
    proc = subprocess.run([sys.executable, "-m", "hdsd", "init", str(root), "--ports",
                           ",".join(map(str, ports))], capture_output=True, timeout=300,
                          cwd=root.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"hdsd init failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')}")
    return root / "client.toml"


def set_write_policy(config: Path, policy: str) -> bool:
    """Make the node at *config* acknowledge under *policy* (e.g. ``local``: its own fsync only,
    for a single-node measurement once replication exists). Returns False, changing nothing,
    when this hdsd has no write policies yet."""
    from dataclasses import fields

    from hdsd.node import NodeConfig

    if "write_policy" not in {f.name for f in fields(NodeConfig)}:
        return False
    lines = config.read_text().splitlines()
    kept = [ln for ln in lines if not ln.strip().startswith("write_policy")]
    at = kept.index("[cluster]") + 1
    config.write_text("\n".join([*kept[:at], f'write_policy = "{policy}"', *kept[at:]]) + "\n")
    return True


class NodeProcess:
    """A real ``hdsd serve`` subprocess; ``with NodeProcess(cfg) as node:`` starts it and waits
    until it listens, and always stops it on the way out (also on error or Ctrl-C).

    *prefix* runs the node under another program, e.g. ``["-m", "cProfile", "-o", PATH]``
    (inserted between the interpreter and ``-m hdsd``); *wrapper* runs the interpreter itself
    under one, e.g. valgrind (put before it), which may need a longer *start_timeout*.
    """

    def __init__(self, config: Path, *, prefix: Sequence[str] = (), wrapper: Sequence[str] = (),
                 start_timeout: float = START_TIMEOUT) -> None:
        self.config = config
        self.prefix = list(prefix)
        self.wrapper = list(wrapper)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._pump_thread: threading.Thread | None = None

    def __enter__(self) -> NodeProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The argv to run (a subclass may run another server that also prints
        ``listening on`` on stderr once it accepts connections)."""
        return [*self.wrapper, sys.executable, *self.prefix, "-m", "hdsd", "serve", "--config",
                str(self.config), "--log-level", "warning"]

    def start(self) -> None:
        self._listening.clear()  # a restart must wait for the new process, not the old one
        argv = self.command()
        # Its own process group: a Ctrl-C in the terminal reaches only the benchmark, which
        # then stops the node itself, in order.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     cwd=self.config.parent)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node {self.config} did not start:\n{self.log()}")

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_lines.append(line)
            if "listening on" in line:
                self._listening.set()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return "\n".join(self.stderr_lines[-100:])

    def stop(self) -> int | None:
        """SIGTERM (the graceful path: the store is flushed, a profiler writes its file), then
        SIGKILL if it has not exited within :data:`STOP_TIMEOUT`. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except BaseException:  # too slow, or a second Ctrl-C: do not leave it behind
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
                    if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                        raise
        finally:
            if self._pump_thread is not None:
                self._pump_thread.join(5)
            if proc.stderr is not None:
                proc.stderr.close()
        return proc.returncode


# -- profiling a node ----------------------------------------------------------------------
# Runs ``-m hdsd ...`` with a cProfile that is off until SIGUSR1 and written to argv[1] (via a
# temporary name, so it appears whole) on SIGUSR2: the profile covers exactly the measured
# window, not start-up. The node leaves both signals alone; Python runs the handlers in its
# main thread, the one trio runs in, which is the thread cProfile then profiles.
_PROFILER = ["-c", """
import cProfile, os, runpy, signal, sys
out, rest = sys.argv[1], sys.argv[2:]
assert rest[:2] == ["-m", "hdsd"], rest
prof = cProfile.Profile()
def start(*_):
    prof.enable()
def stop(*_):
    prof.disable()
    prof.dump_stats(out + ".tmp")
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["hdsd", *rest[2:]]
runpy.run_module("hdsd", run_name="__main__", alter_sys=True)
"""]


def profiler_prefix(out: Path) -> list[str]:
    """The interpreter arguments that run a node under the profiler above, writing to *out*
    (made absolute, its directory created: the node runs in its config's directory, where a
    relative path meant from the caller's would not exist, and the profile was never written
    — the benchmark then waited for it for ever)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    return [*_PROFILER, str(out)]


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by process *pid* (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each thread of *pid*, by thread id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


Category = tuple[str, Callable[[str, str], bool]]


def profile_breakdown(path: str | os.PathLike[str], categories: Sequence[Category],
                      top: int = 15) -> tuple[list[tuple[str, float, int]],
                                              list[tuple[str, float, float, int]]]:
    """Self time of a cProfile dump grouped by category: [(category, seconds, calls)], largest
    first; and the *top* functions by self time: [(name, self s, cumulative s, calls)].

    A function belongs to the first category whose predicate accepts ``(filename, function
    name)``. The self time of a function no category claims (builtins, the standard library) is
    charged to its callers' categories in proportion to the time each caller spent in it,
    walking up through unclaimed callers: ``len`` called by the wire codec is wire time."""
    import pstats

    Key = tuple[str, int, str]
    stats: dict[Key, tuple[int, int, float, float, dict[Key, tuple[Any, ...]]]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    claimed = {k: next((n for n, accept in categories if accept(k[0], k[2])), None)
               for k in stats}
    resolved: dict[Key, dict[str, float]] = {}

    def shares(key: Key, depth: int = 0) -> dict[str, float]:
        """How this function's time splits over categories (fractions summing to 1)."""
        if (name := claimed.get(key)) is not None:
            return {name: 1.0}
        if key in resolved:
            return resolved[key]
        resolved[key] = {"other": 1.0}  # breaks recursion cycles
        callers = stats[key][4] if key in stats else {}
        total = sum(c[2] for c in callers.values())
        if depth > 20 or not callers or total <= 0:
            return resolved[key]
        out: dict[str, float] = {}
        for caller, c in callers.items():
            for name, frac in shares(caller, depth + 1).items():
                out[name] = out.get(name, 0.0) + frac * c[2] / total
        resolved[key] = out
        return out

    groups: dict[str, list[float]] = {}
    rows = []
    for key, (_cc, calls, tottime, cumtime, _callers) in stats.items():
        for name, frac in shares(key).items():
            g = groups.setdefault(name, [0.0, 0.0])
            g[0] += tottime * frac
            g[1] += calls * frac
        filename, line, func = key
        short = filename if filename == "~" else "/".join(Path(filename).parts[-2:])
        rows.append((f"{short}:{line}:{func}", tottime, cumtime, calls))
    grouped = sorted(((n, t, round(c)) for n, (t, c) in groups.items()), key=lambda r: -r[1])
    rows.sort(key=lambda r: -r[1])
    return grouped, rows[:top]


async def timed_puts(client: hdsd.AsyncClient, prefix: str, n: int, data: bytes,
                     samples: list[float]) -> None:
    """*n* sequential puts of *data*, appending each one's latency (seconds) to *samples*."""
    for i in range(n):
        t0 = time.perf_counter()
        await client.put("bench", f"{prefix}/{i:07d}", data)
        samples.append(time.perf_counter() - t0)


async def concurrently(n: int, job: Callable[[int], Awaitable[None]]) -> float:
    """Run ``job(0..n-1)`` at once; the wall-clock seconds they took together."""
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(job, i)
    return time.perf_counter() - t0


def wait_merkle_ready(profile: Path) -> None:
    """Block until both sites' nodes say their Merkle trees are ready (a prefilled store is
    followed at start: figures taken before that measure the catch-up, not the node)."""
    import hdsd

    for site in ("dc1", "dc2"):
        while True:
            with hdsd.Client(profile, site=site) as c:
                if c.status()["maintenance"]["merkle"]["ready"]:
                    break
            time.sleep(0.5)


def cluster_sealing(root: Path) -> TenantNameSealing:
    """The tenants' keys `hdsd init` gave the cluster under *root*: names written offline into
    a node's store must be sealed with them, or the node cannot open them."""
    from hdsd.catalog import Keyring  # a bench writes a store offline, as no client can
    from hdsd.pipeline import TenantKeys

    ring = Keyring(root / "dc1-n1" / "data" / KEYRING_FILE, load_master_key(root / "master.key"))
    cache: dict[str, TenantKeys | None] = {}

    def lookup(tenant: str) -> TenantKeys | None:
        if tenant not in cache:
            cache[tenant] = ring.get(tenant)
        return cache[tenant]
    return TenantNameSealing(lookup)


def prefill_name(i: int) -> str:
    """The key of the *i*-th version :func:`prefill_store` writes."""
    import hashlib

    return "p/" + hashlib.blake2b(i.to_bytes(8, "big"), digest_size=8).hexdigest()


def prefill_store(store_dir: Path, tenant: str, bucket: str, n: int, node: str,
                  sealing: TenantNameSealing) -> None:
    """*n* 4 KiB inline versions written straight into a stopped node's store, 10,000 per
    commit: n puts over TLS would take the whole run. They are not sealed as a node seals
    payloads, so they are listed and copied as stored, never read."""
    import hashlib

    from hdsd.store import Store, Version  # a bench writes a store offline, as no client can

    payload = os.urandom(4096)
    with Store.open(store_dir, segment_bytes=64 << 20, sealing=sealing) as store:
        batch: list[Version] = []
        for i in range(n):
            cid = hashlib.blake2b(i.to_bytes(8, "big")).digest()[:32]
            batch.append(Version(tenant, bucket, prefill_name(i), (1 << 40) + i, node, 4096,
                                 cid, (cid,), inline=payload))
            if len(batch) == 10_000:
                store.commit_sync(batch)
                batch = []
        if batch:
            store.commit_sync(batch)
