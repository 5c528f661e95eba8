"""Clean failure of real processes: a full data disk, and start-up mistakes.

Disk full: node dc1's data directory is a 48 MiB tmpfs (a size-limited loop file system where
tmpfs cannot be mounted). Puts fill it until one is refused with ``disk_full``; gets still work,
the node stays up and reports not ready; removing a ballast file frees space and puts work
again; every acknowledged blob reads back, also after a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import hdsd
from tests.helpers.cluster import NodeProcess, init_cluster
from tests.helpers.cluster import hdsd as hdsd_cli

from ._nodes import add_sections, http_get, metrics_port

pytestmark = pytest.mark.e2e

SMALL_MIB = 48
BALLAST_MIB = 12


def _mount_small(path: Path, scratch: Path) -> None:
    path.mkdir()
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_MIB}m", "tmpfs",
                            str(path)], capture_output=True, text=True)
    if tmpfs.returncode == 0:
        return
    image = scratch / "small.img"
    with open(image, "wb") as f:
        f.truncate(SMALL_MIB << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, capture_output=True)
    loop = subprocess.run(["mount", "-o", "loop", str(image), str(path)], capture_output=True,
                          text=True)
    if loop.returncode != 0:
        pytest.fail(f"cannot mount a small file system (tmpfs: {tmpfs.stderr.strip()}; "
                    f"loop: {loop.stderr.strip()}); this test needs root, as in CI")


@pytest.fixture
def small_disk_cluster(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    root = tmp_path / "c"
    profile = init_cluster(root)
    node_dir = root / "dc1-n1"
    small = node_dir / "small"
    _mount_small(small, tmp_path)
    try:
        shutil.copytree(node_dir / "data", small / "data")  # the keyring `hdsd init` wrote
        config = node_dir / "node.toml"
        config.write_text(config.read_text().replace('data_dir = "data"',
                                                     'data_dir = "small/data"'))
        add_sections(config, '[metrics]\naddress = "127.0.0.1:0"\n')
        # Ballast: removing it later is how the test "frees space".
        with open(small / "ballast", "wb") as f:
            f.write(b"\xff" * (BALLAST_MIB << 20))
        yield root, profile, small
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_disk_full_refuses_puts_serves_gets_and_recovers(
        small_disk_cluster: tuple[Path, Path, Path]) -> None:
    root, profile, small = small_disk_cluster
    dc2 = NodeProcess(root / "dc2-n1" / "node.toml").start()
    dc1 = NodeProcess(root / "dc1-n1" / "node.toml").start()
    try:
        port = metrics_port(dc1)
        acked: dict[str, bytes] = {}
        with hdsd.Client(profile, site="dc1", retries=0, timeout=60) as c:
            refused = None
            for i in range(3 * SMALL_MIB):
                data = os.urandom(1 << 20 if i % 4 else 3000)
                try:
                    c.put("fill", f"k{i}", data)
                except hdsd.DiskFullError as exc:
                    refused = exc
                    break
                acked[f"k{i}"] = data
            assert refused is not None, "the 48 MiB disk never filled"
            assert "no space left" in str(refused) and acked
            # Stays up, serves reads, says it is not ready for writes.
            assert dc1.alive
            assert c.get("fill", "k0") == acked["k0"]
            last = list(acked)[-1]
            assert c.get("fill", last) == acked[last]
            status, reason = http_get(port, "/readyz")
            assert status == 503 and "disk full" in reason
            with pytest.raises(hdsd.DiskFullError):
                c.put("fill", "again", os.urandom(1 << 20))
            # The CLI says it in one line with the storage exit code.
            src = root / "one-mib.bin"
            src.write_bytes(os.urandom(1 << 20))
            cli = hdsd_cli("--profile", str(profile), "put", "fill/cli", str(src))
            assert cli.returncode == 7, cli.stderr
            err = cli.stderr.decode().strip()
            assert err.startswith("hdsd: error: no space left on the data disk of dc1-n1")
            assert "Traceback" not in err and len(err.splitlines()) == 1

            (small / "ballast").unlink()
            for i in range(4):
                data = os.urandom(1 << 20)
                c.put("fill", f"after{i}", data)
                acked[f"after{i}"] = data
            assert http_get(port, "/readyz")[0] == 200
            for key, data in acked.items():
                assert c.get("fill", key) == data, key
        assert dc1.stop() == 0
        dc1.start()
        with hdsd.Client(profile, site="dc1") as c:
            for key, data in acked.items():
                assert c.get("fill", key) == data, key
    finally:
        dc1.kill()
        dc2.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("start")
    init_cluster(root)
    return root


def _serve_fails(config: Path) -> tuple[int, str]:
    proc = hdsd_cli("serve", "--config", str(config), timeout=60)
    err = proc.stderr.decode().strip()
    assert "Traceback" not in err, err
    # Log lines of what started before the failure may precede it; the error is one line.
    errors = [line for line in err.splitlines() if line.startswith("hdsd: error:")]
    assert errors == err.splitlines()[-1:], err
    return proc.returncode, errors[0]


def test_port_in_use(cluster: Path) -> None:
    config = cluster / "dc1-n1" / "node.toml"
    port = int(config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code, err = _serve_fails(config)
    assert code == 2
    assert err == (f"hdsd: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
                   "choose another address or port, or stop the process that holds it")


def test_metrics_port_in_use(cluster: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = cluster / "dc2-n1" / "metrics.toml"
        config.write_text((cluster / "dc2-n1" / "node.toml").read_text())
        add_sections(config, f'[metrics]\naddress = "127.0.0.1:{port}"\n')
        code, err = _serve_fails(config)
    assert code == 2
    assert err.startswith(f"hdsd: error: cannot serve metrics on 127.0.0.1:{port}: ")


def test_missing_certificate(cluster: Path) -> None:
    config = cluster / "dc1-n1" / "no-cert.toml"
    config.write_text((cluster / "dc1-n1" / "node.toml").read_text()
                      .replace('cert = "node-dc1-n1.crt"', 'cert = "gone.crt"'))
    code, err = _serve_fails(config)
    assert code == 2
    assert err.endswith(f"[tls] cert: file {cluster / 'dc1-n1' / 'gone.crt'} does not exist")


def test_master_key_of_another_cluster(cluster: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_cluster(other)
    config = cluster / "dc1-n1" / "wrong-key.toml"
    text = (cluster / "dc1-n1" / "node.toml").read_text()
    config.write_text(text.replace('"master.key"', f'"{other / "master.key"}"'))
    code, err = _serve_fails(config)
    assert code == 2
    assert err.startswith("hdsd: error: the master key (") and "is not this cluster's" in err
    # Without the fingerprint (a node.toml written by hand), the keyring still catches it.
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.startswith("master_key_check")) + "\n")
    code, err = _serve_fails(config)
    assert code == 2
    assert err.startswith("hdsd: error: the master key does not open the keyring ")


def test_master_key_of_another_cluster_with_an_empty_data_dir(cluster: Path,
                                                              tmp_path: Path) -> None:
    # A replaced disk: nothing in the data directory to check the key against, but the
    # node.toml's fingerprint still tells a key of another cluster apart.
    other = tmp_path / "other"
    init_cluster(other)
    config = cluster / "dc1-n1" / "empty-data.toml"
    text = (cluster / "dc1-n1" / "node.toml").read_text()
    config.write_text(text.replace('"master.key"', f'"{other / "master.key"}"')
                      .replace('data_dir = "data"', f'data_dir = "{tmp_path / "empty"}"'))
    code, err = _serve_fails(config)
    assert code == 2
    assert err.startswith("hdsd: error: the master key (") and "is not this cluster's" in err
    assert not (tmp_path / "empty" / "keyring.hdsd").exists()


def test_second_serve_on_the_same_data_directory(cluster: Path) -> None:
    # Another port, the same data directory: what a copied config or a forgotten node does.
    node_dir = cluster / "dc2-n1"
    running = NodeProcess(node_dir / "node.toml").start()
    try:
        config = node_dir / "twin.toml"
        text = (node_dir / "node.toml").read_text()
        port = text.split('listen = "127.0.0.1:')[1].split('"')[0]
        config.write_text(text.replace(f'listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:0"'))
        code, err = _serve_fails(config)
        assert code == 2  # a start-up mistake, like a port in use
        assert err == (f"hdsd: error: the store at {node_dir / 'data' / 'store'} is open in "
                       "another process (another hdsd serve with this data directory?)")
        assert running.alive  # the first one keeps serving
    finally:
        running.stop()
