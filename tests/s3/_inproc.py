"""Two real nodes (one per site) in this process, each with an S3 gateway, for the gateway's
own tests. The gateway here authenticates every request as one principal: a test-only
configuration of the gateway (its authenticator is a constructor argument), so these tests
exercise routing, XML, streaming and the object API without signatures; the signed paths are
covered by the real-process tests (tests/e2e/test_s3_*.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hdsd.node import NodeObjects, load_node_config, serve_node
from hdsd.s3 import Access, Endpoint, Gateway, HttpLimits, HttpRequest, Principal, Uploads, serve_s3
from tests.helpers.cluster import init_cluster


class _Identity:
    def feed(self, data: bytes) -> list[bytes]:
        return [data] if data else []

    def finish(self) -> None:
        return None


def as_principal(tenant: str = "default", role: str = "admin") -> Callable[[HttpRequest], Access]:
    principal = Principal(name="test-key", tenant=tenant, role=role)
    return lambda req: Access(principal, _Identity())


@dataclass
class Site:
    node: Any
    endpoint: Endpoint
    gateway: Gateway


@asynccontextmanager
async def two_sites(root: Path, limits: HttpLimits | None = None,
                    role: str = "admin") -> AsyncIterator[dict[str, Site]]:
    init_cluster(root)
    sites: dict[str, Site] = {}
    async with trio.open_nursery() as nursery:
        for name in ("dc1-n1", "dc2-n1"):
            config = load_node_config(root / name / "node.toml")
            node = await nursery.start(serve_node, config)
            gateway = Gateway(NodeObjects(node), Uploads(root / name / "s3-uploads", 3600),
                              region="us-east-1", authenticate=as_principal(role=role))
            endpoints = await nursery.start(serve_s3, gateway, [], [("127.0.0.1", 0)], None,
                                            limits or HttpLimits(), 64)
            sites[name[:3]] = Site(node, endpoints[0], gateway)
        try:
            yield sites
        finally:
            nursery.cancel_scope.cancel()


def s3_client(endpoint: Endpoint) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))
