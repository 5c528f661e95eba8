"""``hdsd status`` exit codes for monitoring scripts (hdsd/cli/_status.py), and the ``hdsd
init`` flag/spec forms (hdsd/cli/_admin.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hdsd.cli._status import EXIT_DEGRADED, EXIT_DOWN, EXIT_OK, exit_code, problems
from tests.helpers.cluster import hdsd


def _well(name: str) -> dict[str, Any]:
    return {"node": name, "up": True, "site": "dc1", "mode": {"mode": "normal"},
            "store": {"failed": False}, "disk_full": False,
            "rpo": {"versions": 0, "zero": True, "peers_in_doubt": {}},
            "catalog": {"sync_failures": {}}}


@pytest.mark.parametrize(("change", "code", "reason"), [
    ({}, EXIT_OK, None),
    ({"mode": {"mode": "degraded"}}, EXIT_DEGRADED, "site dc1 degraded"),
    ({"disk_full": True}, EXIT_DEGRADED, "data disk full"),
    ({"rpo": {"versions": 3, "zero": False}}, EXIT_DEGRADED, "behind: live RPO 3 versions"),
    ({"rpo": {"versions": 0, "zero": False, "peers_in_doubt": {"b": "link broke"}}},
     EXIT_DEGRADED, "1 peers not yet compared"),
    ({"catalog": {"sync_failures": {"b": "the master key does not open ..."}}}, EXIT_DEGRADED,
     "catalog sync with b failed: the master key"),
    ({"store": {"failed": True}}, EXIT_DOWN, "fail-stop"),
    ({"up": False, "error": "no answer within 2 s"}, EXIT_DOWN, "down: no answer within 2 s"),
])
def test_each_problem_has_its_code(change: dict[str, Any], code: int,
                                   reason: str | None) -> None:
    got_code, reasons = problems({**_well("a"), **change})
    assert got_code == code
    if reason is None:
        assert reasons == []
    else:
        assert any(reason in r for r in reasons), reasons


def test_the_worst_node_decides() -> None:
    nodes = [_well("a"), {**_well("b"), "disk_full": True}, _well("c")]
    assert exit_code(nodes) == EXIT_DEGRADED
    assert exit_code([*nodes, {"node": "d", "up": False}]) == EXIT_DOWN
    assert exit_code([_well("a"), _well("b")]) == EXIT_OK
    # a status without the newer keys (an older node) is not a problem by itself
    assert exit_code([{"node": "old", "up": True}]) == EXIT_OK


def test_init_flags_two_nodes_per_site_give_two_replicas(tmp_path: Path) -> None:
    hdsd("init", str(tmp_path / "c"), "--nodes-per-site", "2", "--base-port", "27400",
         check=True)
    raw = tomllib.loads((tmp_path / "c" / "dc1-n2" / "node.toml").read_text())
    assert raw["cluster"]["replicas_per_site"] == 2
    assert raw["log"] == {"format": "text", "level": "info"}
    assert raw["tls"]["ca"] == "ca.crt" and raw["keys"]["master_key_file"] == "master.key"


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes-per-site", "2"], "--spec describes the whole cluster; drop --nodes-per-site"),
    (["--state-dir", "/var/lib/hdsd"], "--state-dir goes with --prefix"),
    (["--prefix", "etc/hdsd"], "must be absolute paths"),
])
def test_init_spec_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    spec = Path(__file__).resolve().parents[2] / "configs" / "cluster-spec.example.toml"
    proc = hdsd("init", "--spec", str(spec), str(tmp_path / "c"), *args)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and err.startswith("hdsd: error: ") and message in err, err
    assert len(err.splitlines()) == 1
