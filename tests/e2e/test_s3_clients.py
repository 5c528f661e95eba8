"""Real S3 clients against a real two-site cluster (one node process per site): boto3, the AWS
CLI, rclone, restic, s3cmd and the minio SDK, over HTTPS with the cluster CA as their bundle,
and over plain HTTP (loopback); what one site wrote is read back at the other. The clients are
installed by .ci/install-s3-clients; keys come from the real ``hdsd s3 key create``."""

from __future__ import annotations

import filecmp
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hdsd.audit import open_audit_names, read_records
from hdsd.node import load_node_config, offline_name_seal
from tests.helpers.cluster import Cluster, NodeProcess, enable_plain_http, hdsd, s3_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent


@dataclass
class S3Cluster:
    root: Path
    key_id: str
    secret: str
    ca: Path
    https: dict[str, str]  # site -> URL
    http: dict[str, str]
    nodes: dict[str, NodeProcess]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CA_BUNDLE": str(self.ca), "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", **extra}

    def boto3(self, url: str, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                            verify=str(self.ca),
                            config=Config(s3={"addressing_style": "path"}, **config))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Cluster]:
    root = tmp_path_factory.mktemp("s3")
    cluster = Cluster(root, 1)
    http = {site: enable_plain_http(root / f"{site}-n1" / "node.toml") for site in ("dc1", "dc2")}
    cluster.start()
    try:
        made = hdsd("s3", "key", "create", "default", "--role", "writer", "--json",
                    "--cluster-dir", str(root), check=True)
        key = json.loads(made.stdout)
        https = {site: s3_url(root / f"{site}-n1" / "node.toml") for site in ("dc1", "dc2")}
        assert sorted(key["endpoints"]) == ["dc1", "dc2"]
        yield S3Cluster(root, key["access_key_id"], key["secret_access_key"],
                        Path(key["ca_bundle"]), https, http, cluster.nodes)
    finally:
        for node in cluster.nodes.values():
            if node.alive:
                assert node.stop() == 0, node.log()


def run(cmd: list[str], env: dict[str, str], timeout: float = 300, **kw: Any) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, **kw)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                  f"{proc.stdout.decode(errors='replace')[-3000:]}\n"
                                  f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc.stdout.decode(errors="replace")


def tree(root: Path, files: int, size: int = 700) -> Path:
    for i in range(files):
        path = root / f"d{i % 7}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size + i))
    return root


def test_boto3_https_and_plain_read_back_at_the_other_site(s3: S3Cluster) -> None:
    for checksums in ("when_supported", "when_required"):
        dc1 = s3.boto3(s3.https["dc1"], request_checksum_calculation=checksums)
        dc2 = s3.boto3(s3.http["dc2"], request_checksum_calculation=checksums)
        bucket = f"boto-{checksums.replace('_', '-')}"
        dc1.create_bucket(Bucket=bucket)
        body = os.urandom(2 << 20)
        put = dc1.put_object(Bucket=bucket, Key="a/b.bin", Body=body, Metadata={"x": "1"})
        assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        got = dc2.get_object(Bucket=bucket, Key="a/b.bin")
        assert got["Body"].read() == body and got["Metadata"] == {"x": "1"}
        assert dc2.head_object(Bucket=bucket, Key="a/b.bin")["ContentLength"] == len(body)
        assert [o["Key"] for o in dc2.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b.bin"]
        assert bucket in [b["Name"] for b in dc2.list_buckets()["Buckets"]]
        dc2.head_bucket(Bucket=bucket)
        dc1.delete_object(Bucket=bucket, Key="a/b.bin")
        assert dc2.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
        # Multipart with parts uploaded out of order, completed at one site, read at the other.
        parts = [os.urandom(5 << 20), os.urandom(1000)]
        up = dc1.create_multipart_upload(Bucket=bucket, Key="mp")
        etags = {n: dc1.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"],
                                    PartNumber=n, Body=parts[n - 1])["ETag"] for n in (2, 1)}
        dc1.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"],
                                      MultipartUpload={"Parts": [
                                          {"PartNumber": n, "ETag": etags[n]} for n in (1, 2)]})
        assert dc2.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"".join(parts)
    # Every S3 request is an audit record like a native one (committed within ~10 ms).
    # Its bucket and key are sealed under the tenant's key (docs/audit.md): opened here with
    # the node's catalog and master key, as `hdsd audit export --config` does.
    seal = offline_name_seal(load_node_config(s3.root / "dc1-n1" / "node.toml"), "default")

    def names(r: Any) -> tuple[str, str]:
        if not r.bucket and not r.key:
            return "", ""  # (ListBuckets)
        assert r.bucket.startswith("sealed:") and "a/b.bin" not in r.key, r
        return open_audit_names(seal, r.tenant, r.bucket, r.key)

    wanted = ("S3:PutObject", ("boto-when-required", "a/b.bin"), "ok")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = [r for r in read_records(s3.root / "dc1-n1" / "data" / "audit")
                   if r.op.startswith("S3:") and r.tenant == "default"]
        if any((r.op, names(r), r.outcome) == wanted for r in records):
            break
        time.sleep(0.2)
    put = next(r for r in records if (r.op, names(r), r.outcome) == wanted)
    assert put.identity == f"s3:{s3.key_id}" and put.tenant == "default"
    assert put.role == "writer" and put.bytes_in >= 2 << 20 and put.version


def test_aws_cli_cp_100mib_sync_and_presign(s3: S3Cluster, tmp_path: Path) -> None:
    aws = [str(BIN / "aws")]
    env = s3.env()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    run([*aws, "--endpoint-url", s3.https["dc1"], "s3", "mb", "s3://awscli"], env)
    run([*aws, "--endpoint-url", s3.https["dc1"], "s3", "cp", str(big), "s3://awscli/big.bin"],
        env, timeout=600)
    back = tmp_path / "back.bin"
    run([*aws, "--endpoint-url", s3.https["dc2"], "s3", "cp", "s3://awscli/big.bin", str(back)],
        env, timeout=600)
    assert filecmp.cmp(big, back, shallow=False)
    big.unlink()
    back.unlink()
    src = tree(tmp_path / "src", 40)
    quiet = {**env, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}
    run([*aws, "--endpoint-url", s3.https["dc1"], "s3", "sync", str(src), "s3://awscli/tree"],
        quiet)
    dst = tmp_path / "dst"
    run([*aws, "--endpoint-url", s3.http["dc2"], "s3", "sync", "s3://awscli/tree", str(dst)],
        env)
    assert not filecmp.dircmp(src, dst).diff_files
    assert sorted(p.relative_to(src) for p in src.rglob("*.bin")) == \
        sorted(p.relative_to(dst) for p in dst.rglob("*.bin"))
    # A second sync has nothing to do (sizes and times agree).
    assert "upload:" not in run([*aws, "--endpoint-url", s3.https["dc1"], "s3", "sync",
                                 str(src), "s3://awscli/tree"], quiet)
    # AWS CLI v1 presigns with Signature V2 unless told: hdsd verifies V4 only.
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    signature_version = s3v4\n")
    url = run([*aws, "--endpoint-url", s3.https["dc2"], "s3", "presign",
               "s3://awscli/tree/d0/f0000.bin", "--expires-in", "300"],
              {**env, "AWS_CONFIG_FILE": str(config)}).strip()
    assert "X-Amz-Signature=" in url  # Signature V4 in the query string
    context = ssl.create_default_context(cafile=str(s3.ca))
    try:
        with urllib.request.urlopen(url, context=context, timeout=60) as response:
            assert response.read() == (src / "d0" / "f0000.bin").read_bytes()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: {exc.code} {exc.read()!r}") from None


def test_rclone_copy_multipart_check_rcat_moveto_touch(s3: S3Cluster, tmp_path: Path) -> None:
    if shutil.which("rclone") is None:
        pytest.fail("rclone is not installed: run .ci/install-s3-clients")
    # The AWS SDK inside rclone would load AWS_CA_BUNDLE itself, and fails to with rclone's
    # transport: the CA comes from --ca-cert only.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["RCLONE_CONFIG"] = "/dev/null"
    for site in ("dc1", "dc2"):
        prefix = f"RCLONE_CONFIG_{site.upper()}_"
        env.update({prefix + "TYPE": "s3", prefix + "PROVIDER": "Other",
                    prefix + "ACCESS_KEY_ID": s3.key_id,
                    prefix + "SECRET_ACCESS_KEY": s3.secret,
                    prefix + "ENDPOINT": s3.https[site], prefix + "REGION": "us-east-1",
                    prefix + "FORCE_PATH_STYLE": "true"})
    rclone = ["rclone", "--ca-cert", str(s3.ca), "--retries", "1", "--low-level-retries", "2"]
    src = tree(tmp_path / "src", 30)
    (src / "large.bin").write_bytes(os.urandom(12 << 20))  # multipart at a 5 MiB cutoff
    run([*rclone, "mkdir", "dc1:rclone"], env)
    run([*rclone, "copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(src),
         "dc1:rclone/src"], env, timeout=600)
    run([*rclone, "check", "--download", str(src), "dc2:rclone/src"], env, timeout=600)
    run([*rclone, "rcat", "dc1:rclone/piped.txt"], env, input=b"through a pipe\n")
    assert run([*rclone, "cat", "dc2:rclone/piped.txt"], env) == "through a pipe\n"
    run([*rclone, "moveto", "dc1:rclone/piped.txt", "dc1:rclone/moved.txt"], env)
    listing = run([*rclone, "lsf", "dc2:rclone"], env).split()
    assert "moved.txt" in listing and "piped.txt" not in listing
    run([*rclone, "touch", "dc1:rclone/touched"], env)
    assert "touched" in run([*rclone, "lsf", "dc2:rclone"], env).split()
    # The move left piped.txt's version hidden under a delete marker; rclone's clean-up of
    # hidden versions deletes them for good (DeleteObjects with VersionIds: purges).
    versions = run([*rclone, "lsf", "--s3-versions", "dc2:rclone"], env).split()
    assert any(v.startswith("piped-v") for v in versions), versions
    run([*rclone, "backend", "cleanup-hidden", "dc1:rclone"], env)
    versions = run([*rclone, "lsf", "--s3-versions", "dc2:rclone"], env).split()
    assert not any(v.startswith("piped") for v in versions), versions
    assert "moved.txt" in versions


def test_restic_backup_check_prune_restore_across_sites(s3: S3Cluster, tmp_path: Path) -> None:
    if shutil.which("restic") is None:
        pytest.fail("restic is not installed: run .ci/install-s3-clients")
    src = tree(tmp_path / "data", 300, size=3000)
    env = {**s3.env(), "RESTIC_PASSWORD": "correct horse battery staple"}
    # Backed up over plain HTTP to one site, checked and restored over HTTPS at the other.
    at_dc1 = ["restic", "-r", f"s3:{s3.http['dc1']}/restic"]
    at_dc2 = ["restic", "-r", f"s3:{s3.https['dc2']}/restic", "--cacert", str(s3.ca)]
    run([*at_dc1, "init"], env)
    run([*at_dc1, "backup", str(src)], env, timeout=600)
    (src / "d0" / "f0000.bin").write_bytes(b"changed")
    run([*at_dc1, "backup", str(src)], env, timeout=600)
    run([*at_dc2, "check", "--read-data"], env, timeout=600)
    run([*at_dc2, "forget", "--keep-last", "1", "--prune"], env, timeout=600)
    run([*at_dc2, "check"], env, timeout=600)
    restored = tmp_path / "restored"
    run([*at_dc2, "restore", "latest", "--target", str(restored)], env, timeout=600)
    copy = restored / src.relative_to(src.anchor)
    mismatch = filecmp.dircmp(src, copy)
    files = sorted(p.relative_to(src) for p in src.rglob("*.bin"))
    assert files == sorted(p.relative_to(copy) for p in copy.rglob("*.bin"))
    assert all(filecmp.cmp(src / f, copy / f, shallow=False) for f in files), mismatch.report()


def test_s3cmd_and_minio_sdk(s3: S3Cluster, tmp_path: Path) -> None:
    host = s3.https["dc1"].removeprefix("https://")
    s3cmd = [str(BIN / "s3cmd"), "--config", "/dev/null", "--access_key", s3.key_id,
             "--secret_key", s3.secret, "--host", host, "--host-bucket", host,
             "--region", "us-east-1", "--ca-certs", str(s3.ca), "--ssl", "--no-check-hostname"]
    payload = tmp_path / "s3cmd.bin"
    payload.write_bytes(os.urandom(300_000))
    run([*s3cmd, "mb", "s3://s3cmd"], s3.env())
    run([*s3cmd, "put", str(payload), "s3://s3cmd/obj"], s3.env())
    assert "s3://s3cmd/obj" in run([*s3cmd, "ls", "s3://s3cmd"], s3.env())
    back = tmp_path / "back.bin"
    run([*s3cmd, "get", "s3://s3cmd/obj", str(back)], s3.env())
    assert back.read_bytes() == payload.read_bytes()
    run([*s3cmd, "del", "s3://s3cmd/obj"], s3.env())

    import urllib3
    from minio import Minio

    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(s3.ca))
    for url in (s3.https["dc2"], s3.http["dc1"]):
        secure = url.startswith("https://")
        client = Minio(url.split("://", 1)[1], access_key=s3.key_id, secret_key=s3.secret,
                       secure=secure, region="us-east-1", http_client=pool if secure else None)
        bucket = f"minio-{'tls' if secure else 'plain'}"
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        data = os.urandom(200_000)
        import io

        client.put_object(bucket, "k/1", io.BytesIO(data), len(data))
        response = client.get_object(bucket, "k/1")
        try:
            assert response.read() == data
        finally:
            response.close()
            response.release_conn()
        assert [o.object_name for o in client.list_objects(bucket, prefix="k/",
                                                           recursive=True)] == ["k/1"]
        client.remove_object(bucket, "k/1")


class _Generated(io.RawIOBase):
    """*size* deterministic, incompressible bytes made on demand (never whole in memory),
    seekable so that botocore may rewind it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self.block = hashlib.shake_256(b"s3-memory").digest(1 << 20)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos, 1 << 20)
        start = self.pos % (1 << 20)
        piece = (self.block[start:] + self.block[:start])[:n]
        buffer[:n] = piece
        self.pos += n
        return n


def _vm_hwm_kib(node: NodeProcess) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_large_object_streams_through_the_gateway_with_bounded_node_memory(
        s3: S3Cluster) -> None:
    """One PutObject and one GetObject of an object larger than the bound (384 MiB; set
    HDSD_S3_MEMORY_MIB=5120 for the 5 GiB of the issue): the node stays under 256 MiB RSS."""
    size = int(os.environ.get("HDSD_S3_MEMORY_MIB", "384")) << 20
    node = s3.nodes["dc1-n1"]
    assert node.proc is not None
    # The peak so far is the other tests' (10 concurrent parts of `aws s3 cp`...): reset it.
    Path(f"/proc/{node.proc.pid}/clear_refs").write_text("5")
    client = s3.boto3(s3.https["dc1"])
    client.create_bucket(Bucket="memory")
    client.put_object(Bucket="memory", Key="big", Body=_Generated(size), ContentLength=size)
    expected = hashlib.sha256()
    source = _Generated(size)
    while piece := source.read(1 << 20):
        expected.update(piece)
    got = hashlib.sha256()
    body = client.get_object(Bucket="memory", Key="big")["Body"]
    received = 0
    while piece := body.read(1 << 20):
        got.update(piece)
        received += len(piece)
    assert received == size and got.hexdigest() == expected.hexdigest()
    peak = _vm_hwm_kib(s3.nodes["dc1-n1"])
    print(f"node peak RSS {peak} KiB for a {size >> 20} MiB object")
    assert peak < 256 << 10
