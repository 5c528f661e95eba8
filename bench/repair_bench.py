"""Anti-entropy benchmark: two real nodes (one per site) holding N versions each.

    python bench/repair_bench.py [--versions 1000000] [--diverge 0.01] [--quick] [--json PATH]

Set-up (not measured as repair): ``hdsd init`` a two-site cluster, then write N versions
straight into each node's store before the nodes first start (tiny inline versions, the same
on both sides), plus, for the divergence phase, ``diverge x N`` keys written on one side only
(half on each side, 4 KiB payloads). Versions are written through :class:`hdsd.store.Store`, not
through puts: a million puts over TLS would take the whole run; repair moves stored records and
never decrypts them, so what it measures is the same.

Phases, each reported with its figures:

1. start both nodes and time until their Merkle trees have followed the whole index;
2. identical replicas (before the divergent keys are added): one repair round, duration and
   bytes exchanged;
3. divergent replicas: one repair round, duration, bytes exchanged and the ratio to the
   differing data (the record bytes of the versions one side lacked);
4. put latency (4 KiB, one client) without a repair, then during the repair of another
   divergent set: p50/p99 and the ratio.

Targets (issue #5): identical compared in <= 5 s with <= 1 MiB exchanged; 1 % divergence
repaired in <= 30 s with traffic <= 1.5 x the differing data; p99 put latency during a repair
<= 2 x without. Never asserts; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hdsd
from bench._harness import (
    NodeProcess,
    cluster_sealing,
    init_cluster,
    latency_ms,
    machine_info,
    print_table,
    write_json,
)
from hdsd._packing import packb
from hdsd.pipeline import TenantNameSealing
from hdsd.store import Store, Version

SEALING: TenantNameSealing | None = None  # set once the cluster exists

BUCKET = "bench"
SEGMENT_MIB = 64


def _log(msg: str) -> None:
    print(f"[repair_bench] {msg}", file=sys.stderr, flush=True)


def _version(tenant: str, key: str, hlc: int, node: str, size: int) -> Version:
    payload = (key.encode() * (size // max(1, len(key)) + 1))[:size]
    cid = os.urandom(32)
    return Version(tenant, BUCKET, key, hlc, node, size, cid, (cid,), inline=payload)


def _fill(store_dir: Path, tenant: str, keys: range, prefix: str, size: int,
          node: str) -> int:
    """Write versions for *keys* into the store at *store_dir*; returns their record bytes."""
    total = 0
    assert SEALING is not None
    with Store.open(store_dir, segment_bytes=SEGMENT_MIB << 20, sealing=SEALING) as store:
        batch: list[Version] = []
        for i in keys:
            v = _version(tenant, f"{prefix}{i:08d}", (1 << 40) + i, node, size)
            total += len(packb(v.to_wire()))
            batch.append(v)
            if len(batch) == 10_000:
                store.commit_sync(batch)
                batch = []
        if batch:
            store.commit_sync(batch)
    return total


def _cli(profile: Path, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "hdsd", "--profile", str(profile),
                           "--timeout", "600", *args], capture_output=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"hdsd {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return json.loads(proc.stdout)


def _wait_trees(profile: Path, sites: list[str], timeout: float = 1800) -> float:
    t0 = time.monotonic()
    for site in sites:
        while True:
            with hdsd.Client(profile, site=site) as c:
                st = c.status()
            m = st["maintenance"]["merkle"]
            if m["ready"]:
                break
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"trees of {site} not ready after {timeout} s")
            time.sleep(0.2)
    return time.monotonic() - t0


def _repair(profile: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    results = _cli(profile, "repair", "--wait", "--json")
    wall = time.monotonic() - t0
    rounds = [p for r in results for p in r.get("peers", [])]
    if len(rounds) != 1 or rounds[0]["error"]:
        raise RuntimeError(f"repair failed: {results}")
    return {**rounds[0], "wall_s": round(wall, 3)}


def _puts(profile: Path, seconds: float, stop: threading.Event | None = None,
          tag: str = "p") -> list[float]:
    data = os.urandom(4096)
    samples: list[float] = []
    with hdsd.Client(profile, site="dc1") as c:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not (stop and stop.is_set()):
            t = time.perf_counter()
            c.put(BUCKET, f"lat-{tag}-{i}", data)
            samples.append(time.perf_counter() - t)
            i += 1
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=1_000_000)
    ap.add_argument("--diverge", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true", help="20,000 versions: a smoke run")
    ap.add_argument("--json", type=Path, default=Path("bench/results/repair_bench.json"))
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.versions
    n_div = max(2, int(n * args.diverge)) // 2 * 2

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cluster"
        profile = init_cluster(root)
        global SEALING
        SEALING = cluster_sealing(root)
        tenant = next(line.split("=", 1)[1].strip().strip('"')
                      for line in profile.read_text().splitlines()
                      if line.startswith("tenant"))
        configs = {s: root / f"{s}-n1" / "node.toml" for s in ("dc1", "dc2")}
        for cfg in configs.values():  # a repair only when asked; bench-sized segments
            text = cfg.read_text().replace("# segment_mib = 256", f"segment_mib = {SEGMENT_MIB}")
            cfg.write_text(text + "\n[repair]\ninterval_s = 0\nscrub_interval_h = 0\n")
        stores = {s: cfg.parent / "data" / "store" for s, cfg in configs.items()}
        t0 = time.monotonic()
        for s in stores:
            _log(f"writing {n:,} versions into {s}")
            _fill(stores[s], tenant, range(n), "k", 100, "dc1-n1")
        fill_s = time.monotonic() - t0
        results: dict[str, Any] = {"versions_per_site": n, "fill_s": round(fill_s, 1)}
        nodes = {s: NodeProcess(cfg) for s, cfg in configs.items()}
        try:
            for node in nodes.values():
                node.start()
            results["trees_ready_s"] = round(_wait_trees(profile, ["dc1", "dc2"]), 2)
            _log(f"trees ready in {results['trees_ready_s']} s; identical repair")
            results["identical"] = _repair(profile)

            for node in nodes.values():
                node.stop()
            half = n_div // 2
            diff_bytes = _fill(stores["dc1"], tenant, range(half), "only-dc1-", 4096, "dc1-n1")
            diff_bytes += _fill(stores["dc2"], tenant, range(half), "only-dc2-", 4096, "dc2-n1")
            for node in nodes.values():
                node.start()
            _wait_trees(profile, ["dc1", "dc2"])
            _log(f"{n_div:,} divergent keys ({diff_bytes / 2**20:.1f} MiB); repair")
            div = _repair(profile)
            div["differing_versions"] = n_div
            div["differing_bytes"] = diff_bytes
            div["traffic_ratio"] = round((div["bytes_sent"] + div["bytes_received"])
                                         / diff_bytes, 3)
            results["divergent"] = div

            _log("put latency without a repair")
            base = _puts(profile, 10 if args.quick else 20, tag="base")
            for node in nodes.values():
                node.stop()
            _fill(stores["dc1"], tenant, range(half), "again-dc1-", 4096, "dc1-n1")
            _fill(stores["dc2"], tenant, range(half), "again-dc2-", 4096, "dc2-n1")
            for node in nodes.values():
                node.start()
            _wait_trees(profile, ["dc1", "dc2"])
            _log("put latency during a repair")
            stop = threading.Event()
            during: list[float] = []
            worker = threading.Thread(
                target=lambda: during.extend(_puts(profile, 600, stop, tag="during")))
            worker.start()
            time.sleep(0.5)
            results["repair_under_load"] = _repair(profile)
            stop.set()
            worker.join()
            results["put_latency_ms"] = {"without_repair": latency_ms(base),
                                         "during_repair": latency_ms(during),
                                         "samples": [len(base), len(during)]}
        finally:
            for node in nodes.values():
                node.stop()

    ident, div, lat = results["identical"], results["divergent"], results["put_latency_ms"]
    p99_ratio = lat["during_repair"]["p99_ms"] / lat["without_repair"]["p99_ms"]
    results["p99_ratio"] = round(p99_ratio, 2)
    rows = [
        ["trees follow the index at start", f"{results['trees_ready_s']:.2f} s", "—"],
        ["identical: round duration", f"{ident['duration_s']:.3f} s", "≤ 5 s"],
        ["identical: bytes exchanged", f"{ident['bytes_sent'] + ident['bytes_received']} B",
         "≤ 1 MiB"],
        [f"divergent ({n_div:,} keys): round duration", f"{div['duration_s']:.2f} s", "≤ 30 s"],
        ["divergent: traffic / differing data",
         f"{div['traffic_ratio']:.2f} ({(div['bytes_sent'] + div['bytes_received']) / 2**20:.1f}"
         f" / {div['differing_bytes'] / 2**20:.1f} MiB)", "≤ 1.5"],
        ["put p50 without / during repair",
         f"{lat['without_repair']['p50_ms']:.2f} / {lat['during_repair']['p50_ms']:.2f} ms", "—"],
        ["put p99 without / during repair",
         f"{lat['without_repair']['p99_ms']:.2f} / {lat['during_repair']['p99_ms']:.2f} ms "
         f"({p99_ratio:.2f}x)", "≤ 2x"],
    ]
    print(f"\nrepair_bench: {n:,} versions per site, two real nodes on this machine")
    print_table(["measure", "value", "target"], rows)
    write_json(args.json, {"machine": machine_info(), "results": results})
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
