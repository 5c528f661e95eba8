"""The gateway's operations with boto3 against two real in-process nodes (see _inproc)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
from botocore.exceptions import ClientError

from tests.s3._inproc import s3_client, two_sites

pytestmark = pytest.mark.slow


async def run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_put_get_head_list_delete_read_back_at_the_other_site(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            dc1, dc2 = s3_client(sites["dc1"].endpoint), s3_client(sites["dc2"].endpoint)
            await run(dc1.create_bucket, Bucket="scans")
            body = os.urandom(3 << 20) + b"tail"
            put = await run(dc1.put_object, Bucket="scans", Key="ct/001.dcm", Body=body,
                            Metadata={"patient": "p-1"}, ContentType="application/dicom")
            assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
            got = await run(dc2.get_object, Bucket="scans", Key="ct/001.dcm")
            assert await run(got["Body"].read) == body
            assert got["Metadata"] == {"patient": "p-1"}
            assert got["ContentType"] == "application/dicom"
            assert got["ETag"] == put["ETag"]
            head = await run(dc2.head_object, Bucket="scans", Key="ct/001.dcm")
            assert head["ContentLength"] == len(body)
            assert head["VersionId"] == put["VersionId"]
            await run(dc1.put_object, Bucket="scans", Key="small", Body=b"hello")
            listed = await run(dc2.list_objects_v2, Bucket="scans")
            assert [o["Key"] for o in listed["Contents"]] == ["ct/001.dcm", "small"]
            assert listed["Contents"][1]["Size"] == 5
            buckets = await run(dc2.list_buckets)
            assert [b["Name"] for b in buckets["Buckets"]] == ["scans"]
            await run(dc2.head_bucket, Bucket="scans")
            with pytest.raises(ClientError) as info:
                await run(dc2.head_bucket, Bucket="nothing-here")
            assert info.value.response["Error"]["Code"] == "404"
            await run(dc1.delete_object, Bucket="scans", Key="small")
            with pytest.raises(ClientError) as info:
                await run(dc2.get_object, Bucket="scans", Key="small")
            assert info.value.response["Error"]["Code"] == "NoSuchKey"
            await run(dc2.delete_object, Bucket="scans", Key="never-was")  # S3: 204 anyway


async def test_listing_prefix_delimiter_pages_and_v1_markers(tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with two_sites(tmp_path) as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            keys = [f"a/{i:02d}" for i in range(7)] + ["b/x/1", "b/y", "c", "d/1"]
            for k in keys:
                await run(s3.put_object, Bucket="lst", Key=k, Body=k.encode())
            page = await run(s3.list_objects_v2, Bucket="lst", Delimiter="/")
            assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "b/", "d/"]
            assert [o["Key"] for o in page["Contents"]] == ["c"]
            page = await run(s3.list_objects_v2, Bucket="lst", Prefix="b/", Delimiter="/")
            assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/x/"]
            assert [o["Key"] for o in page["Contents"]] == ["b/y"]
            seen: list[str] = []
            token = None
            while True:
                kwargs = {"ContinuationToken": token} if token else {}
                page = await run(s3.list_objects_v2, Bucket="lst", MaxKeys=3, **kwargs)
                seen += [o["Key"] for o in page.get("Contents", [])]
                if not page["IsTruncated"]:
                    break
                token = page["NextContinuationToken"]
            assert seen == sorted(keys)
            paginator = s3.get_paginator("list_objects")
            v1 = await run(lambda: [o["Key"] for p in paginator.paginate(
                Bucket="lst", PaginationConfig={"PageSize": 2}) for o in p.get("Contents", [])])
            assert v1 == sorted(keys)
            rolled = await run(lambda: [(tuple(o["Key"] for o in p.get("Contents", [])),
                                         tuple(c["Prefix"] for c in p.get("CommonPrefixes", [])))
                                        for p in paginator.paginate(
                Bucket="lst", Delimiter="/", PaginationConfig={"PageSize": 1})])
            assert [x for c, p in rolled for x in c + p] == ["a/", "b/", "c", "d/"]
            page = await run(s3.list_objects_v2, Bucket="lst", StartAfter="b/y", Prefix="")
            assert [o["Key"] for o in page["Contents"]] == ["c", "d/1"]


async def test_ranges_conditionals_copy_delete_objects_and_errors(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            body = bytes(range(256)) * 9000  # > 2 chunks
            put = await run(s3.put_object, Bucket="r", Key="k", Body=body)
            for rng, want in (("bytes=0-9", body[:10]), ("bytes=1048570-1048590",
                                                          body[1048570:1048591]),
                              ("bytes=-5", body[-5:]), ("bytes=2000000-", body[2000000:])):
                got = await run(s3.get_object, Bucket="r", Key="k", Range=rng)
                assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
                assert await run(got["Body"].read) == want
            with pytest.raises(ClientError) as info:
                await run(s3.get_object, Bucket="r", Key="k", Range=f"bytes={len(body)}-")
            assert info.value.response["Error"]["Code"] == "InvalidRange"
            with pytest.raises(ClientError) as info:
                await run(s3.get_object, Bucket="r", Key="k", IfNoneMatch=put["ETag"])
            assert info.value.response["Error"]["Code"] == "304"
            with pytest.raises(ClientError) as info:
                await run(s3.get_object, Bucket="r", Key="k", IfMatch='"0000"')
            assert info.value.response["Error"]["Code"] == "PreconditionFailed"
            got = await run(s3.get_object, Bucket="r", Key="k", IfMatch=put["ETag"])
            assert len(await run(got["Body"].read)) == len(body)
            await run(s3.copy_object, Bucket="r", Key="copy", CopySource={"Bucket": "r",
                                                                          "Key": "k"})
            got = await run(s3.get_object, Bucket="r", Key="copy")
            assert await run(got["Body"].read) == body
            assert got["ETag"] == put["ETag"]
            await run(s3.put_object, Bucket="r", Key="m", Body=b"x", Metadata={"a": "1"})
            await run(s3.copy_object, Bucket="r", Key="m2", CopySource="r/m",
                      MetadataDirective="REPLACE", Metadata={"b": "2"})
            assert (await run(s3.head_object, Bucket="r", Key="m2"))["Metadata"] == {"b": "2"}
            out = await run(s3.delete_objects, Bucket="r", Delete={
                "Objects": [{"Key": "k"}, {"Key": "copy"}, {"Key": "absent"}]})
            assert sorted(d["Key"] for d in out["Deleted"]) == ["absent", "copy", "k"]
            listed = await run(s3.list_objects_v2, Bucket="r")
            assert [o["Key"] for o in listed["Contents"]] == ["m", "m2"]
            with pytest.raises(ClientError) as info:
                await run(s3.get_bucket_acl, Bucket="r")
            assert info.value.response["Error"]["Code"] == "NotImplemented"
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
            with pytest.raises(ClientError) as info:
                await run(s3.put_object, Bucket="r", Key="bad", Body=b"abc",
                          ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")
            assert info.value.response["Error"]["Code"] == "BadDigest"
            with pytest.raises(ClientError):
                await run(s3.head_object, Bucket="r", Key="bad")  # nothing was stored


async def test_multipart_out_of_order_etag_list_abort(tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with two_sites(tmp_path) as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            await run(s3.create_bucket, Bucket="mp")
            parts = [os.urandom(5 << 20), os.urandom(5 << 20), b"last part"]
            up = await run(s3.create_multipart_upload, Bucket="mp", Key="big",
                           Metadata={"who": "test"})
            uid = up["UploadId"]
            etags = {}
            for number in (3, 1, 2):  # out of order
                r = await run(s3.upload_part, Bucket="mp", Key="big", UploadId=uid,
                              PartNumber=number, Body=parts[number - 1])
                etags[number] = r["ETag"]
            listed = await run(s3.list_parts, Bucket="mp", Key="big", UploadId=uid)
            assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
            # The upload's record on disk names neither bucket, key nor metadata in clear.
            state = b"".join(p.read_bytes() for p in
                             (tmp_path / "dc1-n1" / "s3-uploads").rglob("*.json"))
            assert b'"big"' not in state and b"test" not in state and b'"mp"' not in state
            assert b"sealed" in state
            uploads = await run(s3.list_multipart_uploads, Bucket="mp")
            assert [u["UploadId"] for u in uploads["Uploads"]] == [uid]
            done = await run(s3.complete_multipart_upload, Bucket="mp", Key="big",
                             UploadId=uid, MultipartUpload={"Parts": [
                                 {"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]})
            md5s = b"".join(hashlib.md5(p).digest() for p in parts)
            assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
            got = await run(s3_client(sites["dc2"].endpoint).get_object, Bucket="mp",
                            Key="big")
            assert await run(got["Body"].read) == b"".join(parts)
            assert got["ETag"] == done["ETag"] and got["Metadata"] == {"who": "test"}
            assert (await run(s3.list_multipart_uploads, Bucket="mp")).get("Uploads", []) == []
            up2 = await run(s3.create_multipart_upload, Bucket="mp", Key="gone")
            await run(s3.upload_part, Bucket="mp", Key="gone", UploadId=up2["UploadId"],
                      PartNumber=1, Body=b"x")
            await run(s3.abort_multipart_upload, Bucket="mp", Key="gone",
                      UploadId=up2["UploadId"])
            with pytest.raises(ClientError) as info:
                await run(s3.list_parts, Bucket="mp", Key="gone", UploadId=up2["UploadId"])
            assert info.value.response["Error"]["Code"] == "NoSuchUpload"
            # UploadPartCopy: parts copied from an object (a range, then the rest).
            whole = b"".join(parts)
            up4 = await run(s3.create_multipart_upload, Bucket="mp", Key="copied")
            copied = []
            for n, rng in ((1, f"bytes=0-{(5 << 20) - 1}"), (2, f"bytes={5 << 20}-")):
                r = await run(s3.upload_part_copy, Bucket="mp", Key="copied",
                              UploadId=up4["UploadId"], PartNumber=n,
                              CopySource={"Bucket": "mp", "Key": "big"}, CopySourceRange=rng)
                copied.append(r["CopyPartResult"]["ETag"])
            await run(s3.complete_multipart_upload, Bucket="mp", Key="copied",
                      UploadId=up4["UploadId"], MultipartUpload={"Parts": [
                          {"PartNumber": n + 1, "ETag": t} for n, t in enumerate(copied)]})
            got = await run(lambda: s3.get_object(Bucket="mp", Key="copied")["Body"].read())
            assert got == whole
            # Parts that are not whole chunks (5 MiB + 3 bytes): read back and put as one stream.
            odd = [os.urandom((5 << 20) + 3), os.urandom(100)]
            up5 = await run(s3.create_multipart_upload, Bucket="mp", Key="odd")
            tags = [(await run(s3.upload_part, Bucket="mp", Key="odd", UploadId=up5["UploadId"],
                               PartNumber=n + 1, Body=odd[n]))["ETag"] for n in (0, 1)]
            await run(s3.complete_multipart_upload, Bucket="mp", Key="odd",
                      UploadId=up5["UploadId"], MultipartUpload={"Parts": [
                          {"PartNumber": n + 1, "ETag": t} for n, t in enumerate(tags)]})
            got = await run(lambda: s3.get_object(Bucket="mp", Key="odd")["Body"].read())
            assert got == b"".join(odd)
            # Either way the version's content hash is the whole object's, as for any put.
            node = sites["dc1"].node
            for name, content in (("big", whole), ("odd", b"".join(odd)), ("copied", whole)):
                hasher = node.codec("default").content_hasher()
                hasher.update(content)
                (current,) = [v for v in await node.reads.versions_of("default", "mp", name)]
                assert current.content_hash == hasher.digest(), name
            # Too small a part before the last: refused, nothing stored.
            up3 = await run(s3.create_multipart_upload, Bucket="mp", Key="small")
            tags = [(await run(s3.upload_part, Bucket="mp", Key="small",
                               UploadId=up3["UploadId"], PartNumber=n, Body=b"y"))["ETag"]
                    for n in (1, 2)]
            with pytest.raises(ClientError) as info:
                await run(s3.complete_multipart_upload, Bucket="mp", Key="small",
                          UploadId=up3["UploadId"], MultipartUpload={"Parts": [
                              {"PartNumber": n + 1, "ETag": t} for n, t in enumerate(tags)]})
            assert info.value.response["Error"]["Code"] == "EntityTooSmall"


async def test_signatures_wrong_unknown_expired_and_presigned(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    import boto3
    from botocore.config import Config

    from tests.s3._inproc import KEY_ID

    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            ep = sites["dc1"].endpoint
            s3 = s3_client(ep)
            await run(s3.put_object, Bucket="sig", Key="k", Body=b"signed")

            def client(key_id: str, secret: str) -> object:
                return boto3.client("s3", endpoint_url=ep.url, region_name="us-east-1",
                                    aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    config=Config(retries={"max_attempts": 1},
                                                  s3={"addressing_style": "path"}))

            for key_id, secret, code in ((KEY_ID, "not-the-secret", "SignatureDoesNotMatch"),
                                         ("HDSDUNKNOWN000000000", "x", "InvalidAccessKeyId")):
                bad = client(key_id, secret)
                with pytest.raises(ClientError) as info:
                    await run(bad.put_object, Bucket="sig", Key="k", Body=b"forged")  # type: ignore[attr-defined]
                assert info.value.response["Error"]["Code"] == code
            # boto3 presigns with Signature V2 unless told: hdsd verifies V4 only.
            presigner = s3_client(ep, signature_version="s3v4")
            url = await run(presigner.generate_presigned_url, "get_object",
                            Params={"Bucket": "sig", "Key": "k"}, ExpiresIn=300)
            assert "X-Amz-Expires=300" in url

            def fetch(u: str) -> tuple[int, bytes]:
                try:
                    with urllib.request.urlopen(u, timeout=30) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            assert await run(fetch, url) == (200, b"signed")
            status, body = await run(fetch, url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"))
            assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
            expired = await run(presigner.generate_presigned_url, "get_object",
                                Params={"Bucket": "sig", "Key": "k"}, ExpiresIn=1)
            await trio.sleep(2.5)
            status, body = await run(fetch, expired)
            assert status == 403 and b"<Code>AccessDenied</Code>" in body
            status, body = await run(fetch, f"{ep.url}/sig/k")  # anonymous
            assert status == 403 and b"<Code>AccessDenied</Code>" in body
            got = await run(lambda: s3.get_object(Bucket="sig", Key="k")["Body"].read())
            assert got == b"signed"  # nothing forged was stored; the node keeps serving


async def test_a_graceful_stop_finishes_s3_uploads_in_flight_and_refuses_new_ones(
        tmp_path: Path) -> None:
    from tests.s3._inproc import signed_head

    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            ep = sites["dc1"].endpoint
            body = os.urandom(3 << 20)
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            try:
                await stream.send_all(signed_head("PUT", ep, "/stop/k", {
                    "Content-Length": str(len(body))}, body) + body[:1 << 20])
                await trio.sleep(0.5)
                sites["dc1"].node.shutdown()  # SIGTERM's path
                refused = s3_client(ep)
                with pytest.raises(ClientError) as info:
                    await run(refused.put_object, Bucket="stop", Key="new", Body=b"x")
                assert info.value.response["Error"]["Code"] == "ServiceUnavailable"
                # Longer than the rest of the stop takes (final audit checkpoint, links): the
                # node waits for this request, not just for its native ones.
                await trio.sleep(8)
                await stream.send_all(body[1 << 20:])
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some(65536)
                assert answer.startswith(b"HTTP/1.1 200 ")
            finally:
                await stream.aclose()
            got = await run(lambda: s3_client(sites["dc2"].endpoint).get_object(
                Bucket="stop", Key="k")["Body"].read())
            assert got == body


async def _all_versions(s3, bucket: str, page_size: int) -> list[tuple[str, str, bool, bool]]:  # type: ignore[no-untyped-def]
    """Every (key, version, is latest, is delete marker) through key-marker and
    version-id-marker continuation, *page_size* per request, checking each page's bound."""
    seen: list[tuple[str, str, bool, bool]] = []
    markers: dict[str, str] = {}
    while True:
        page = await run(s3.list_object_versions, Bucket=bucket, MaxKeys=page_size, **markers)
        got = [(v["Key"], v["VersionId"], v["IsLatest"], False)
               for v in page.get("Versions", [])] + [
            (m["Key"], m["VersionId"], m["IsLatest"], True) for m in page.get("DeleteMarkers", [])]
        assert len(got) <= page_size
        seen += got
        if not page["IsTruncated"]:
            return seen
        assert len(got) == page_size
        markers = {"KeyMarker": page["NextKeyMarker"],
                   "VersionIdMarker": page["NextVersionIdMarker"]}


async def _versions_paged_exactly(tmp_path: Path, many: int) -> None:
    async with two_sites(tmp_path) as sites:
        s3 = s3_client(sites["dc1"].endpoint)
        other = s3_client(sites["dc2"].endpoint)
        written: dict[str, list[tuple[str, bool]]] = {"a": [], "many": [], "z": []}
        for key, n in (("a", 3), ("many", many), ("z", 2)):
            for i in range(n):
                put = await run(s3.put_object, Bucket="ver", Key=key, Body=f"{i}".encode())
                written[key].append((put["VersionId"], False))
        marker = await run(s3.delete_object, Bucket="ver", Key="z")
        written["z"].append((marker["VersionId"], True))
        expected = [(key, vid, i == 0, deleted) for key in sorted(written)
                    for i, (vid, deleted) in enumerate(reversed(written[key]))]
        for page_size in (1000, 7, 3):
            for client in (s3, other):
                got = await _all_versions(client, "ver", page_size)
                # A page lists versions before markers: compare in the listing's order.
                assert sorted(got, key=expected.index) == expected
                assert len(got) == len(expected)
        # Markers inside the big key, and a version-id marker alone is refused.
        mid = written["many"][many // 2][0]
        page = await run(s3.list_object_versions, Bucket="ver", KeyMarker="many",
                         VersionIdMarker=mid, MaxKeys=2)
        older = [vid for vid, _ in reversed(written["many"][:many // 2])]
        assert [v["VersionId"] for v in page["Versions"]] == older[:2]
        with pytest.raises(ClientError) as info:
            await run(s3.list_object_versions, Bucket="ver", VersionIdMarker=mid)
        assert info.value.response["Error"]["Code"] == "InvalidArgument"


async def test_list_object_versions_pages_exactly_inside_a_key(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """More versions of one key than the gateway asks the node for at once (shrunk here, as
    if a key had thousands), listed whole and exactly through both markers."""
    import hdsd.s3._gateway as gateway

    monkeypatch.setattr(gateway, "_VERSIONS_PAGE", 5)
    with trio.fail_after(180):
        await _versions_paged_exactly(tmp_path, 23)


@pytest.mark.skipif(not os.environ.get("HDSD_S3_MANY_VERSIONS"),
                    reason="1,203 versions of one key: set HDSD_S3_MANY_VERSIONS=1")
async def test_list_object_versions_of_a_key_with_more_than_1000(tmp_path: Path) -> None:
    with trio.fail_after(900):
        await _versions_paged_exactly(tmp_path, 1203)


async def test_virtual_host_style_when_a_domain_is_configured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``[s3] domain``, ``BUCKET.<domain>`` in Host names the bucket (boto3's virtual
    addressing; boto3 addresses a bucket by host only if its name is DNS-compatible and at
    least 3 characters long); path-style keeps working on the same gateway."""
    import socket

    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        # *.s3.test is this test's domain: every name of it is this machine.
        name = host.decode() if isinstance(host, bytes) else host
        return real("127.0.0.1" if str(name).endswith("s3.test") else host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with trio.fail_after(180):
        async with two_sites(tmp_path) as sites:
            site = sites["dc1"]
            site.gateway.domain = "s3.test"
            import boto3
            from botocore.config import Config

            from tests.s3._inproc import KEY_ID, SECRET
            vhost = boto3.client(
                "s3", endpoint_url=f"http://s3.test:{site.endpoint.port}",
                region_name="us-east-1", aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
                config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "virtual"}))
            await run(vhost.create_bucket, Bucket="vhb")
            await run(vhost.put_object, Bucket="vhb", Key="dir/a b.txt", Body=b"hosted")
            got = await run(vhost.get_object, Bucket="vhb", Key="dir/a b.txt")
            assert await run(got["Body"].read) == b"hosted"
            listed = await run(vhost.list_objects_v2, Bucket="vhb", Prefix="dir/")
            assert [o["Key"] for o in listed["Contents"]] == ["dir/a b.txt"]
            path_style = s3_client(site.endpoint)  # the same object, path-style
            again = await run(path_style.get_object, Bucket="vhb", Key="dir/a b.txt")
            assert await run(again["Body"].read) == b"hosted"
            buckets = await run(vhost.list_buckets)  # Host is the domain itself: the service
            assert "vhb" in [b["Name"] for b in buckets["Buckets"]]


async def test_a_small_put_with_expect_100_continue_reaches_the_node_whole(
        tmp_path: Path) -> None:
    """boto3 sends ``Expect: 100-continue`` (and an aws-chunked body with a CRC32 trailer) on
    every PutObject, 4 KiB ones too: the gateway still reads such a small body whole before
    the put, so the object API stores it in one step (its source is ready), and a body over
    the small-body bound still streams."""
    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            gateway = sites["dc1"].gateway
            seen: list[tuple[str, int | None]] = []
            put = gateway.backend.put

            async def spy(tenant, bucket, key, source, **kw):  # type: ignore[no-untyped-def]
                whole = source.ready()
                seen.append((key, None if whole is None else len(whole)))
                return await put(tenant, bucket, key, source, **kw)

            gateway.backend.put = spy  # type: ignore[method-assign]
            s3 = s3_client(sites["dc1"].endpoint)
            await run(s3.create_bucket, Bucket="small")
            small, large = os.urandom(4096), os.urandom(100 << 10)
            await run(s3.put_object, Bucket="small", Key="k4", Body=small)
            await run(s3.put_object, Bucket="small", Key="k100", Body=large)
            assert seen == [("k4", 4096), ("k100", None)]
            got = await run(s3.get_object, Bucket="small", Key="k4")
            assert await run(got["Body"].read) == small


async def test_requests_draw_no_system_randomness_each(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's ids (x-amz-request-id, the put's request id) come from the process's buffer
    of kernel randomness, not one getrandom each (a point where the trio thread gives up the
    GIL), and are still all distinct."""
    import random
    import threading

    real = os.urandom
    calls = [0]

    def counting(n: int) -> bytes:
        if threading.current_thread() is threading.main_thread():  # the nodes' trio thread
            calls[0] += 1
        return real(n)

    with trio.fail_after(120):
        async with two_sites(tmp_path) as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            await run(s3.create_bucket, Bucket="ids")
            # (secrets' functions reach os.urandom through the random module's own name)
            monkeypatch.setattr(os, "urandom", counting)
            monkeypatch.setattr(random, "_urandom", counting)
            puts = [await run(s3.put_object, Bucket="ids", Key=f"k{i}", Body=b"x" * 100)
                    for i in range(40)]
            monkeypatch.undo()
    request_ids = {p["ResponseMetadata"]["RequestId"] for p in puts}
    assert len(request_ids) == 40 and all(len(r) == 16 for r in request_ids)
    assert len({p["VersionId"] for p in puts}) == 40
    # 40 puts, two ids each: 80 calls before; a few buffer refills now
    assert calls[0] <= 10, calls[0]
