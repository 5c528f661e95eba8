"""End to end through the real CLI against a real `hdsd serve` process (TLS, fsync, crypto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import hdsd as hdsd_client
from tests.helpers.cluster import hdsd

pytestmark = pytest.mark.e2e

CHUNK = 1 << 20
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 50 * CHUNK]


def _cli(profile: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = hdsd("--profile", str(profile), *args, input=input)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


@pytest.mark.parametrize("size", SIZES)
def test_put_get_exact_bytes(profile: Path, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    out = json.loads(_cli(profile, "put", f"e2e/size-{size}", str(src), "--json"))
    assert out["size"] == size
    assert _cli(profile, "get", f"e2e/size-{size}") == data
    dst = tmp_path / "dst.bin"
    _cli(profile, "get", f"e2e/size-{size}", "-o", str(dst))
    assert dst.read_bytes() == data


def test_put_from_stdin_and_range(profile: Path) -> None:
    data = bytes(range(256)) * 9000
    _cli(profile, "put", "e2e/stdin", "-", input=data)
    assert _cli(profile, "get", "e2e/stdin") == data
    assert _cli(profile, "get", "e2e/stdin", "--range", "1000-2999") == data[1000:3000]
    assert _cli(profile, "get", "e2e/stdin", "--range", f"{len(data) - 5}-") == data[-5:]


def test_cli_and_python_ranges_say_the_same_bytes(profile: Path, tmp_path: Path) -> None:
    # The CLI's range is inclusive (HTTP, S3); Python's names what it counts: no end byte to
    # misread. `--range 0-1023` and `offset=0, length=1024` are the same 1024 bytes.
    data = os.urandom(3 * CHUNK + 7)
    _cli(profile, "put", "e2e/ranges", "-", input=data)
    with hdsd_client.Client(profile) as c:
        for first, last in [(0, 1023), (CHUNK - 2, CHUNK + 1), (5, 5), (len(data) - 3,
                                                                          len(data) - 1)]:
            want = data[first:last + 1]
            assert _cli(profile, "get", "e2e/ranges", "--range", f"{first}-{last}") == want
            assert c.get("e2e", "ranges", offset=first, length=last - first + 1) == want
        assert c.get("e2e", "ranges", offset=CHUNK) == data[CHUNK:]  # no length: to the end
        assert c.get("e2e", "ranges", length=10) == data[:10]
        dst = tmp_path / "part"
        c.get_to_file("e2e", "ranges", dst, offset=7, length=CHUNK)
        assert dst.read_bytes() == data[7:7 + CHUNK]
        with pytest.raises(hdsd_client.InvalidArgument):
            c.get("e2e", "ranges", offset=0, length=0)
        with pytest.raises(TypeError):  # the old, ambiguous names are gone, loudly
            c.get("e2e", "ranges", start=0, end=1024)  # type: ignore[call-arg]


def test_stat_ls_versions_rm(profile: Path) -> None:
    _cli(profile, "put", "docs/a/1.txt", "-", "--meta", "patient=p1", input=b"one")
    _cli(profile, "put", "docs/a/1.txt", "-", input=b"uno")
    _cli(profile, "put", "docs/a/2.txt", "-", input=b"two")
    _cli(profile, "put", "docs/b/3.txt", "-", input=b"three")
    stat = json.loads(_cli(profile, "stat", "docs/a/1.txt", "--json"))
    assert stat["size"] == 3 and stat["deleted"] is False
    listed = [json.loads(line) for line in _cli(profile, "ls", "docs/a/", "--json").splitlines()]
    assert [e["key"] for e in listed] == ["a/1.txt", "a/2.txt"]
    versions = [json.loads(line) for line in
                _cli(profile, "versions", "docs/a/1.txt", "--json").splitlines()]
    assert len(versions) == 2 and versions[0]["metadata"] == {"patient": "p1"}
    first = versions[0]["version"]
    assert _cli(profile, "get", "docs/a/1.txt", "--version", first) == b"one"
    assert _cli(profile, "get", "docs/a/1.txt") == b"uno"
    _cli(profile, "rm", "docs/a/1.txt")
    missing = hdsd("--profile", str(profile), "get", "docs/a/1.txt")
    assert missing.returncode == 3
    assert missing.stderr.decode().startswith("hdsd: error:")
    assert b"Traceback" not in missing.stderr
    assert len(_cli(profile, "versions", "docs/a/1.txt", "--json").splitlines()) == 3
    assert _cli(profile, "get", "docs/a/1.txt", "--version", first) == b"one"
    listed = [json.loads(line) for line in _cli(profile, "ls", "docs", "--json").splitlines()]
    assert [e["key"] for e in listed] == ["a/2.txt", "b/3.txt"]


def test_status(profile: Path) -> None:
    proc = hdsd("--profile", str(profile), "status", "--json")
    # 0 all well, or 10 while a peer is not yet compared (rpo.zero false): both nodes are up
    assert proc.returncode in (0, 10), proc.stderr.decode()
    st = json.loads(proc.stdout)
    assert proc.returncode == (0 if all(n["rpo"]["zero"] for n in st["nodes"]) else 10)
    assert st["node"] == "dc1-n1" and st["site"] == "dc1"
    assert st["store"]["fsyncs"] >= 0


def test_one_line_errors(profile: Path, tmp_path: Path) -> None:
    cases = [
        (["get", "nobucket/nokey"], 3),
        (["get", "BAD!/x"], 2),
        (["put", "e2e/x", str(tmp_path / "does-not-exist")], 2),
        (["get", "e2e/size-1", "--range", "9-3"], 2),
    ]
    for args, code in cases:
        proc = hdsd("--profile", str(profile), *args)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hdsd: error:"), (args, lines)
    bad_profile = hdsd("--profile", str(tmp_path / "nope.toml"), "ls", "x")
    assert bad_profile.returncode == 2 and b"Traceback" not in bad_profile.stderr
