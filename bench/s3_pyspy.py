"""Where the S3 gateway's node spends CPU on 4 KiB PutObjects from concurrent boto3 clients,
sampled by py-spy (``pip install py-spy``; not a dependency of hdsd).

    python bench/s3_pyspy.py [--puts N] [--clients C] [--procs P] [--rate HZ] [--dir DIR]

Starts a two-site cluster (``each-site``) with both nodes under ``py-spy record --gil`` (see
``put_pyspy.py`` for what ``--gil`` sees and misses: C code that releases the GIL — TLS, large
hashes, fsync — is not sampled), creates an access key, warms *C* boto3 clients (threads of *P*
processes) and runs *N* PutObjects of 4 KiB through the dc1 node's gateway. Prints, for the
coordinator (the gateway's node) and the replica, the share of samples by layer and by
self frame, plus a "gateway step" split of the coordinator's samples (the outermost hdsd/s3
function that is on the stack: HTTP parsing, SigV4, the body decoder, the node's put...).
Keeps the raw files in DIR. Compare shares, not absolute times: the sampler costs CPU too.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import init_cluster, print_table, set_write_policy  # noqa: E402
from put_pyspy import SpiedNode, print_shares, summarise  # noqa: E402
from s3_bench import _key, _s3_ports, _small_worker  # noqa: E402


def step(frames: list[str]) -> str:
    """The gateway step a sample belongs to: the first frame (from the leaf up) that names one
    of the steps below; else the layer of the deepest hdsd frame."""
    marks = (
        ("_sigv4.py", "sigv4 (canonical request, HMAC)"),
        ("_auth.py", "auth: lookup, body decoder setup/feeds"),
        ("_checksums.py", "body checksums (md5, sha256, crc)"),
        ("_xml.py", "xml"),
        ("hdsd/node/_objects.py", "node object API (put path)"),
        ("hdsd/node/", "node (other)"),
        ("hdsd/replication/", "replication"),
        ("hdsd/peers/", "peers"),
        ("hdsd/store/", "store"),
        ("hdsd/pipeline/", "pipeline (seal)"),
        ("hdsd/audit/", "audit"),
        ("_http.py", "http (h11 + send/receive)"),
        ("_gateway.py", "gateway handler"),
        ("_server.py", "s3 server (accept, TLS handshake)"),
    )
    for frame in reversed(frames):
        for mark, name in marks:
            if mark in frame:
                return name
    return "other: " + (frames[-1].split(" (")[0] if frames else "?")


def by_step(raw: Path) -> tuple[int, list[tuple[str, int]]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any("_find_and_load" in f for f in frames):
            continue
        n = int(count)
        total += n
        counts[step(frames)] += n
    return total, counts.most_common()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=3200, help="in all, spread over the clients")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="s3spy-", dir=args.dir))
    root = scratch / "cluster"
    raws = {role: args.dir.resolve() / f"s3spy_{role}.txt" for role in ("coordinator", "replica")}
    nodes = []
    took = 0.0
    try:
        init_cluster(root)
        urls = _s3_ports(root)
        for role, site in (("replica", "dc2"), ("coordinator", "dc1")):
            cfg = root / f"{site}-n1" / "node.toml"
            set_write_policy(cfg, "each-site")
            node = SpiedNode(cfg, raws[role], args.rate)
            nodes.append(node)
            node.start()
        key = _key(root)
        ca = str(root / "ca" / "ca.crt")
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(args.procs + 1)
        results = ctx.Queue()
        per_client = args.puts // args.clients
        workers = [ctx.Process(target=_small_worker, args=(
            urls["dc1"], key, ca, range(w, args.clients, args.procs), per_client, barrier,
            results)) for w in range(args.procs)]
        for w in workers:
            w.start()
        barrier.wait(timeout=300)
        started = time.perf_counter()
        outcomes = [results.get(timeout=1800) for _ in workers]
        took = time.perf_counter() - started
        for w in workers:
            w.join(60)
        if any(o != "ok" for o, _ in outcomes):
            raise SystemExit(f"a client failed: {outcomes}")
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    total_puts = per_client * args.clients
    print(f"{total_puts} S3 puts of 4 KiB from {args.clients} clients in {took:.1f} s: "
          f"{total_puts / took:.0f}/s")
    for role, raw in raws.items():
        deadline = time.monotonic() + 30
        while not raw.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        total, layers, top = summarise(raw, 25)
        print(f"\n{role}: {total} samples at {args.rate} Hz "
              f"(~{total * 1e3 / args.rate / total_puts:.3f} ms GIL-held CPU per put, start-up "
              "and warm-up included)")
        if role == "coordinator":
            _, steps = by_step(raw)
            print_table(["gateway step (outermost match from the leaf)", "share"],
                        [[name, f"{n / total:.1%}"] for name, n in steps[:20]])
        print_shares(layers, top, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
