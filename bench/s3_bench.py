"""The S3 gateway against the native client, in the same run, on a real two-site cluster
(one ``hdsd serve`` per site, ``each-site``: every put fsynced in both sites before its answer).

    python bench/s3_bench.py [--quick] [--large] [--json PATH] [--dir DIR]

cells (the client runs in this process, on the same machine as both nodes):
  large objects: 64 MiB puts and gets (3 each; 1 with --quick), native ``AsyncClient`` vs boto3's
    transfer manager (its defaults: 8 MiB multipart parts, 10 threads) vs one boto3 PutObject
    (the whole object in one request); ``--large`` adds 1 GiB.
  small objects: 4 KiB puts from 16 concurrent clients (16 native connections in this trio
    process vs 16 boto3 clients as threads of --client-procs processes), puts/s; then native
    again, paced to the S3 cell's puts/s: the nodes' CPU per put at equal load (it grows as
    the rate falls: fewer puts per group commit), so the gateway's own CPU per put is the S3
    cell's minus the paced one's.

Prints a table with each gateway figure as a ratio to the native one, writes JSON (default
``bench/results/s3_bench.json``). Never asserts; stops every process it started. The client
side competes with the nodes for the machine's cores (boto3 is pure Python and holds the GIL):
read the ratios with that in mind, and say so when quoting them.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    NodeProcess,
    free_ports,
    init_cluster,
    machine_info,
    print_table,
    thread_cpu_seconds,
    write_json,
)

import hdsd

HERE = Path(__file__).resolve().parent
MIB = 1 << 20


def _s3_ports(root: Path) -> dict[str, str]:
    """Give each node's [s3] listener a free port; site -> HTTPS URL."""
    urls = {}
    configs = sorted(root.glob("*/node.toml"))
    for config, port in zip(configs, free_ports(len(configs)), strict=True):
        text = re.sub(r'^listen = \["([^"\]]+):\d+"\]', f'listen = ["\\1:{port}"]',
                      config.read_text(), flags=re.M)
        config.write_text(text)
        urls[config.parent.name.split("-")[0]] = f"https://127.0.0.1:{port}"
    return urls


def _key(root: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "hdsd", "s3", "key", "create", "default",
                           "--role", "writer", "--json", "--cluster-dir", str(root)],
                          capture_output=True, timeout=120, cwd=root.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"hdsd s3 key create failed: {proc.stderr.decode(errors='replace')}")
    return dict(json.loads(proc.stdout))


def _boto3(url: str, key: dict[str, Any], ca: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key["access_key_id"],
                        aws_secret_access_key=key["secret_access_key"], verify=ca,
                        config=Config(s3={"addressing_style": "path"},
                                      max_pool_connections=16))


class _Cpu:
    """CPU seconds of the node processes and of this (client) process, per cell: where the
    time goes (a gateway that costs the node more per byte, or a heavier client)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.node_s: dict[str, float] = {}
        self.client_s: dict[str, float] = {}

    def _nodes(self) -> float:
        return sum(sum(thread_cpu_seconds(pid).values()) for pid in self.pids)

    def measure(self, cell: str) -> Any:
        cpu = self

        class _Scope:
            def __enter__(self) -> None:
                self.node0, self.client0 = cpu._nodes(), time.process_time()

            def __exit__(self, *exc: object) -> None:
                cpu.node_s[cell] = cpu.node_s.get(cell, 0.0) + cpu._nodes() - self.node0
                cpu.client_s[cell] = cpu.client_s.get(cell, 0.0) + time.process_time() \
                    - self.client0

        return _Scope()


CPU: _Cpu | None = None


def _measure(cell: str) -> Any:
    assert CPU is not None
    return CPU.measure(cell)


def _mib_s(size: int, seconds: list[float]) -> float:
    return size * len(seconds) / MIB / sum(seconds)


def large(profile: Path, url: str, key: dict[str, Any], ca: str, size: int,
          repeats: int) -> list[dict[str, Any]]:
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(size)
    s3 = _boto3(url, key, ca)
    s3.create_bucket(Bucket="bench")
    cells: dict[str, list[float]] = {k: [] for k in (
        "native put", "native get", "s3 transfer put", "s3 transfer get", "s3 single put")}

    async def native() -> None:
        async with hdsd.AsyncClient(profile) as client:
            for i in range(repeats):
                with _measure("native put"):
                    started = time.perf_counter()
                    await client.put("native", f"big-{i}", data)
                    cells["native put"].append(time.perf_counter() - started)
                with _measure("native get"):
                    started = time.perf_counter()
                    got = await client.get("native", f"big-{i}")
                    cells["native get"].append(time.perf_counter() - started)
                assert len(got) == size

    trio.run(native)
    transfer = TransferConfig()  # boto3's defaults, as a backup tool would run it
    for i in range(repeats):
        with _measure("s3 transfer put"):
            started = time.perf_counter()
            s3.upload_fileobj(io.BytesIO(data), "bench", f"big-{i}", Config=transfer)
            cells["s3 transfer put"].append(time.perf_counter() - started)
        sink = io.BytesIO()
        with _measure("s3 transfer get"):
            started = time.perf_counter()
            s3.download_fileobj("bench", f"big-{i}", sink, Config=transfer)
            cells["s3 transfer get"].append(time.perf_counter() - started)
        assert sink.getbuffer().nbytes == size
        with _measure("s3 single put"):
            started = time.perf_counter()
            s3.put_object(Bucket="bench", Key=f"single-{i}", Body=data)
            cells["s3 single put"].append(time.perf_counter() - started)
    out = []
    for name, seconds in cells.items():
        system, op = name.split(" ", 1)
        native_name = "native " + ("get" if op.endswith("get") else "put")
        assert CPU is not None
        mib = size * len(seconds) / MIB
        out.append({"system": system, "op": op, "size_bytes": size, "concurrency": 1,
                    "mib_per_s": round(_mib_s(size, seconds), 1),
                    "node_cpu_ms_per_mib": round(1000 * CPU.node_s[name] / mib, 1),
                    "client_cpu_ms_per_mib": round(1000 * CPU.client_s[name] / mib, 1),
                    "ratio_to_native": round(_mib_s(size, seconds)
                                             / _mib_s(size, cells[native_name]), 2)})
    return out


def _small_worker(url: str, key: dict[str, Any], ca: str, indexes: range, per_client: int,
                  barrier: Any, results: Any) -> None:
    data = os.urandom(4096)
    s3s = {i: _boto3(url, key, ca) for i in indexes}
    for i, s3 in s3s.items():  # warm each client's connection (and the bucket)
        try:
            s3.create_bucket(Bucket="small-s3")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_object(Bucket="small-s3", Key=f"warm-{i}", Body=data)
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            for n in range(per_client):
                s3s[i].put_object(Bucket="small-s3", Key=f"c{i}/{n}", Body=data)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in indexes]
    barrier.wait(timeout=120)
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The client's own CPU (boto3 is pure Python): it shares the machine's cores with the
    # nodes, so it bounds this cell's puts/s as much as the gateway does.
    results.put((errors[0] if errors else "ok", time.process_time() - cpu0))


def small(profile: Path, url: str, key: dict[str, Any], ca: str, clients: int,
          per_client: int, procs: int) -> list[dict[str, Any]]:
    data = os.urandom(4096)

    async def native() -> float:
        async def one(i: int) -> None:
            # (16 TLS handshakes are inside the timed window: small against 16 x N puts)
            async with hdsd.AsyncClient(profile) as client:
                for n in range(per_client):
                    await client.put("small", f"c{i}/{n}", data)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, i)
        return time.perf_counter() - started

    with _measure("native small"):
        native_s = trio.run(native)
    # boto3 is pure Python: 16 clients as threads of one process would measure its GIL. They
    # run as `procs` processes of clients/procs threads, started together by a barrier.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=_small_worker, args=(
        url, key, ca, range(w, clients, procs), per_client, barrier, results))
        for w in range(procs)]
    for w in workers:
        w.start()
    barrier.wait(timeout=120)  # every client connected and warm
    with _measure("s3 small"):
        started = time.perf_counter()
        outcomes = [results.get(timeout=600) for _ in workers]
        s3_s = time.perf_counter() - started
    for w in workers:
        w.join(60)
    failed = [o for o, _ in outcomes if o != "ok"]
    s3_client_s = sum(cpu for _, cpu in outcomes)
    if failed:
        raise RuntimeError(f"an S3 client failed: {failed[0]}")
    total = clients * per_client
    assert CPU is not None
    # The nodes' CPU per put grows when puts are fewer per second (group commits and
    # replicated batches carry fewer puts each): native again, paced to the S3 cell's rate, so
    # that the gateway's own CPU per put is the difference at equal load.
    s3_rate = total / s3_s

    async def paced() -> None:
        async def one(i: int) -> None:
            async with hdsd.AsyncClient(profile) as client:
                start = trio.current_time() + i / s3_rate
                for n in range(per_client):
                    await trio.sleep_until(start + n * clients / s3_rate)
                    await client.put("small", f"paced-{i}/{n}", data)

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, i)

    with _measure("native paced"):
        paced_started = time.perf_counter()
        trio.run(paced)
        paced_s = time.perf_counter() - paced_started

    def per_put(cell: str) -> dict[str, float]:
        assert CPU is not None
        return {"node_cpu_ms_per_put": round(1000 * CPU.node_s[cell] / total, 2),
                "client_cpu_ms_per_put": round(1000 * CPU.client_s[cell] / total, 2)}

    return [{"system": "native", "op": "put", "size_bytes": 4096, "concurrency": clients,
             "ops_per_s": round(total / native_s, 1), **per_put("native small")},
            {"system": "native", "op": "put paced to s3", "size_bytes": 4096,
             "concurrency": clients, "ops_per_s": round(total / paced_s, 1),
             **per_put("native paced")},
            {"system": "s3", "op": "put", "size_bytes": 4096, "concurrency": clients,
             "ops_per_s": round(total / s3_s, 1),
             "ratio_to_native": round(native_s / s3_s, 2),
             "node_cpu_ms_per_put": per_put("s3 small")["node_cpu_ms_per_put"],
             # what the gateway adds to the nodes' CPU per put at equal load
             "gateway_cpu_ms_per_put": round(per_put("s3 small")["node_cpu_ms_per_put"]
                                             - per_put("native paced")["node_cpu_ms_per_put"],
                                             2),
             # its clients ran in worker processes: their own CPU, not this process's
             "client_cpu_ms_per_put": round(1000 * s3_client_s / total, 2)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer small puts")
    parser.add_argument("--large", action="store_true", help="add 1 GiB objects")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "s3_bench.json")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster lives")
    parser.add_argument("--client-procs", type=int, default=4,
                        help="processes the 16 boto3 clients of the small-object cell run in")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="s3bench-", dir=args.dir))
    root = base / "cluster"
    try:
        profile = init_cluster(root)
        urls = _s3_ports(root)
        nodes = [NodeProcess(root / name / "node.toml") for name in ("dc1-n1", "dc2-n1")]
        for node in nodes:
            node.start()
        global CPU
        CPU = _Cpu([node.proc.pid for node in nodes if node.proc is not None])
        try:
            key = _key(root)
            ca = str(root / "ca" / "ca.crt")
            repeats = 1 if args.quick else 3
            results = large(profile, urls["dc1"], key, ca, 64 * MIB, repeats)
            if args.large:
                results += large(profile, urls["dc1"], key, ca, 1024 * MIB, 1)
            results += small(profile, urls["dc1"], key, ca, 16, 20 if args.quick else 100,
                             args.client_procs)
        finally:
            for node in nodes:
                node.stop()
        rows = [[r["system"], r["op"], f"{r['size_bytes'] // 1024} KiB", str(r["concurrency"]),
                 f"{r['mib_per_s']} MiB/s" if "mib_per_s" in r else f"{r['ops_per_s']} puts/s",
                 str(r.get("ratio_to_native", "")),
                 str(r.get("node_cpu_ms_per_mib", r.get("node_cpu_ms_per_put"))),
                 str(r.get("client_cpu_ms_per_mib", r.get("client_cpu_ms_per_put", "-")))]
                for r in results]
        print_table(["system", "op", "size", "clients", "throughput", "x native",
                     "node CPU ms/MiB|put", "client CPU ms/MiB|put"], rows)
        for r in results:
            if "gateway_cpu_ms_per_put" in r:
                print(f"\nthe gateway's own node CPU per 4 KiB put (s3 minus native paced to "
                      f"its rate): {r['gateway_cpu_ms_per_put']} ms")
        write_json(args.json, {"machine": machine_info(), "results": results,
                               "note": "client and both nodes share this machine's cores"})
        print(f"\nJSON: {args.json}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
