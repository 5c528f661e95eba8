"""Bundles from a spec (hdsd/node/_bundle.py): everything a machine needs and nothing else."""

from __future__ import annotations

import ipaddress
import tarfile
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from cryptography import x509

from hdsd import ConfigError
from hdsd.client import load_profile
from hdsd.node import load_node_config, load_spec, master_key_check, write_cluster
from hdsd.node._masterkey import load_master

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "cluster-spec.example.toml"
UNIT = ROOT / "configs" / "hdsd.service"


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def _sans(cert_file: Path) -> tuple[set[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    hosts |= set(san.get_values_for_type(x509.DNSName))
    return hosts, san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture(scope="module")
def relative(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops") / "cluster"
    write_cluster(load_spec(EXAMPLE), root, archive=True)
    return root


def test_each_bundle_holds_its_own_files_only(relative: Path) -> None:
    spec = load_spec(relative / "cluster-spec.toml")
    for node in spec.nodes:
        bundle = relative / node.name
        assert _files(bundle) == {
            "node.toml", "ca.crt", f"node-{node.name}.crt", f"node-{node.name}.key",
            "master.key", "data/keyring.hdsd", "data/catalog.sqlite", "data/audit/signing.key",
            "data/audit/verify.key"}, node.name
        with tarfile.open(relative / f"{node.name}.tar") as tar:
            assert {m.name for m in tar.getmembers() if m.isfile()} == _files(bundle)


def test_no_ca_key_in_any_bundle(relative: Path) -> None:
    ca_key = (relative / "ca" / "ca.key").read_bytes()
    ca_body = b"".join(ca_key.splitlines()[1:-1])
    for node in load_spec(relative / "cluster-spec.toml").nodes:
        for path in (relative / node.name).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert path.name != "ca.key" and ca_body not in data.replace(b"\n", b"")
        with tarfile.open(relative / f"{node.name}.tar") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    assert ca_body not in extracted.read().replace(b"\n", b"")


def test_every_node_toml_path_resolves_inside_its_bundle(relative: Path) -> None:
    for node in load_spec(relative / "cluster-spec.toml").nodes:
        bundle = (relative / node.name).resolve()
        config = load_node_config(bundle / "node.toml")
        paths = [config.ca, config.cert, config.key, config.data_dir, config.master_key_file]
        for path in paths:
            assert path is not None and path.is_relative_to(bundle), (node.name, path)
            assert path.exists()
        assert config.master_key_file is not None
        assert config.master_key_file.stat().st_mode & 0o777 == 0o600
        master = load_master(config)
        assert master == (relative / "master.key").read_bytes()
        assert config.master_key_check == master_key_check(master, "hdsd-chu-lyon")
        assert (config.replicas_per_site, config.log_format) == (2, "json")
        assert (config.metrics_host, config.metrics_port) == (node.addresses[0], 9400)
        assert [n.name for n in config.layout().nodes] == [n.name for n in
                                                           load_spec(EXAMPLE).nodes]


def test_certificate_sans_are_the_node_addresses(relative: Path) -> None:
    for node in load_spec(relative / "cluster-spec.toml").nodes:
        hosts, uris = _sans(relative / node.name / f"node-{node.name}.crt")
        assert hosts == {str(ipaddress.ip_address(node.addresses[0])), node.addresses[1]}
        assert uris == [f"hdsd://hdsd-chu-lyon/node/{node.site}/{node.name}"]


def test_admin_profile_lists_every_node_of_every_site(relative: Path) -> None:
    profile = load_profile(relative / "client.toml")
    assert profile.sites == {
        "lyon-est": (("10.1.0.11", 7400), ("10.1.0.12", 7400)),
        "lyon-sud": (("10.2.0.11", 7400), ("10.2.0.12", 7400))}
    assert (relative / "audit-keys" / "lyon-sud-2.pub").is_file()


def test_prefix_layout_matches_the_shipped_systemd_unit(tmp_path: Path) -> None:
    unit = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key, []).append(value)
    config_path = PurePosixPath(unit["ExecStart"][0].split("--config ")[1])
    etc, state = config_path.parent, PurePosixPath("/var/lib/hdsd")
    assert str(state) in unit["ReadWritePaths"][0].split()
    assert unit["ProtectSystem"] == ["strict"] and unit["User"] == ["hdsd"]
    bundles = write_cluster(load_spec(EXAMPLE), tmp_path / "ops", prefix=etc, state_dir=state,
                            archive=True)
    for b in bundles:
        assert b.config == b.directory.joinpath(*config_path.parts[1:])
        raw = tomllib.loads(b.config.read_text())
        paths = [raw["tls"]["ca"], raw["tls"]["cert"], raw["tls"]["key"],
                 raw["keys"]["master_key_file"]]
        for p in map(PurePosixPath, paths):
            # read-only configuration under /etc/hdsd, present in the bundle at that place
            assert p.parent == etc and b.directory.joinpath(*p.parts[1:]).is_file(), p
        assert raw["node"]["data_dir"] == str(state)
        assert b.directory.joinpath(*state.parts[1:], "keyring.hdsd").is_file()
        # nothing outside /etc/hdsd and /var/lib/hdsd: `tar -C / -xf` touches nothing else
        assert {f.split("/")[0] + "/" + f.split("/")[1] for f in _files(b.directory)} == \
            {"etc/hdsd", "var/lib"}
        assert b.archive is not None
        with tarfile.open(b.archive) as tar:
            names = tar.getnames()
            assert "etc/hdsd/node.toml" in names and "var/lib/hdsd/keyring.hdsd" in names
            # never /etc, /var or /var/lib themselves: extracting at / must not touch them
            assert not {"etc", "var", "var/lib"} & set(names)


def test_passphrase_mode_ships_the_salt_not_a_key(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(EXAMPLE.read_text().replace(
        '# [keys]  ', '[keys]  ').replace('# passphrase_env', 'passphrase_env'))
    monkeypatch.delenv("HDSD_MASTER_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError, match="export HDSD_MASTER_PASSPHRASE"):
        write_cluster(load_spec(spec_file), tmp_path / "ops")
    monkeypatch.setenv("HDSD_MASTER_PASSPHRASE", "une phrase de passe assez longue")
    bundles = write_cluster(load_spec(spec_file), tmp_path / "ops2")
    for b in bundles:
        assert "master.key" not in _files(b.directory) and "master.salt" in _files(b.directory)
        config = load_node_config(b.config)
        assert config.master_key_check == master_key_check(load_master(config),
                                                           config.cluster_id)


def test_init_refuses_a_used_directory(relative: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a cluster"):
        write_cluster(load_spec(EXAMPLE), relative)
