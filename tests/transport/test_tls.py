from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from hdsd import ConfigError
from hdsd.transport import client_context, server_context

from .conftest import Pki


def test_server_context_is_tls13_only_and_requires_a_peer_certificate(pki: Pki) -> None:
    ctx = server_context(*pki.node_a, pki.ca)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    # Our CA only: nothing from the system trust store.
    [ca] = ctx.get_ca_certs()
    assert ca["subject"][0] == (("commonName", "hdsd CA c1"),)


@pytest.mark.parametrize("which", ["client", "node_b"])
def test_client_context_verifies_the_server_and_its_name(pki: Pki, which: str) -> None:
    cert, key = getattr(pki, which)
    ctx = client_context(cert, key, pki.ca)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1


@pytest.mark.parametrize("missing", ["cert", "key", "ca"])
@pytest.mark.parametrize("make", [server_context, client_context])
def test_missing_file_is_a_config_error_naming_the_path(
    tmp_path: Path, pki: Pki, missing: str, make: object
) -> None:
    files = {"cert": pki.node_a[0], "key": pki.node_a[1], "ca": pki.ca}
    files[missing] = tmp_path / "absent.pem"
    with pytest.raises(ConfigError) as info:
        make(files["cert"], files["key"], files["ca"])  # type: ignore[operator]
    assert str(tmp_path / "absent.pem") in str(info.value)
    assert "hdsd cert issue" in str(info.value)


def test_unreadable_key_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    key = tmp_path / "dir-not-file.key"
    key.mkdir()
    with pytest.raises(ConfigError, match=str(key)):
        server_context(pki.node_a[0], key, pki.ca)


def test_key_of_another_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="does not match") as info:
        client_context(pki.client[0], pki.node_a[1], pki.ca)
    assert str(pki.node_a[1]) in str(info.value)


def test_certificate_from_another_ca_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="not issued by"):
        server_context(*pki.other_node, pki.ca)


@pytest.mark.parametrize("garbage", ["cert", "key", "ca"])
def test_garbage_files_are_config_errors(tmp_path: Path, pki: Pki, garbage: str) -> None:
    files = {"cert": pki.node_a[0], "key": pki.node_a[1], "ca": pki.ca}
    files[garbage] = tmp_path / "garbage.pem"
    files[garbage].write_bytes(b"-----BEGIN NONSENSE-----\n")
    with pytest.raises(ConfigError, match=str(files[garbage])):
        server_context(files["cert"], files["key"], files["ca"])


def test_a_node_cannot_listen_with_a_client_certificate(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="client certificate"):
        server_context(*pki.client, pki.ca)
