"""`hdsd cert issue` refuses to replace an existing client or to issue for a shredded tenant
unless told (`--force`): both used to happen without a word."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdsd.catalog import CATALOG_FILE, Catalog, TenantEntry
from hdsd.cluster import HybridClock
from tests.helpers.cluster import hdsd


def _issue(root: Path, client: str, tenant: str, *extra: str) -> tuple[int, str]:
    proc = hdsd("cert", "issue", "--client", client, "--tenant", tenant, "--role", "writer",
                "--cluster-dir", str(root), *extra)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    hdsd("init", str(tmp_path / "c"), "--ports", "7001,7002", check=True)
    return tmp_path / "c"


def test_an_existing_client_is_replaced_only_with_force(root: Path) -> None:
    code, out = _issue(root, "pacs-01", "chu")
    assert code == 0, out
    clients = root / "clients"
    key = clients / "client-pacs-01@chu.key"
    profile = clients / "pacs-01.toml"
    before = key.read_bytes(), profile.read_bytes()
    profile.write_text(profile.read_text() + "# edited by hand\n")
    edited = profile.read_bytes()

    code, out = _issue(root, "pacs-01", "chu")
    assert code == 2
    assert out.strip().splitlines() == [
        f"hdsd: error: client pacs-01 already exists ({profile}); nothing issued (choose "
        "another --client, or --force to replace it)"]
    assert (key.read_bytes(), profile.read_bytes()) == (before[0], edited)
    # The same name under another tenant would overwrite the profile too.
    code, out = _issue(root, "pacs-01", "other")
    assert code == 2 and "already exists" in out
    assert not (clients / "client-pacs-01@other.key").exists()

    # (--keep-previous: no cluster runs here to revoke the replaced certificate through)
    code, out = _issue(root, "pacs-01", "chu", "--force", "--keep-previous")
    assert code == 0, out
    assert key.read_bytes() != before[0] and b"edited by hand" not in profile.read_bytes()


def test_a_shredded_tenant_gets_no_certificate_without_force(root: Path) -> None:
    code, out = _issue(root, "lab-w", "lab")
    assert code == 0, out
    # Shred it in every node's catalog (offline, as the replicated shred leaves them).
    clock = HybridClock()
    data_dirs = sorted(root.glob("*/data"))
    assert len(data_dirs) == 2
    for data in data_dirs:
        catalog = Catalog(data / CATALOG_FILE)
        try:
            catalog.apply([TenantEntry(name="lab", wrapped=b"", created=clock.now(),
                                       shredded=clock.now())])
        finally:
            catalog.close()
    code, out = _issue(root, "lab-w2", "lab")
    assert code == 4
    assert out.strip().splitlines() == [
        "hdsd: error: tenant lab was crypto-shredded: every node refuses its requests; "
        "nothing issued (--force to issue anyway)"]
    assert not list((root / "clients").glob("*lab-w2*"))
    code, out = _issue(root, "lab-w2", "lab", "--force")
    assert code == 0, out
    assert "keys created" not in out  # a shredded tenant never gets keys again
