"""Revocation benchmark: how long a revoked certificate's open sessions live on, and what the
handshake check costs.

    python bench/revocation_bench.py [--rounds N] [--dir DIR]

A real two-site cluster (one ``hdsd serve`` per site). Each round issues a client certificate,
opens a session with it at each site, revokes it through dc1 (``AsyncClient.cert_revoke``, as
``hdsd cert revoke`` does), and measures from the revocation's reply until each session's next
request fails (the clients poll every 10 ms, so add up to 10 ms of polling granularity). dc2
learns it by the push. Then the in-process cost of the check a handshake makes, with 10 000
revocations in the catalog. Prints figures; never asserts a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import NodeProcess, init_cluster, latency_ms, print_table  # noqa: E402

import hdsd  # noqa: E402
from hdsd.catalog import Catalog, RevokedEntry  # noqa: E402
from hdsd.transport import read_certificate  # noqa: E402


async def _until_refused(client: hdsd.AsyncClient) -> float:
    while True:
        try:
            await client.list_buckets()
        except hdsd.CertificateRevoked:
            return time.perf_counter()
        await trio.sleep(0.01)


async def _round(root: Path, n: int) -> tuple[float, float]:
    name = f"bench{n}"
    subprocess.run([sys.executable, "-m", "hdsd", "cert", "issue", "--client", name, "--tenant",
                    "default", "--role", "reader", "--cluster-dir", str(root)], check=True,
                   capture_output=True)
    profile = root / "clients" / f"{name}.toml"
    cert = read_certificate(
        (root / "clients" / f"client-{name}@default.crt").read_bytes())
    async with hdsd.AsyncClient(profile) as one, hdsd.AsyncClient(profile, site="dc2") as two, \
            hdsd.AsyncClient(root / "client.toml") as op:
        await one.list_buckets()
        await two.list_buckets()
        await op.cert_revoke(certificate=cert.der, reason="bench")
        t0 = time.perf_counter()
        ends: list[float] = []

        async def watch(c: hdsd.AsyncClient) -> None:
            ends.append(await _until_refused(c))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, one)
                nursery.start_soon(watch, two)
    return (ends[0] - t0), (ends[1] - t0)


def _check_cost(directory: Path) -> float:
    cat = Catalog(directory / "bench-catalog.sqlite")
    try:
        cat.apply([RevokedEntry(serial=format(i + 1, "x"), hlc=1, by="bench")
                   for i in range(10_000)])
        n = 200_000
        return timeit.timeit(lambda: cat.is_revoked("deadbeef" * 5), number=n) / n
    finally:
        cat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cluster"
        init_cluster(root)
        with NodeProcess(root / "dc1-n1" / "node.toml"), \
                NodeProcess(root / "dc2-n1" / "node.toml"):
            samples = [trio.run(_round, root, i) for i in range(args.rounds)]
        check = _check_cost(Path(tmp))
    for label, values in (("dc1 (revoked here)", [s[0] for s in samples]),
                          ("dc2 (by push)", [s[1] for s in samples])):
        ms = latency_ms(values)
        print_table(["session cut after revocation", "p50 ms", "max ms", "rounds"],
                    [[label, f"{ms['p50_ms']:.1f}", f"{ms['max_ms']:.1f}", str(len(values))]])
    print(f"handshake check (catalog of 10000 revocations): {check * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
