"""Restore drill: how fast a wiped node gets its data back, and how fast a client gets a tenant
back from the other site.

    python bench/restore_bench.py [--large 2000] [--small 20000] [--quick] [--json PATH]

1. ``hdsd init`` a 1+1 cluster (``each-site``), start both nodes and write ``--large`` 1 MiB
   objects and ``--small`` 4 KiB ones (unique contents: no deduplication) through dc1, with
   several clients at once.
2. Wipe dc2 the way the README says (a replaced disk: its ``data/store``, hints and Merkle
   snapshot go, ``node.toml``, certificates and keyring stay), start it and time the rebuild
   until ``hdsd status`` says ``done``: MiB/s and versions/s, from the node's own
   ``rebuild.started``/``finished`` and from the bench's clock (process start to done). Reads
   are sent to dc2 during the rebuild (they must be served: forwarded or local). Then the
   disk floor: the same bytes written as the log writes them, without the nodes (the
   rebuild's rate is reported as a share of it).
3. Stop dc1 and read a sample back from dc2 alone, byte for byte; and list every key at dc2
   alone: each must have the version, content id (a keyed hash of its bytes) and size dc1
   listed before the wipe.
4. Restart dc1, stop dc2, and restore from the other site as a client would: ``hdsd export``
   of the whole tenant (to /dev/null: the tar stream is built and checked, not stored), the
   same with ``--spool`` (each object read once, through a temporary copy), and a concurrent
   get of every key of the bucket (``--get-tasks`` at once).

``--prefill N`` measures the rebuild of a dense store instead: N 4 KiB versions written straight
into dc1's store before it starts (1M puts over TLS would take hours here), dc2 started empty,
checked by listing every key at dc2 alone (such versions are listed, never read).

Never asserts a time; prints a table and writes JSON. The machine may be shared: compare
figures measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import hdsd
from bench._harness import (
    NodeProcess,
    cluster_sealing,
    init_cluster,
    machine_info,
    prefill_store,
    print_table,
    write_json,
)

BUCKET = "restore"
MIB = 1 << 20


def _log(msg: str) -> None:
    print(f"[restore_bench] {msg}", file=sys.stderr, flush=True)


def _content(key: str, size: int) -> bytes:
    """Unique, reproducible bytes for *key* (the verification regenerates them)."""
    return random.Random(key).randbytes(size)


def _keys(large: int, small: int, medium: int = 0) -> list[tuple[str, int]]:
    out = [(f"large/{i:06d}", MIB) for i in range(large)]
    out += [(f"small/{i:07d}", 4096) for i in range(small)]
    out += [(f"medium/{i:07d}", 64 << 10) for i in range(medium)]
    random.Random(1).shuffle(out)  # mixed in time, as a hospital writes them
    return out


async def _write(profile: Path, keys: list[tuple[str, int]], tasks: int) -> float:
    queue = iter(keys)
    t0 = time.perf_counter()

    async def worker() -> None:
        async with hdsd.AsyncClient(profile, site="dc1") as c:
            for key, size in queue:
                await c.put(BUCKET, key, _content(key, size))

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return time.perf_counter() - t0


def _status(profile: Path, site: str) -> dict[str, Any]:
    with hdsd.Client(profile, site=site) as c:
        return c.status()


def _reads_during(profile: Path, keys: list[tuple[str, int]], stop: threading.Event,
                  out: dict[str, Any]) -> None:
    """Gets from dc2 while it rebuilds: every one must return the right bytes."""
    rng = random.Random(7)
    ok = failed = 0
    lat: list[float] = []
    errors: list[str] = []
    try:
        with hdsd.Client(profile, site="dc2") as c:
            while not stop.is_set():
                key, size = rng.choice(keys)
                t = time.perf_counter()
                try:
                    data = c.get(BUCKET, key)
                except hdsd.HdsdError as exc:
                    failed += 1
                    errors.append(f"{key}: {exc}")
                    continue
                lat.append(time.perf_counter() - t)
                if data == _content(key, size):
                    ok += 1
                else:
                    failed += 1
                    errors.append(f"{key}: wrong bytes")
                time.sleep(0.02)
    except hdsd.HdsdError as exc:
        errors.append(f"client: {exc}")
    lat.sort()
    out.update({"ok": ok, "failed": failed, "errors": errors[:5],
                "p50_ms": round(lat[len(lat) // 2] * 1e3, 2) if lat else None,
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2)
                if lat else None})


def _cpu_s(nd: NodeProcess) -> float:
    """CPU seconds (user + system) the node's process has used so far."""
    if nd.proc is None:
        return 0.0
    with open(f"/proc/{nd.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu(nd: NodeProcess) -> dict[str, float]:
    """CPU seconds by thread so far: ``event_loop`` (the main thread: the network path),
    ``workers`` (trio's worker threads: encoding, reads), ``store`` (the other live
    threads: the log writer, the audit log) and ``ended`` (threads gone since: each log
    segment's preparer, zero-filling it — the kernel's page-cache work — and idle workers).
    The page cache's cost swings from run to run on this VM: split this way, a change to the
    network path is not hidden by it."""
    if nd.proc is None:
        return {}
    pid = nd.proc.pid
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {"event_loop": 0.0, "workers": 0.0, "store": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        # trio names its worker threads ("Trio thread N"); Python's own threads keep the
        # process's name.
        kind = ("event_loop" if int(task.name) == pid else
                "workers" if comm.startswith("Trio") else "store")
        out[kind] = round(out[kind] + cpu, 2)
    out["ended"] = round(max(0.0, _cpu_s(nd) - sum(out.values())), 2)
    return out


def _spy(pid: int, out: Path, native: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy sampling *pid* into *out* (raw folded stacks) until SIGINT, if installed.
    *native* adds C frames (memmove, hashing, TLS): py-spy then pauses the process for each
    sample, so the run is slower and only its shares mean something."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    mode = ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate",
                             "50", *mode, "--threads", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _hot(path: Path, top: int = 12) -> list[tuple[str, float]]:
    """Share of samples by innermost hdsd function (what the node was doing, idle included)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        ours = [f for f in frames if "hdsd/" in f]
        leaf = frames[-1].split(" (")[0]
        name = (ours[-1].split(" (")[0] + " > " + leaf) if ours else leaf
        counts[name] = counts.get(name, 0) + int(n)
        total += int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(name, round(100 * c / max(1, total), 1)) for name, c in ranked]


def _rebuild(profile: Path, node: NodeProcess, keys: list[tuple[str, int]],
             total_bytes: int, timeout: float, source: NodeProcess,
             spy_dir: Path | None, native: bool = False) -> dict[str, Any]:
    data_dir = node.config.parent / "data"
    # A replaced disk: same identity, keys and config (a node never started has no store).
    shutil.rmtree(data_dir / "store", ignore_errors=not keys)
    for name in ("hints.sqlite", "merkle-trees.bin"):
        (data_dir / name).unlink(missing_ok=True)
    t0 = time.monotonic()
    source_cpu = _cpu_s(source)
    source_threads = _thread_cpu(source)
    node.start()
    started_s = time.monotonic() - t0
    spies = {}
    if spy_dir is not None:
        for name, nd in (("rebuilding", node), ("source", source)):
            if nd.proc is not None and (sp := _spy(nd.proc.pid, spy_dir / f"{name}.txt",
                                                   native)):
                spies[name] = sp
    reads: dict[str, Any] = {}
    stop = threading.Event()
    # Reads during the rebuild (prefilled versions cannot be read: none then).
    reader = threading.Thread(target=_reads_during, args=(profile, keys, stop, reads))
    if keys:
        reader.start()
    samples: list[dict[str, Any]] = []
    try:
        while True:
            rebuild = _status(profile, "dc2")["rebuild"]
            if rebuild is not None and rebuild.get("state") == "done":
                break
            if rebuild is not None:
                samples.append({"t": round(time.monotonic() - t0, 2),
                                **{k: v for k, v in rebuild.items()
                                   if isinstance(v, (int, float, str))}})
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"rebuild not done after {timeout} s: {rebuild}")
            time.sleep(0.25)
    finally:
        stop.set()
        for sp in spies.values():
            sp.send_signal(signal.SIGINT)
            sp.wait(60)
        if keys:
            reader.join()
    wall = time.monotonic() - t0
    after = _thread_cpu(source)
    threads = {"rebuilding": _thread_cpu(node),
               "source": {k: round(v - source_threads.get(k, 0.0), 2) for k, v in after.items()}}
    cpu = {"rebuilding_s": round(_cpu_s(node), 2),
           "source_s": round(_cpu_s(source) - source_cpu, 2)}
    # The machine is shared: the CPU both nodes spent is what the load cannot distort much.
    cpu["mib_per_cpu_s"] = round(total_bytes / MIB / max(1e-3, sum(cpu.values())), 1)
    hot = {name: _hot(spy_dir / f"{name}.txt") for name in spies
           if spy_dir is not None and (spy_dir / f"{name}.txt").exists()}
    node_s = rebuild["finished"] - rebuild["started"]
    return {"versions_received": rebuild["versions_received"], "node_seconds": round(node_s, 2),
            "wall_seconds": round(wall, 2), "start_seconds": round(started_s, 2),
            "mib_s": round(total_bytes / MIB / node_s, 1), "threads_cpu_s": threads,
            "versions_s": round(rebuild["versions_received"] / node_s, 1), "cpu": cpu,
            "status": rebuild, "reads_during": reads, "progress_samples": samples[-20:],
            "round_failures": [line for line in node.stderr_lines
                               if "repair_failed" in line][:20], "hot": hot}


_SEGMENT = 256 << 20  # the log's default segment size
_WINDOW = 8 << 20  # a rebuild commits windows of about this much, one fdatasync each


def _disk_floor(directory: Path, total: int) -> dict[str, Any]:
    """What the disk alone takes for *total* bytes written the way the log writer writes a
    rebuild: segments preallocated and zero-filled ahead (as its preparer thread does), then
    windows of 8 MiB, each written and fdatasync'd. No hashing, no network, no Python per
    record: the floor a rebuild can approach on this machine, measured in the same run
    (the kernel's cost of fresh page-cache pages swings with memory pressure on this VM)."""
    path = directory / "disk-floor.bin"
    window = os.urandom(_WINDOW)
    prepare_s = prepare_cpu = write_s = write_cpu = 0.0
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        zeros = bytes(4 << 20)
        for base in range(0, total, _SEGMENT):
            seg = min(_SEGMENT, total - base)
            t, c = time.perf_counter(), time.thread_time()
            os.posix_fallocate(fd, base, seg)
            for pos in range(base, base + seg, len(zeros)):
                os.pwrite(fd, zeros[:base + seg - pos], pos)
            os.fsync(fd)
            prepare_s += time.perf_counter() - t
            prepare_cpu += time.thread_time() - c
            t, c = time.perf_counter(), time.thread_time()
            for pos in range(base, base + seg, _WINDOW):
                os.pwrite(fd, window[:base + seg - pos], pos)
                os.fdatasync(fd)
            write_s += time.perf_counter() - t
            write_cpu += time.thread_time() - c
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    mib = total / MIB
    return {"mib": round(mib, 1),
            "write_mib_s": round(mib / write_s, 1),
            "write_ms_per_mib": round(1000 * write_cpu / mib, 2),
            "prepare_mib_s": round(mib / prepare_s, 1),
            "prepare_ms_per_mib": round(1000 * prepare_cpu / mib, 2),
            # The node zero-fills the next segment in a thread of its own while the log
            # writer fills the current one: the slower of the two bounds it.
            "mib_s": round(mib / max(write_s, prepare_s), 1),
            "serial_mib_s": round(mib / (write_s + prepare_s), 1),
            "cpu_ms_per_mib": round(1000 * (write_cpu + prepare_cpu) / mib, 2)}


def _verify(profile: Path, keys: list[tuple[str, int]], sample: int) -> dict[str, Any]:
    picked = random.Random(3).sample(keys, min(sample, len(keys)))
    bad: list[str] = []
    with hdsd.Client(profile, site="dc2") as c:
        for key, size in picked:
            try:
                if c.get(BUCKET, key) != _content(key, size):
                    bad.append(key)
            except hdsd.HdsdError as exc:
                bad.append(f"{key}: {exc}")
    return {"checked": len(picked), "bad": len(bad), "bad_keys": bad[:10]}


async def _listing(profile: Path, site: str) -> dict[str, tuple[str, str, int]]:
    """Every key of the bucket at *site*: its current version id, content id and size."""
    async with hdsd.AsyncClient(profile, site=site) as c:
        return {info.key: (info.version, info.content_hash, info.size)
                async for info in c.list_all(BUCKET)}


def _compare(before: dict[str, tuple[str, str, int]], after: dict[str, tuple[str, str, int]]
             ) -> dict[str, Any]:
    """The rebuilt node's whole listing against the source's: same keys, versions, content
    ids (keyed hashes of the bytes) and sizes — every key, not a sample."""
    missing = [k for k in before if k not in after]
    wrong = [k for k in before if k in after and after[k] != before[k]]
    extra = [k for k in after if k not in before]
    return {"keys": len(before), "missing": len(missing), "wrong": len(wrong),
            "extra": len(extra), "examples": (missing + wrong + extra)[:10]}


class _TarDigest:
    """The archive's SHA-256 as it streams by, and one that leaves out what differs between
    two exports of the same data: the export's time (``exported_at`` in the manifest's first
    line, the mtime in the manifest's and checksums' headers). Two trees' exports of one
    cluster must have the same *content* digest: the same archive but for that time."""

    def __init__(self) -> None:
        self.raw = hashlib.sha256()
        self.content = hashlib.sha256()
        self.head = bytearray()  # the bytes up to the checksums member's data
        self.manifest: bytes | None = None
        self.body_at = -1  # where the checksums member's data starts, once known
        self.size = 0

    def update(self, piece: bytes) -> None:
        self.raw.update(piece)
        self.size += len(piece)
        if self.body_at >= 0:
            self.content.update(piece)
            return
        self.head += piece
        self._parse()

    def _parse(self) -> None:
        # Two plain ustar headers (short ASCII names: no pax header precedes them).
        if len(self.head) < 512:
            return
        size = int(self.head[124:136].split(b"\0")[0] or b"0", 8)
        second = 512 + size + (-size % 512)
        if len(self.head) < second + 512:
            return
        assert self.head[:14] == b"manifest.jsonl" and self.head[second:second + 10] == \
            b"SHA256SUMS", "not an hdsd export"
        lines = bytes(self.head[512:512 + size]).split(b"\n", 1)
        first = json.loads(lines[0])
        first.pop("exported_at")
        self.manifest = json.dumps(first, sort_keys=True).encode() + b"\n" + lines[1]
        self.content.update(self.manifest)
        self.body_at = second + 512
        self.content.update(bytes(self.head[self.body_at:]))
        self.head = bytearray()


def _export(profile: Path, site: str, node: NodeProcess, spool: Path | None = None,
            tree: Path | None = None) -> dict[str, Any]:
    """One ``hdsd export`` of the tenant; *tree*: another checkout's ``hdsd`` (run from
    there, with this interpreter) instead of this one's."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    node_cpu = _cpu_s(node)
    t0 = time.perf_counter()
    extra = ["--spool", str(spool)] if spool is not None else []
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen([sys.executable, "-m", "hdsd", "--profile", str(profile), "--site",
                             site, "--timeout", "600", "export", _tenant(profile), "-",
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tree, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()))  # type: ignore
    drain.start()
    digest = _TarDigest()
    while piece := proc.stdout.read(1 << 20):  # counted and hashed, never kept
        digest.update(piece)
    tar_bytes = digest.size
    proc.wait(7200)
    drain.join()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    cpu = {"client_s": round(client_cpu, 2), "node_s": round(_cpu_s(node) - node_cpu, 2)}
    cpu["tar_mib_per_cpu_s"] = round(tar_bytes / MIB / max(1e-3, sum(cpu.values())), 1)
    stderr = b"".join(err).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"export failed: {stderr}")
    # The tar went to stdout; the summary (--json) is stderr's JSON line.
    summary: dict[str, Any] = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    return {"seconds": round(seconds, 2), "tar_bytes": tar_bytes,
            "tar_sha256": digest.raw.hexdigest()[:16],
            "content_sha256": digest.content.hexdigest()[:16],
            "mib_s": round(tar_bytes / MIB / seconds, 1), "cpu": cpu, "summary": summary}


async def _get_all(profile: Path, site: str, tasks: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with hdsd.AsyncClient(profile, site=site) as lister:
        names = [info.key async for info in lister.list_all(BUCKET)]
    queue = iter(names)
    got = [0, 0]

    async def worker() -> None:
        async with hdsd.AsyncClient(profile, site=site) as c:
            for key in queue:
                data = await c.get(BUCKET, key)
                got[0] += len(data)
                got[1] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    seconds = time.perf_counter() - t0
    return {"objects": got[1], "bytes": got[0], "seconds": round(seconds, 2),
            "mib_s": round(got[0] / MIB / seconds, 1), "objects_s": round(got[1] / seconds, 1),
            "tasks": tasks}


async def _get_many_all(profile: Path, site: str) -> dict[str, Any]:
    """Every key of the bucket through one client's bulk downloads (GetMany), in order."""
    t0 = time.perf_counter()
    async with hdsd.AsyncClient(profile, site=site) as c:
        items = [(BUCKET, info.key, info.version) async for info in c.list_all(BUCKET)]
        got = [0, 0]
        async with contextlib.aclosing(c.get_many(items)) as fetched:
            async for f in fetched:
                if f.error is not None:
                    raise f.error
                got[0] += len(f.data)
                got[1] += 1
    seconds = time.perf_counter() - t0
    return {"objects": got[1], "bytes": got[0], "seconds": round(seconds, 2),
            "mib_s": round(got[0] / MIB / seconds, 1), "objects_s": round(got[1] / seconds, 1)}


def _tenant(profile: Path) -> str:
    return next(line.split("=", 1)[1].strip().strip('"')
                for line in profile.read_text().splitlines() if line.startswith("tenant"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", type=int, default=2000, help="1 MiB objects")
    ap.add_argument("--small", type=int, default=20000, help="4 KiB objects")
    ap.add_argument("--medium", type=int, default=0,
                    help="64 KiB objects (one chunk each: the per-chunk costs of a rebuild)")
    ap.add_argument("--quick", action="store_true", help="200 + 2,000 objects: a smoke run")
    ap.add_argument("--write-tasks", type=int, default=16)
    ap.add_argument("--get-tasks", type=int, default=8)
    ap.add_argument("--sample", type=int, default=500, help="keys verified with dc1 stopped")
    ap.add_argument("--node-toml", action="append", default=[],
                    help="extra TOML appended to both nodes' node.toml (e.g. a [repair] rate)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/restore_bench.json"))
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    ap.add_argument("--export-only", action="store_true",
                    help="skip the wipe and the rebuild: write, then the client-side restore only")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the plain export this many times (figures of each, and the best)")
    ap.add_argument("--compare-tree", type=Path, default=None,
                    help="another checkout of hdsd (e.g. main's): its export alternates with "
                         "this tree's on the same cluster (this tree's nodes), --repeat times "
                         "each, and must write the same archive but for the export's time")
    ap.add_argument("--rebuild-only", action="store_true",
                    help="stop after the rebuild and its verification (no client-side restore)")
    ap.add_argument("--prefill", type=int, default=0,
                    help="instead of puts, write this many 4 KiB versions straight into dc1's "
                         "store (a dense store: 1M takes minutes, not hours); rebuild only, "
                         "verified by listing")
    ap.add_argument("--spy", type=Path, default=None,
                    help="sample both nodes with py-spy during the rebuild into this directory "
                         "(where the time goes; pip install py-spy)")
    ap.add_argument("--spy-native", action="store_true",
                    help="with --spy: C frames too (memmove, TLS, hashing); slows the nodes")
    args = ap.parse_args()
    if args.spy is not None:
        args.spy.mkdir(parents=True, exist_ok=True)
    large, small = (200, 2000) if args.quick else (args.large, args.small)
    if args.prefill:
        large, small, args.rebuild_only = 0, 0, True
    keys = _keys(large, small, args.medium)
    total = sum(size for _, size in keys) + 4096 * args.prefill

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cluster"
        profile = init_cluster(root)
        configs = {s: root / f"{s}-n1" / "node.toml" for s in ("dc1", "dc2")}
        for cfg in configs.values():  # no periodic round to muddle the timing
            extra = "\n".join(args.node_toml)
            text = cfg.read_text() + "\n" + extra + "\n"
            if "[repair]" not in extra:
                text += "\n[repair]\ninterval_s = 0\nscrub_interval_h = 0\n"
            cfg.write_text(text)
        nodes = {s: NodeProcess(cfg) for s, cfg in configs.items()}
        results: dict[str, Any] = {"large_objects": large, "small_objects": small,
                                   "medium_objects": args.medium,
                                   "prefilled": args.prefill,
                                   "total_mib": round(total / MIB, 1),
                                   "versions": len(keys) + args.prefill}
        try:
            if args.prefill:
                t0 = time.perf_counter()
                prefill_store(configs["dc1"].parent / "data" / "store", _tenant(profile),
                              BUCKET, args.prefill, "dc1-n1", cluster_sealing(root))
                write_s = time.perf_counter() - t0
                _log(f"{args.prefill:,} versions written into dc1's store in {write_s:.0f} s")
                nodes["dc1"].start()
            else:
                for node in nodes.values():
                    node.start()
                _log(f"writing {large:,} x 1 MiB + {small:,} x 4 KiB + {args.medium:,} x 64 KiB "
                     f"({total / MIB:,.0f} MiB)")
                write_s = trio.run(_write, profile, keys, args.write_tasks)
            results["write"] = {"seconds": round(write_s, 2),
                                "mib_s": round(total / MIB / write_s, 1),
                                "versions_s": round(results["versions"] / write_s, 1)}
            if args.export_only:
                nodes["dc2"].stop()
                _client_restore(profile, nodes, results, Path(tmp), args.get_tasks,
                                args.repeat, args.compare_tree)
                return _report(args, results, total)
            listed = trio.run(_listing, profile, "dc1")
            nodes["dc2"].stop()
            _log("dc2 wiped; rebuilding")
            results["rebuild"] = _rebuild(profile, nodes["dc2"], keys, total, 7200, nodes["dc1"],
                                          args.spy, args.spy_native)
            _log(f"rebuilt: {results['rebuild']['mib_s']} MiB/s; the disk floor")
            results["disk_floor"] = _disk_floor(root, total)
            results["rebuild"]["of_disk_floor"] = round(
                results["rebuild"]["mib_s"] / results["disk_floor"]["mib_s"], 2)
            _log("verifying with dc1 stopped")
            nodes["dc1"].stop()
            results["verify"] = _verify(profile, keys, args.sample)
            results["verify"]["listing"] = _compare(listed, trio.run(_listing, profile, "dc2"))
            if not args.rebuild_only:
                nodes["dc1"].start()
                nodes["dc2"].stop()
                _client_restore(profile, nodes, results, Path(tmp), args.get_tasks,
                                args.repeat, args.compare_tree)
        finally:
            for node in nodes.values():
                node.stop()
    _report(args, results, total)


def _client_restore(profile: Path, nodes: dict[str, NodeProcess], results: dict[str, Any],
                    tmp: Path, get_tasks: int, repeat: int = 1, compare: Path | None = None
                    ) -> None:
    """Restore from dc1 (dc2 stopped) as a client would: export, export --spool, gets."""
    _log("client-side restore from dc1: export")
    runs: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for i in range(max(1, repeat)):
        runs.append(_export(profile, "dc1", nodes["dc1"]))
        _log(f"export {i + 1}: {runs[-1]['mib_s']} MiB/s")
        if compare is not None:
            other.append(_export(profile, "dc1", nodes["dc1"], tree=compare))
            _log(f"export {i + 1} of {compare}: {other[-1]['mib_s']} MiB/s")
    results["export"] = max(runs, key=lambda r: r["mib_s"])
    if repeat > 1:
        results["export_runs"] = runs
    if compare is not None:
        results["export_compared"] = {"tree": str(compare), "runs": other,
                                      "best": max(other, key=lambda r: r["mib_s"])}
        contents = {r["content_sha256"] for r in runs + other}
        if len(contents) != 1:
            raise RuntimeError(f"the two trees' exports differ (content digests {contents})")
    _log(f"export: {results['export']['mib_s']} MiB/s; export --spool")
    spool = tmp / "spool"
    spool.mkdir()
    results["export_spool"] = _export(profile, "dc1", nodes["dc1"], spool)
    if results["export_spool"]["content_sha256"] != results["export"]["content_sha256"]:
        raise RuntimeError("the spooled export's tar differs")
    _log(f"export --spool: {results['export_spool']['mib_s']} MiB/s; get of every key")
    results["get_all"] = trio.run(_get_all, profile, "dc1", get_tasks)
    if hasattr(hdsd.AsyncClient, "get_many"):  # (a tree from before GetMany has none)
        _log("get of every key by bulk downloads (one client)")
        results["get_many_all"] = trio.run(_get_many_all, profile, "dc1")


def _report(args: argparse.Namespace, results: dict[str, Any], total: int) -> None:
    rows: list[list[str]] = []
    if "rebuild" in results:
        rows += _rebuild_rows(args, results, total)
    if "export" in results:
        ga = results["get_all"]
        exports = [("hdsd export", results["export"]),
                   ("hdsd export --spool", results["export_spool"])]
        if "export_compared" in results:
            cmp = results["export_compared"]
            exports.insert(1, (f"hdsd export of {cmp['tree']}", cmp["best"]))
            rows.append(["hdsd export, every run: this tree / the other (MiB/s)",
                         " ".join(str(r["mib_s"]) for r in results.get("export_runs",
                                                                       [results["export"]]))
                         + " / " + " ".join(str(r["mib_s"]) for r in cmp["runs"])
                         + " (same archive but for its time)", "—"])
        elif "export_runs" in results:
            rows.append(["hdsd export, every run (MiB/s)",
                         " ".join(str(r["mib_s"]) for r in results["export_runs"]), "—"])
        for name, ex in exports:
            rows += [
                [f"client restore: {name}", f"{ex['seconds']} s: {ex['mib_s']} MiB/s of tar",
                 "≥ 150 MiB/s"],
                [f"{name}: CPU (client + node)",
                 f"{ex['cpu']['client_s']} + {ex['cpu']['node_s']} s: "
                 f"{ex['cpu']['tar_mib_per_cpu_s']} MiB per CPU-second", "—"]]
        rows += [
            [f"client restore: get every key ({ga['tasks']} tasks)",
             f"{ga['seconds']} s: {ga['mib_s']} MiB/s, {ga['objects_s']:,} objects/s", "—"],
        ]
        if "get_many_all" in results:
            gm = results["get_many_all"]
            rows.append(["client restore: every key by get_many (one client)",
                         f"{gm['seconds']} s: {gm['mib_s']} MiB/s, {gm['objects_s']:,} "
                         "objects/s", "—"])
    for name, ranked in results.get("rebuild", {}).get("hot", {}).items():
        print(f"\nrebuild, {name} node: samples by innermost hdsd function (idle included)")
        print_table(["function > leaf", "%"], [[n, f"{p}"] for n, p in ranked])
    print(f"\nrestore_bench: 1+1 cluster on this machine ({os.cpu_count()} cores, shared)")
    print_table(["measure", "value", "target"], rows)
    write_json(args.json, {"machine": machine_info(), "results": results})
    print(f"\nJSON: {args.json}")


def _rebuild_rows(args: argparse.Namespace, results: dict[str, Any], total: int
                  ) -> list[list[str]]:
    rb = results["rebuild"]
    rows = [
        ["data written" + (" (prefilled)" if args.prefill else ""),
         f"{total / MIB:,.0f} MiB, {results['versions']:,} versions "
         f"({results['write']['mib_s']} MiB/s)", "—"],
        ["rebuild (node clock)", f"{rb['node_seconds']} s: {rb['mib_s']} MiB/s, "
                                 f"{rb['versions_s']:,} versions/s", "≥ 150 MiB/s, ≥ 3,000 v/s"],
        ["rebuild (process start to done)", f"{rb['wall_seconds']} s", "—"],
        ["disk floor, same bytes (zero-fill and 8 MiB writes with fdatasync, overlapped)",
         f"{results['disk_floor']['mib_s']} MiB/s, "
         f"{results['disk_floor']['cpu_ms_per_mib']} ms CPU per MiB "
         f"(writes alone {results['disk_floor']['write_mib_s']} MiB/s); "
         f"rebuild at {rb['of_disk_floor']} x the floor", "—"],
        ["rebuild CPU (rebuilding + source node)",
         f"{rb['cpu']['rebuilding_s']} + {rb['cpu']['source_s']} s: "
         f"{rb['cpu']['mib_per_cpu_s']} MiB per CPU-second", "—"],
        ["reads during rebuild", f"{rb['reads_during'].get('ok')} ok, "
                                 f"{rb['reads_during'].get('failed')} failed, p50 "
                                 f"{rb['reads_during'].get('p50_ms')} ms", "0 failed"],
        ["verify with dc1 stopped", f"{results['verify']['checked']} read back, "
                                    f"{results['verify']['bad']} bad", "0 bad"],
        ["every key listed with dc1 stopped",
         f"{results['verify']['listing']['keys']:,} keys: "
         f"{results['verify']['listing']['missing']} missing, "
         f"{results['verify']['listing']['wrong']} other version/content id, "
         f"{results['verify']['listing']['extra']} extra", "0, 0, 0"],
    ]
    return rows


if __name__ == "__main__":
    main()
