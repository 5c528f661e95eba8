"""The S3 gateway against the native client, in the same run, on a real two-site cluster
(one ``hdsd serve`` per site, ``each-site``: every put fsynced in both sites before its answer).

    python bench/s3_bench.py [--quick] [--large] [--json PATH] [--dir DIR]

cells (the client runs in this process, on the same machine as both nodes):
  large objects: 64 MiB puts and gets (3 each; 1 with --quick), native ``AsyncClient`` vs boto3's
    transfer manager (its defaults: 8 MiB multipart parts, 10 threads) vs one boto3 PutObject
    (the whole object in one request); ``--large`` adds 1 GiB.
  small objects: 4 KiB puts from 16 concurrent clients (16 native connections vs 16 boto3
    clients in 16 threads), puts/s.

Prints a table with each gateway figure as a ratio to the native one, writes JSON (default
``bench/results/s3_bench.json``). Never asserts; stops every process it started. The client
side competes with the nodes for the machine's cores (boto3 is pure Python and holds the GIL):
read the ratios with that in mind, and say so when quoting them.
"""

from __future__ import annotations

import argparse
import io
import json
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
                started = time.perf_counter()
                await client.put("native", f"big-{i}", data)
                cells["native put"].append(time.perf_counter() - started)
                started = time.perf_counter()
                got = await client.get("native", f"big-{i}")
                cells["native get"].append(time.perf_counter() - started)
                assert len(got) == size

    trio.run(native)
    transfer = TransferConfig()  # boto3's defaults, as a backup tool would run it
    for i in range(repeats):
        started = time.perf_counter()
        s3.upload_fileobj(io.BytesIO(data), "bench", f"big-{i}", Config=transfer)
        cells["s3 transfer put"].append(time.perf_counter() - started)
        sink = io.BytesIO()
        started = time.perf_counter()
        s3.download_fileobj("bench", f"big-{i}", sink, Config=transfer)
        cells["s3 transfer get"].append(time.perf_counter() - started)
        assert sink.getbuffer().nbytes == size
        started = time.perf_counter()
        s3.put_object(Bucket="bench", Key=f"single-{i}", Body=data)
        cells["s3 single put"].append(time.perf_counter() - started)
    out = []
    for name, seconds in cells.items():
        system, op = name.split(" ", 1)
        native_name = "native " + ("get" if op.endswith("get") else "put")
        out.append({"system": system, "op": op, "size_bytes": size, "concurrency": 1,
                    "mib_per_s": round(_mib_s(size, seconds), 1),
                    "ratio_to_native": round(_mib_s(size, seconds)
                                             / _mib_s(size, cells[native_name]), 2)})
    return out


def small(profile: Path, url: str, key: dict[str, Any], ca: str, clients: int,
          per_client: int) -> list[dict[str, Any]]:
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

    native_s = trio.run(native)
    s3s = [_boto3(url, key, ca) for _ in range(clients)]
    s3s[0].create_bucket(Bucket="small-s3")
    for i, s3 in enumerate(s3s):  # warm each client's connection
        s3.put_object(Bucket="small-s3", Key=f"warm-{i}", Body=data)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for n in range(per_client):
                s3s[i].put_object(Bucket="small-s3", Key=f"c{i}/{n}", Body=data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s3_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    total = clients * per_client
    return [{"system": "native", "op": "put", "size_bytes": 4096, "concurrency": clients,
             "ops_per_s": round(total / native_s, 1)},
            {"system": "s3", "op": "put", "size_bytes": 4096, "concurrency": clients,
             "ops_per_s": round(total / s3_s, 1),
             "ratio_to_native": round(native_s / s3_s, 2)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer small puts")
    parser.add_argument("--large", action="store_true", help="add 1 GiB objects")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "s3_bench.json")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster lives")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="s3bench-", dir=args.dir))
    root = base / "cluster"
    try:
        profile = init_cluster(root)
        urls = _s3_ports(root)
        nodes = [NodeProcess(root / name / "node.toml") for name in ("dc1-n1", "dc2-n1")]
        for node in nodes:
            node.start()
        try:
            key = _key(root)
            ca = str(root / "ca" / "ca.crt")
            repeats = 1 if args.quick else 3
            results = large(profile, urls["dc1"], key, ca, 64 * MIB, repeats)
            if args.large:
                results += large(profile, urls["dc1"], key, ca, 1024 * MIB, 1)
            results += small(profile, urls["dc1"], key, ca, 16, 20 if args.quick else 100)
        finally:
            for node in nodes:
                node.stop()
        rows = [[r["system"], r["op"], f"{r['size_bytes'] // 1024} KiB", str(r["concurrency"]),
                 f"{r['mib_per_s']} MiB/s" if "mib_per_s" in r else f"{r['ops_per_s']} puts/s",
                 str(r.get("ratio_to_native", ""))] for r in results]
        print_table(["system", "op", "size", "clients", "throughput", "x native"], rows)
        write_json(args.json, {"machine": machine_info(), "results": results,
                               "note": "client and both nodes share this machine's cores"})
        print(f"\nJSON: {args.json}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
