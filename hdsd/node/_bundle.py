"""From a cluster spec to one self-contained bundle per machine (``hdsd init``).

The operator directory receives the CA (``ca/ca.key`` never leaves it), the operator's copy of
the master key (or the salt), the admin profile, the audit verify keys and the resolved spec;
each node gets a directory ``<operator dir>/<node>/`` holding what its machine needs and
nothing else:

* ``node.toml`` whose every path lies inside the bundle — relative to the node.toml (default:
  copy the directory anywhere and run ``hdsd serve --config DIR/node.toml``), or absolute under
  ``--prefix`` (e.g. ``/etc/hdsd``) and ``--state-dir`` (``/var/lib/hdsd``), in which case the
  bundle mirrors the file system (``<bundle>/etc/hdsd/...``, ``<bundle>/var/lib/hdsd/...``)
  and installs with ``tar -C / -xf <node>.tar``;
* ``ca.crt`` and the node's certificate and key, issued for every address and DNS name of the
  node (the TLS hostname check passes whichever one a peer dials);
* its own ``master.key`` file (the same cluster-wide key, a separate file: rotating one node
  rewrites only that node's file) or, in passphrase mode, ``master.salt``;
* ``data/`` (the data directory): the keyring seeded with the operator tenant and the node's
  audit signing key (its verify key goes to ``<operator dir>/audit-keys/<node>.pub``).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._atomic import atomic_write
from .._errors import ConfigError
from ..audit import load_or_create_signing_key
from ..catalog import (
    CATALOG_FILE,
    CONFIRMED,
    KEYRING_FILE,
    Catalog,
    Keyring,
    TenantEntry,
    create_master_key,
    load_master_key,
)
from ..cluster import LayoutRecord
from ..transport import create_ca, issue_client_cert, issue_node_cert
from ._layouts import LAYOUT_FILE, save_record
from ._masterkey import create_salt, master_key_check, passphrase_master
from ._spec import ClusterSpec, NodeSpec
from ._tenancy import seed_entry

__all__ = ["SPEC_FILE", "Bundle", "write_cluster", "write_node_bundle", "write_profile"]

SPEC_FILE = "cluster-spec.toml"


@dataclass(frozen=True, slots=True)
class Bundle:
    node: NodeSpec
    directory: Path  # what to copy to the machine (its root, in --prefix mode)
    config: Path  # its node.toml (inside directory)
    archive: Path | None


def write_cluster(spec: ClusterSpec, root: Path, *, prefix: PurePosixPath | None = None,
                  state_dir: PurePosixPath | None = None, archive: bool = False,
                  node_toml_extra: str = "") -> list[Bundle]:
    """Create the CA, the master key and one bundle per node of *spec* under *root*."""
    root = root.resolve()
    if (root / "cluster.toml").exists():
        raise ConfigError(f"{root} already holds a cluster (cluster.toml exists); "
                          "choose another directory")
    if (prefix is not None and not prefix.is_absolute()) or \
            (state_dir is not None and not state_dir.is_absolute()):
        raise ConfigError("--prefix and --state-dir must be absolute paths (e.g. /etc/hdsd, "
                          "/var/lib/hdsd)")
    for node in spec.nodes:
        if (root / node.name).exists():
            raise ConfigError(f"{root / node.name} exists; choose an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    create_ca(root / "ca", spec.cluster_id)
    if spec.passphrase_env:
        if not os.environ.get(spec.passphrase_env):
            raise ConfigError(f"passphrase mode: export {spec.passphrase_env} (the master "
                              "passphrase) for hdsd init to seed the keyrings")
        create_salt(root / "master.salt")
        master = passphrase_master(spec.passphrase_env, root / "master.salt")
    else:
        create_master_key(root / "master.key")
        master = load_master_key(root / "master.key")
    # Every node must hold the same tenant keys (a chunk sealed in one site is read in the
    # other): one keyring, copied into each bundle.
    seed = root / KEYRING_FILE
    template = Keyring(seed, master)
    operator_keys = template.get_or_create(spec.operator_tenant)
    operator_wrapped = template.wrapped(spec.operator_tenant)
    assert operator_wrapped is not None
    # The operator tenant enters every node's catalog already *confirmed*: init writes every
    # node, offline, so every node holds this very creation before any of them serves.
    operator = seed_entry(spec.operator_tenant, operator_wrapped, operator_keys,
                          state=CONFIRMED)
    (root / "audit-keys").mkdir(exist_ok=True)
    bundles = []
    try:
        for node in spec.nodes:
            bundles.append(_write_bundle(spec, root, node, master, prefix, state_dir, archive,
                                         node_toml_extra, operator))
    finally:
        seed.unlink()
    crt, key = issue_client_cert(root / "ca", root / "clients", name="admin",
                                 tenant=spec.operator_tenant, role="admin")
    write_profile(root / "client.toml", spec, tenant=spec.operator_tenant,
                  ca=Path("ca") / "ca.crt", cert=crt.relative_to(root),
                  key=key.relative_to(root))
    (root / SPEC_FILE).write_text(spec.to_toml(), encoding="utf-8")
    (root / "cluster.toml").write_text(
        f'# written by hdsd init; the layout is in {SPEC_FILE}\nid = "{spec.cluster_id}"\n'
        f'sites = ["{spec.sites[0]}", "{spec.sites[1]}"]\n', encoding="utf-8")
    return bundles


def _inside(bundle: Path, absolute: PurePosixPath) -> Path:
    return bundle.joinpath(*absolute.parts[1:])


def write_node_bundle(spec: ClusterSpec, root: Path, node: NodeSpec, record: LayoutRecord, *,
                      prefix: PurePosixPath | None = None,
                      state_dir: PurePosixPath | None = None, archive: bool = False,
                      node_toml_extra: str = "") -> Bundle:
    """The bundle of a node joining a running cluster (``hdsd layout apply``): as ``hdsd
    init`` makes them, from the operator directory's CA and master key, plus the layout
    version it joins (``layout.json``: it starts in the right phase). Its catalog and tenant
    keys come from its peers at its first catalog sync."""
    root = root.resolve()
    if (root / node.name).exists():
        raise ConfigError(f"{root / node.name} exists: a bundle for {node.name} was made "
                          "already (move it aside to make a new one)")
    if spec.passphrase_env:
        if not os.environ.get(spec.passphrase_env):
            raise ConfigError(f"passphrase mode: export {spec.passphrase_env} (the master "
                              "passphrase) to make the new node's bundle")
        master = passphrase_master(spec.passphrase_env, root / "master.salt")
    else:
        master = load_master_key(root / "master.key")
    return _write_bundle(spec, root, node, master, prefix, state_dir, archive,
                         node_toml_extra, None, record)


def _write_bundle(spec: ClusterSpec, root: Path, node: NodeSpec, master: bytes,
                  prefix: PurePosixPath | None, state_dir: PurePosixPath | None, archive: bool,
                  extra: str, operator: TenantEntry | None,
                  record: LayoutRecord | None = None) -> Bundle:
    bundle = root / node.name
    if prefix is None:
        etc, data = bundle, bundle / "data"
        data_ref = "data"

        def ref(name: str) -> str:
            return name
    else:
        state = state_dir or PurePosixPath("/var/lib/hdsd")
        etc, data = _inside(bundle, prefix), _inside(bundle, state)
        data_ref = str(state)

        def ref(name: str) -> str:
            return str(prefix / name)
    etc.mkdir(parents=True, mode=0o700)
    data.mkdir(parents=True, mode=0o700, exist_ok=True)
    crt, key = issue_node_cert(root / "ca", etc, name=node.name, site=node.site,
                               hosts=node.addresses)
    shutil.copyfile(root / "ca" / "ca.crt", etc / "ca.crt")
    if spec.passphrase_env:
        atomic_write(etc / "master.salt", (root / "master.salt").read_bytes(), 0o600)
        keys = (f'master_passphrase_env = "{spec.passphrase_env}"   # the passphrase, from the '
                f'environment (or a prompt)\nmaster_salt_file = "{ref("master.salt")}"   '
                "# the same 16 bytes on every node\n")
    else:
        atomic_write(etc / "master.key", master, 0o600)
        keys = (f'master_key_file = "{ref("master.key")}"   # this node\'s copy (0600); '
                "rotate with hdsd key rotate-master\n")
    keys += (f'master_key_check = "{master_key_check(master, spec.cluster_id)}"   '
             "# fingerprint: a wrong key is refused at start\n")
    if operator is not None:
        shutil.copy2(root / KEYRING_FILE, data / KEYRING_FILE)
        catalog = Catalog(data / CATALOG_FILE)
        try:
            catalog.apply([operator])
        finally:
            catalog.close()
    if record is not None:
        save_record(data / LAYOUT_FILE, record)
    (data / "audit").mkdir(mode=0o700, exist_ok=True)
    signing = load_or_create_signing_key(data / "audit")
    (root / "audit-keys" / f"{node.name}.pub").write_text(
        bytes(signing.verify_key).hex() + "\n", encoding="ascii")
    _make_private(data)
    config = etc / "node.toml"
    config.write_text(_node_toml(spec, node, ref, data_ref, crt.name, key.name, keys, extra),
                      encoding="utf-8")
    tar = None
    if archive:
        tar = root / f"{node.name}.tar"
        with tarfile.open(tar, "w") as out:
            for path in sorted(bundle.rglob("*")):
                # Not the ancestors of --prefix/--state-dir (etc/, var/, var/lib/): extracted
                # with `tar -C /`, they would reset the owner and mode of the system's own.
                if path.is_dir() and not (path.is_relative_to(etc) or path.is_relative_to(data)):
                    continue
                out.add(path, arcname=str(path.relative_to(bundle)), recursive=False)
    return Bundle(node=node, directory=bundle, config=config, archive=tar)


def _make_private(data_dir: Path) -> None:
    """Directories 0700 and files 0600 under a node's data directory, whatever the umask: the
    node refuses a data directory open to others (key names and metadata in its indexes hold
    patient identifiers), and serves with umask 077 thereafter."""
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


def _node_toml(spec: ClusterSpec, node: NodeSpec, ref: object, data_ref: str, crt: str,
               key: str, keys: str, extra: str) -> str:
    assert callable(ref)
    role = ('role = "backup"                 # as in [[sites]]: holds backup-plan tenants\' data '
            "only, refuses client writes\n" if node.role == "backup" else "")
    metrics = (f'[metrics]                       # Prometheus /metrics, /healthz, /readyz '
               f'(plain HTTP)\naddress = "{node.metrics}"\n' if node.metrics else
               '# [metrics]                     # Prometheus /metrics, /healthz, /readyz\n'
               '# address = "127.0.0.1:9400"    # plain HTTP: a management address only\n')
    s3_port = node.s3_port
    sites = ""
    for site in spec.sites:
        entries = []
        for n in spec.site_nodes(site):
            entry = f'{{ name = "{n.name}", address = "{n.address}"'
            if n.weight != 1.0:
                entry += f", weight = {n.weight:g}"
            if n.role != "storage":
                entry += f', role = "{n.role}"'
            entries.append(entry + " }")
        sites += f'\n[[sites]]\nname = "{site}"\nnodes = [' + ", ".join(entries) + "]\n"
    return f"""\
# hdsd node {node.name} (site {node.site}) of cluster {spec.cluster_id}, written by hdsd init.
# Start with: hdsd serve --config {ref("node.toml")}
# Every path below lies inside this node's bundle. Every node of the cluster must have the same
# [cluster] replicas_per_site and [[sites]] (addresses may differ, e.g. behind NAT).

[node]
name = "{node.name}"
site = "{node.site}"
{role}listen = "{node.listen}:{node.port}"        # address:port this node binds
data_dir = "{data_ref}"               # the log, its index, hints; keep it on a local disk
# segment_mib = 256             # log segment size; each is preallocated (and zero-filled)
# segment_read_fds = 64         # segment read descriptors kept open (see LimitNOFILE in the unit)
# on_corrupt_log = "repair"     # damaged log range at start: set it aside (kept as a file)
#                               # and refetch from the other site; "refuse": stay down

[tls]                           # mutual TLS 1.3; certificate for {", ".join(node.addresses)}
ca = "{ref("ca.crt")}"
cert = "{ref(crt)}"
key = "{ref(key)}"

[keys]
{keys}
[cluster]
id = "{spec.cluster_id}"
chunk_size = 1048576            # bytes per chunk (64 KiB .. 4 MiB)
compression_level = 1           # zstd level; chunks that do not shrink are stored raw
inline_max = 16384              # blobs up to this size travel inside the version record
replicas_per_site = {spec.replicas_per_site}           # copies of each key in each site
write_policy = "{spec.write_policy}"      # each-site: ack once fsynced in every site (RPO 0)
on_peer_site_loss = "{spec.on_peer_site_loss}"    # or "degrade": accept writes alone, keep hints
write_timeout_s = {spec.write_timeout_s:g}            # a write not acknowledged by then: refused
operator_tenant = "{spec.operator_tenant}"    # admin certificates of this tenant manage tenants
catalog_sync_s = {spec.catalog_sync_s:g}              # how often nodes compare catalogs

# [repair]                      # optional: anti-entropy and scrub
# interval_s = 3600             # Merkle comparison with every peer (0: only `hdsd repair`)
# rate_mib_s = 64               # repair traffic budget, so client writes are not starved
# rebuild_rate_mib_s = 0        # a wiped node's rebuild pace (0: disk and link speed)
# scrub_interval_h = 168        # re-read and verify every record (0: only `hdsd scrub`)
# scrub_rate_mib_s = 32
# snapshot_s = 30               # Merkle trees follow the index, saved if anything was indexed

# [limits]                      # optional; see configs/two-site-local.toml for each
# max_connections = 1024
# request_timeout_s = 60
# shutdown_grace_s = 30
# max_requests_per_connection = 16
# max_unsent_mib = 8
# max_body_mib_per_connection = 64
# max_body_mib_in_flight = 32
# max_requests_in_flight = 512
# min_upload_rate_kib_s = 64
# max_handshakes = 64
# max_handshakes_per_source = 16
# handshake_timeout_s = 5
# max_sessions_per_identity = 32
# max_sessions_per_tenant = 256
# peer_slots = 64
# idle_timeout_s = 300
# malloc_trim_s = 5

{metrics}
[s3]                            # the S3 gateway (docs/s3.md); remove the section to disable it
listen = ["{node.listen}:{s3_port}"]   # HTTPS with this node's certificate (clients: ca.crt)
# plain_http = ["127.0.0.1:9480"]     # plain HTTP: loopback only, unless
# plain_http_beyond_loopback = true   # (behind a TLS-terminating proxy)
region = "us-east-1"            # the SigV4 region clients sign for
# multipart_expire_h = 168      # unfinished multipart uploads are reclaimed after this

[log]
format = "{spec.log_format}"                 # or "json": one object per line, for a log shipper
level = "{spec.log_level}"
{extra}{sites}"""


def write_profile(path: Path, spec: ClusterSpec, *, tenant: str, ca: Path, cert: Path,
                  key: Path, site: str | None = None) -> None:
    """A client profile listing every node of every site (storage nodes as ``endpoints``,
    backup nodes as ``backup_endpoints``); paths as given (relative: to the profile)."""
    sites = ""
    for s in spec.sites:
        storage = [n.address for n in spec.site_nodes(s) if n.role == "storage"]
        backup = [n.address for n in spec.site_nodes(s) if n.role == "backup"]
        sites += f"\n[sites.{s}]\nendpoints = [" + ", ".join(f'"{a}"' for a in storage) + "]\n"
        if backup:
            # Backup nodes refuse writes: requests never go there, only repair and scrub.
            sites += "backup_endpoints = [" + ", ".join(f'"{a}"' for a in backup) + "]\n"
    text = (f'[client]\ncluster_id = "{spec.cluster_id}"\ntenant = "{tenant}"\n'
            f"ca = {_q(str(ca))}\ncert = {_q(str(cert))}\nkey = {_q(str(key))}\n"
            f'site = "{site or spec.sites[0]}"\n{sites}')
    path.write_text(text, encoding="utf-8")


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
