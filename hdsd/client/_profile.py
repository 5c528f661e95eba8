"""Client profile: which cluster, which identity, which endpoints.

A TOML file chosen with ``--profile PATH`` or ``HDSD_PROFILE`` (``hdsd init DIR`` writes an
admin profile to ``DIR/client.toml``)::

    [client]
    cluster_id = "hdsd-3f2a9c"
    tenant = "default"
    ca = "ca/ca.crt"
    cert = "clients/admin.crt"
    key = "clients/admin.key"
    site = "dc1"                     # default site; `--site` overrides

    [sites.dc1]
    endpoints = ["127.0.0.1:7400"]

    [sites.dc2]
    endpoints = ["127.0.0.1:7401"]
    backup_endpoints = ["127.0.0.1:7403"]  # optional: backup nodes, for hdsd repair/scrub

Relative paths are resolved against the profile's directory.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .._errors import ConfigError
from ..cluster import parse_address

__all__ = ["PROFILE_ENV", "Profile", "load_profile"]

PROFILE_ENV = "HDSD_PROFILE"


@dataclass(frozen=True, slots=True)
class Profile:
    path: Path
    cluster_id: str
    tenant: str
    ca: Path
    cert: Path
    key: Path
    site: str
    sites: dict[str, tuple[tuple[str, int], ...]]
    # Backup nodes per site (``backup_endpoints``): never used for requests (they refuse
    # writes), only by commands that visit every node (hdsd repair, hdsd scrub).
    backup_sites: dict[str, tuple[tuple[str, int], ...]] = dataclasses.field(
        default_factory=dict)

    def endpoints(self, site: str | None = None) -> tuple[tuple[str, int], ...]:
        name = site or self.site
        if name not in self.sites:
            raise ConfigError(f"{self.path}: no site {name!r} (known: {', '.join(self.sites)})")
        return self.sites[name]

    def pinned(self, site: str, host: str, port: int) -> Profile:
        """This profile talking to one node only (admin requests go to each node in turn)."""
        return dataclasses.replace(self, site=site, sites={site: ((host, port),)},
                                   backup_sites={})


def load_profile(path: str | os.PathLike[str] | None = None) -> Profile:
    """Load the profile at *path*, else ``$HDSD_PROFILE``, else ``./hdsd-data/client.toml``."""
    chosen = Path(path or os.environ.get(PROFILE_ENV) or "hdsd-data/client.toml").resolve()
    try:
        raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"client profile {chosen} not found; pass --profile PATH or set "
                          f"{PROFILE_ENV} (hdsd init DIR writes DIR/client.toml)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"client profile {chosen}: {exc}") from None
    problems: list[str] = []
    client = raw.get("client")
    sites_raw = raw.get("sites")
    if not isinstance(client, dict):
        raise ConfigError(f"{chosen}: missing [client] section")
    if not isinstance(sites_raw, dict) or not sites_raw:
        raise ConfigError(f"{chosen}: missing [sites.NAME] sections with endpoints")
    for unknown in set(raw) - {"client", "sites"}:
        problems.append(f"{chosen}: [{unknown}]: unknown section")
    known = {"cluster_id", "tenant", "ca", "cert", "key", "site"}
    for key in set(client) - known:
        problems.append(f"{chosen}: [client] {key}: unknown key")
    for key in sorted(known):
        if not isinstance(client.get(key), str):
            problems.append(f"{chosen}: [client] {key}: missing or not a string")
    sites: dict[str, tuple[tuple[str, int], ...]] = {}
    backup_sites: dict[str, tuple[tuple[str, int], ...]] = {}
    for name, section in sites_raw.items():
        endpoints = section.get("endpoints") if isinstance(section, dict) else None
        if not isinstance(endpoints, list) or not endpoints:
            problems.append(f"{chosen}: [sites.{name}] endpoints: must be a non-empty list")
            continue
        try:
            sites[name] = tuple(parse_address(str(e)) for e in endpoints)
            backups = section.get("backup_endpoints", [])
            if not isinstance(backups, list):
                raise ValueError("must be a list")
            if backups:
                backup_sites[name] = tuple(parse_address(str(e)) for e in backups)
        except ValueError as exc:
            problems.append(f"{chosen}: [sites.{name}] endpoints: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    base = chosen.parent
    paths = {}
    for key in ("ca", "cert", "key"):
        resolved = (base / client[key]).resolve()
        if not resolved.is_file():
            problems.append(f"{chosen}: [client] {key}: file {resolved} does not exist")
        paths[key] = resolved
    if client["site"] not in sites:
        problems.append(f"{chosen}: [client] site: {client['site']!r} is not among the sites")
    if problems:
        raise ConfigError("\n".join(problems))
    return Profile(path=chosen, cluster_id=client["cluster_id"], tenant=client["tenant"],
                   ca=paths["ca"], cert=paths["cert"], key=paths["key"], site=client["site"],
                   sites=sites, backup_sites=backup_sites)
