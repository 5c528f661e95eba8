"""Two real nodes (one per site) in this process, each with an S3 gateway on plain HTTP, for
the gateway's own tests: requests are signed by botocore and verified by the gateway with one
test access key (the gateway's credential lookup is a constructor argument); the node's own
catalog of keys, HTTPS and real clients are covered by tests/e2e/test_s3_*.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hdsd.node import NodeObjects, load_node_config, serve_node
from hdsd.s3 import CredentialLookup, Endpoint, Gateway, HttpLimits, S3Credential, Uploads, serve_s3
from tests.helpers.cluster import init_cluster

KEY_ID = "HDSDTESTKEY000000001"
SECRET = "test-secret-of-forty-characters-0123456"


def lookup_for(tenant: str = "default", role: str = "admin") -> CredentialLookup:
    """A credential lookup knowing one test key (the node's catalog of keys is tested with
    real processes in tests/e2e/test_s3_*.py)."""
    credential = S3Credential(KEY_ID, SECRET, tenant, role)
    return lambda key_id: credential if key_id == KEY_ID else None


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
            gateway = Gateway(NodeObjects(node), Uploads(root / name / "s3-uploads", 3600,
                                                         node.store.sealing.seal_for),
                              region="us-east-1", lookup=lookup_for(role=role))
            endpoints = await nursery.start(serve_s3, gateway, [], [("127.0.0.1", 0)], None,
                                            limits or HttpLimits(), 64)
            sites[name[:3]] = Site(node, endpoints[0], gateway)
        try:
            yield sites
        finally:
            nursery.cancel_scope.cancel()


def s3_client(endpoint: Endpoint, **config: Any) -> Any:
    """boto3 with its default settings (signatures, checksums), path-style."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                        config=Config(retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}, **config))


def signed_head(method: str, endpoint: Endpoint, path: str,
                headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request head signed by botocore with the test key (over plain HTTP it
    signs the SHA-256 of *body*), for tests that then misbehave on the wire themselves."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{endpoint.url}{path}"
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(request)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
