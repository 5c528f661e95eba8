"""`hdsd cert` without a running cluster: the CA records, lifetimes, usage errors, and what a
re-issue says when it cannot revoke the previous certificate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hdsd.transport import read_certificate
from tests.helpers.cluster import hdsd, init_cluster


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    init_cluster(root)
    return root


def _cert(root: Path, *args: str) -> tuple[int, str]:
    proc = hdsd("--profile", str(root / "client.toml"), "--timeout", "5", "cert", *args,
                "--cluster-dir", str(root))
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def test_ls_offline_shows_what_init_and_issue_made(root: Path) -> None:
    code, out = _cert(root, "issue", "--client", "short", "--tenant", "t1", "--role", "reader",
                      "--days", "3")
    assert code == 0 and "role reader" in out, out
    code, out = _cert(root, "ls", "--offline", "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert {("node", "dc1-n1"), ("node", "dc2-n1"), ("client", "admin"),
            ("client", "short")} <= kinds
    states = {r["name"]: r["state"] for r in rows}
    assert states["short"] == "expiring" and states["admin"] == "issued"  # 3 days < 14
    code, out = _cert(root, "ls", "--offline", "--tenant", "t1")
    assert code == 0 and "short" in out and "dc1-n1" not in out, out


def test_reissue_without_the_cluster_writes_the_new_one_and_says_what_is_left(root: Path
                                                                              ) -> None:
    assert _cert(root, "issue", "--client", "lone", "--tenant", "t1", "--role", "writer")[0] == 0
    first = read_certificate((root / "clients" / "client-lone@t1.crt").read_bytes()).serial
    code, out = _cert(root, "issue", "--client", "lone", "--tenant", "t1", "--role", "writer",
                      "--force")
    second = read_certificate((root / "clients" / "client-lone@t1.crt").read_bytes()).serial
    assert second != first  # written
    assert code == 6 and "could not be revoked" in out and first in out, out  # and said so
    assert len(out.strip().splitlines()) <= 4  # a few lines, no traceback
    # --keep-previous needs no cluster
    code, out = _cert(root, "issue", "--client", "lone", "--tenant", "t1", "--role", "writer",
                      "--force", "--keep-previous")
    assert code == 0 and f"kept {second}" in out, out


@pytest.mark.parametrize(("args", "exit_code", "words"), [
    (["revoke"], 2, "exactly one of"),
    (["revoke", "--client", "x", "--serial", "ab"], 2, "exactly one of"),
    (["revoke", "--client", "nobody"], 3, "no unexpired certificate"),
    (["renew", "--client", "nobody"], 3, "no certificate of client"),
    (["renew"], 2, "--client NAME or --node NAME"),
    (["issue", "--client", "x", "--tenant", "t1", "--role", "reader", "--days", "731"], 2, ""),
])
def test_usage_errors_are_one_line(root: Path, args: list[str], exit_code: int,
                                   words: str) -> None:
    code, out = _cert(root, *args)
    assert code == exit_code and words in out, out
    assert "Traceback" not in out
