"""Write policies: when is a write acknowledged?

* ``each-site`` (default): fsynced on at least one replica in **every** site — RPO 0;
* ``majority``: fsynced on more than half of all replicas;
* ``local``: fsynced on at least one replica of the coordinator's site (degraded mode).

While the layout migrates (:class:`hdsd.cluster.Placement` with ``parts``), a key's replicas
are the union of its replicas under the old and the new layout, and the policy must hold under
*each*: an acknowledged write is where the old layout's readers look and where the new one's
will, whichever way the migration ends.

Pure functions over node names, so the rule is tested without any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Literal, get_args

__all__ = ["WRITE_POLICIES", "WritePolicy", "policy_met", "policy_still_possible"]

WritePolicy = Literal["each-site", "majority", "local"]
WRITE_POLICIES: tuple[WritePolicy, ...] = get_args(WritePolicy)

Replicas = Mapping[str, Sequence[str]]  # site -> node names holding the key


def policy_met(policy: WritePolicy, replicas: Replicas, acked: Set[str], local_site: str) -> bool:
    parts: tuple[Replicas, ...] = getattr(replicas, "parts", ())
    if parts:
        return all(_met(policy, part, acked, local_site) for part in parts)
    return _met(policy, replicas, acked, local_site)


def _met(policy: WritePolicy, replicas: Replicas, acked: Set[str], local_site: str) -> bool:
    if policy == "each-site":
        return all(any(n in acked for n in nodes) for nodes in replicas.values())
    if policy == "majority":
        everyone = [n for nodes in replicas.values() for n in nodes]
        return 2 * sum(1 for n in everyone if n in acked) > len(everyone)
    if policy == "local":
        return any(n in acked for n in replicas.get(local_site, ()))
    raise ValueError(f"unknown write policy {policy!r}")


def policy_still_possible(policy: WritePolicy, replicas: Replicas, failed: Set[str],
                          local_site: str) -> bool:
    """False once enough replicas failed that the policy can no longer be met."""
    alive = {n for nodes in replicas.values() for n in nodes if n not in failed}
    return policy_met(policy, replicas, alive, local_site)
