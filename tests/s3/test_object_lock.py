"""Veeam-style immutability with boto3: versioning, Object Lock with a COMPLIANCE default
retention, per-object retention within it, legal holds; every delete and overwrite refused
until expiry, which a fake clock (the nodes' retention clock) moves past."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError

from tests.s3._inproc import s3_client, two_sites

pytestmark = pytest.mark.slow

DAY_MS = 86_400_000


async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def refused(fn: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as info:
        await run(fn, **kwargs)
    return str(info.value.response["Error"]["Code"])


async def test_veeam_style_compliance_retention_and_legal_hold(tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with two_sites(tmp_path) as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            other = s3_client(sites["dc2"].endpoint)
            await run(s3.create_bucket, Bucket="veeam", ObjectLockEnabledForBucket=True)
            versioning = await run(s3.get_bucket_versioning, Bucket="veeam")
            assert versioning["Status"] == "Enabled"
            lock = await run(s3.get_object_lock_configuration, Bucket="veeam")
            assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
            await run(s3.put_object_lock_configuration, Bucket="veeam",
                      ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {
                          "DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}})
            rule = (await run(other.get_object_lock_configuration, Bucket="veeam")
                    )["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
            assert rule == {"Mode": "COMPLIANCE", "Days": 30}  # replicated to the other site
            put = await run(s3.put_object, Bucket="veeam", Key="blocks/1", Body=b"backup")
            now = datetime.now(UTC)
            await run(s3.put_object_retention, Bucket="veeam", Key="blocks/1",
                      Retention={"Mode": "COMPLIANCE",
                                 "RetainUntilDate": now + timedelta(days=20)})
            # Beyond what the bucket guarantees: this version alone is retained longer (a
            # replicated retention record), read back at the other site.
            await run(s3.put_object_retention, Bucket="veeam", Key="blocks/1",
                      Retention={"Mode": "COMPLIANCE",
                                 "RetainUntilDate": now + timedelta(days=40)})
            assert await refused(s3.put_object_retention, Bucket="veeam", Key="blocks/1",
                                 Retention={"Mode": "COMPLIANCE",
                                            "RetainUntilDate": now - timedelta(days=1)}
                                 ) == "InvalidArgument"
            assert await refused(s3.put_object_retention, Bucket="veeam", Key="blocks/1",
                                 Retention={"Mode": "GOVERNANCE",
                                            "RetainUntilDate": now + timedelta(days=1)}
                                 ) == "NotImplemented"
            retention = (await run(other.get_object_retention, Bucket="veeam",
                                   Key="blocks/1"))["Retention"]
            assert retention["Mode"] == "COMPLIANCE"
            assert timedelta(days=39) < retention["RetainUntilDate"] - now < timedelta(days=41)
            # Asking for less than what holds it changes nothing (COMPLIANCE never shortens).
            await run(other.put_object_retention, Bucket="veeam", Key="blocks/1",
                      Retention={"Mode": "COMPLIANCE",
                                 "RetainUntilDate": now + timedelta(days=35)})
            retention = (await run(s3.get_object_retention, Bucket="veeam",
                                   Key="blocks/1"))["Retention"]
            assert timedelta(days=39) < retention["RetainUntilDate"] - now < timedelta(days=41)
            # Within retention nothing may delete or overwrite it, whatever the role.
            assert await refused(s3.delete_object, Bucket="veeam", Key="blocks/1") == \
                "AccessDenied"
            assert await refused(other.put_object, Bucket="veeam", Key="blocks/1",
                                 Body=b"ransom") == "AccessDenied"
            await run(s3.put_object, Bucket="veeam", Key="other", Body=b"o")
            assert await refused(s3.copy_object, Bucket="veeam", Key="blocks/1",
                                 CopySource="veeam/other") == "AccessDenied"
            out = await run(s3.delete_objects, Bucket="veeam",
                            Delete={"Objects": [{"Key": "blocks/1"}]})
            assert [e["Code"] for e in out["Errors"]] == ["AccessDenied"]
            assert await refused(s3.put_object_lock_configuration, Bucket="veeam",
                                 ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                                          "Rule": {"DefaultRetention": {
                                                              "Mode": "COMPLIANCE",
                                                              "Days": 10}}}) == "AccessDenied"
            # Deleting the version itself (a purge) is refused too, as S3 does under Object Lock,
            # alone or in a DeleteObjects.
            assert await refused(s3.delete_object, Bucket="veeam", Key="blocks/1",
                                 VersionId=put["VersionId"]) == "AccessDenied"
            out = await run(s3.delete_objects, Bucket="veeam", Delete={"Objects": [
                {"Key": "blocks/1", "VersionId": put["VersionId"]}]})
            assert [(e["Code"], e["VersionId"]) for e in out["Errors"]] == [
                ("AccessDenied", put["VersionId"])]
            got = await run(lambda: other.get_object(Bucket="veeam", Key="blocks/1")["Body"]
                            .read())
            assert got == b"backup"

            # Past expiry (the nodes' retention clock moved 31 days on), deletes succeed.
            later = time.time_ns() // 1_000_000 + 31 * DAY_MS
            for site in sites.values():
                site.node.tenancy._wall_ms = lambda: later
            await run(s3.delete_object, Bucket="veeam", Key="blocks/1")
            versions = await run(other.list_object_versions, Bucket="veeam", Prefix="blocks/")
            assert [v["VersionId"] for v in versions["Versions"]] == [put["VersionId"]]
            assert [m["IsLatest"] for m in versions["DeleteMarkers"]] == [True]
            old = await run(lambda: other.get_object(Bucket="veeam", Key="blocks/1",
                                                     VersionId=put["VersionId"])["Body"].read())
            assert old == b"backup"  # a delete marker hides, it destroys nothing
            # Past the bucket's 30 days, but not past this version's own 40: not purged.
            assert await refused(s3.delete_object, Bucket="veeam", Key="blocks/1",
                                 VersionId=put["VersionId"]) == "AccessDenied"

            # Past its retention a version can be deleted for good (Veeam's clean-up): the
            # version and then the delete marker, each gone at both sites.
            later = time.time_ns() // 1_000_000 + 41 * DAY_MS
            for site in sites.values():
                site.node.tenancy._wall_ms = lambda: later
            gone = await run(s3.delete_object, Bucket="veeam", Key="blocks/1",
                             VersionId=put["VersionId"])
            assert gone["VersionId"] == put["VersionId"] and "DeleteMarker" not in gone
            marker = versions["DeleteMarkers"][0]["VersionId"]
            out = await run(other.delete_objects, Bucket="veeam", Delete={"Objects": [
                {"Key": "blocks/1", "VersionId": marker},
                {"Key": "blocks/1", "VersionId": put["VersionId"]}]})  # already gone: ok
            assert sorted(((d["VersionId"], d.get("DeleteMarker", False)) for d in out["Deleted"]),
                          key=str) == sorted([(marker, True), (put["VersionId"], False)], key=str)
            for client in (s3, other):
                listed = await run(client.list_object_versions, Bucket="veeam", Prefix="blocks/")
                assert "Versions" not in listed and "DeleteMarkers" not in listed
                assert await refused(client.get_object, Bucket="veeam", Key="blocks/1",
                                     VersionId=put["VersionId"]) == "NoSuchKey"
            assert await refused(s3.delete_object, Bucket="veeam", Key="blocks/1",
                                 VersionId="not-a-version") == "InvalidArgument"

            # A legal hold (no retention on this bucket) blocks deletes until lifted.
            await run(s3.put_object, Bucket="case", Key="scan", Body=b"evidence")
            await run(s3.put_object_legal_hold, Bucket="case", Key="scan",
                      LegalHold={"Status": "ON"})
            hold = await run(other.get_object_legal_hold, Bucket="case", Key="scan")
            assert hold["LegalHold"]["Status"] == "ON"
            assert await refused(other.delete_object, Bucket="case", Key="scan") == \
                "AccessDenied"
            assert await refused(s3.put_object, Bucket="case", Key="scan", Body=b"x") == \
                "AccessDenied"
            held = (await run(s3.head_object, Bucket="case", Key="scan"))["VersionId"]
            assert await refused(other.delete_object, Bucket="case", Key="scan",
                                 VersionId=held) == "AccessDenied"
            await run(s3.put_object_legal_hold, Bucket="case", Key="scan",
                      LegalHold={"Status": "OFF"})
            await run(other.delete_object, Bucket="case", Key="scan")
            await run(other.delete_object, Bucket="case", Key="scan", VersionId=held)
            assert await refused(s3.get_object, Bucket="case", Key="scan",
                                 VersionId=held) == "NoSuchKey"

            # A bucket without a default retention: one version retained on its own (S3's
            # rule: it may be hidden by a delete marker, not deleted for good).
            free = await run(s3.put_object, Bucket="case", Key="free", Body=b"f")
            assert await refused(s3.get_object_retention, Bucket="case",
                                 Key="free") == "NoSuchObjectLockConfiguration"
            soon = datetime.fromtimestamp(later / 1000, UTC) + timedelta(days=2)
            await run(s3.put_object_retention, Bucket="case", Key="free",
                      VersionId=free["VersionId"],
                      Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon})
            got = (await run(other.get_object_retention, Bucket="case", Key="free",
                             VersionId=free["VersionId"]))["Retention"]
            assert abs((got["RetainUntilDate"] - soon).total_seconds()) < 1
            await run(other.delete_object, Bucket="case", Key="free")
            assert await refused(other.delete_object, Bucket="case", Key="free",
                                 VersionId=free["VersionId"]) == "AccessDenied"
            listed = await run(s3.list_object_versions, Bucket="case", Prefix="free")
            assert [v["VersionId"] for v in listed["Versions"]] == [free["VersionId"]]
            for site in sites.values():  # two days on: it may go
                site.node.tenancy._wall_ms = lambda: later + 3 * DAY_MS
            await run(other.delete_object, Bucket="case", Key="free",
                      VersionId=free["VersionId"])


async def test_a_writer_cannot_lift_a_hold_nor_set_bucket_retention(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with two_sites(tmp_path, role="writer") as sites:
            s3 = s3_client(sites["dc1"].endpoint)
            await run(s3.put_object, Bucket="w", Key="k", Body=b"v")
            await run(s3.put_object_legal_hold, Bucket="w", Key="k", LegalHold={"Status": "ON"})
            assert await refused(s3.put_object_legal_hold, Bucket="w", Key="k",
                                 LegalHold={"Status": "OFF"}) == "AccessDenied"
            assert await refused(s3.put_object_lock_configuration, Bucket="w",
                                 ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                                          "Rule": {"DefaultRetention": {
                                                              "Mode": "COMPLIANCE",
                                                              "Days": 1}}}) == "AccessDenied"
            assert await refused(s3.delete_object, Bucket="w", Key="k") == "AccessDenied"
