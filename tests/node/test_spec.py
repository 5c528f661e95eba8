"""The cluster spec: parsing, defaults and one-line mistakes (hdsd/node/_spec.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hdsd import ConfigError
from hdsd.node import load_spec, parse_spec, spec_from_flags

ROOT = Path(__file__).resolve().parents[2]


def _spec(per_site: tuple[int, int] = (2, 2), **cluster: Any) -> dict[str, Any]:
    sites = []
    for s, count in zip(("est", "sud"), per_site, strict=True):
        sites.append({"name": s, "nodes": [
            {"name": f"{s}-{i}", "addresses": [f"10.{len(sites) + 1}.0.{i}", f"n{i}.{s}.example"]}
            for i in range(1, count + 1)]})
    return {"cluster": {"id": "hdsd-test", **cluster}, "sites": sites}


def test_the_shipped_example_parses() -> None:
    spec = load_spec(ROOT / "configs" / "cluster-spec.example.toml")
    assert spec.cluster_id == "hdsd-chu-lyon" and spec.sites == ("lyon-est", "lyon-sud")
    assert spec.replicas_per_site == 2
    assert [n.address for n in spec.nodes] == ["10.1.0.11:7400", "10.1.0.12:7400",
                                               "10.2.0.11:7400", "10.2.0.12:7400"]
    first = spec.nodes[0]
    assert first.addresses == ("10.1.0.11", "hdsd1.est.chu-lyon.example")
    assert first.listen == "10.1.0.11" and first.metrics == "10.1.0.11:9400"
    assert spec.nodes[3].weight == 2.0 and spec.log_format == "json"


@pytest.mark.parametrize(("per_site", "expect"), [((1, 1), 1), ((2, 2), 2), ((3, 2), 2),
                                                  ((4, 4), 2), ((1, 3), 1)])
def test_replicas_default_to_min_2_and_the_smaller_site(per_site: tuple[int, int],
                                                        expect: int) -> None:
    assert parse_spec(_spec(per_site)).replicas_per_site == expect


def test_flag_form_nodes_per_site_2_means_two_replicas() -> None:
    # `hdsd init --nodes-per-site 2` used to write replicas_per_site = 1
    spec = spec_from_flags(sites=("dc1", "dc2"), nodes_per_site=2, backup_nodes_per_site=1,
                           ports=list(range(7400, 7406)), host="127.0.0.1", tenant="default")
    assert spec.replicas_per_site == 2
    assert [(n.name, n.port, n.role) for n in spec.nodes] == [
        ("dc1-n1", 7400, "storage"), ("dc1-n2", 7401, "storage"), ("dc1-b1", 7404, "backup"),
        ("dc2-n1", 7402, "storage"), ("dc2-n2", 7403, "storage"), ("dc2-b1", 7405, "backup")]


def test_backup_nodes_do_not_count_for_replicas() -> None:
    raw = _spec((2, 2))
    raw["sites"][1]["nodes"][1]["role"] = "backup"
    assert parse_spec(raw).replicas_per_site == 1
    raw["cluster"]["replicas_per_site"] = 2
    with pytest.raises(ConfigError, match=r"replicas_per_site: 2 must be between 1 and 1"):
        parse_spec(raw)


def test_resolved_spec_round_trips() -> None:
    raw = _spec((2, 1), write_policy="majority")
    raw["metrics"] = {"port": 9400}
    raw["log"] = {"format": "json", "level": "debug"}
    raw["sites"][0]["nodes"][0].update(port=7500, listen="0.0.0.0", weight=3.0, role="storage")
    spec = parse_spec(raw)
    again = parse_spec(tomllib.loads(spec.to_toml()))
    assert again == spec


def test_every_mistake_is_one_line_each() -> None:
    raw = _spec((2, 2), replicas_per_site=0, write_policy="fast", colour="blue")
    raw["sites"][0]["nodes"][1]["name"] = "est-1"  # duplicate name
    raw["sites"][1]["nodes"][0]["addresses"] = ["10.2.0.1:7400"]  # a port in an address
    raw["sites"][1]["nodes"][1]["role"] = "archive"
    raw["extra"] = {}
    with pytest.raises(ConfigError) as info:
        parse_spec(raw, where="s.toml")
    lines = str(info.value).splitlines()
    assert all(line.startswith("s.toml: ") for line in lines)
    text = "\n".join(lines)
    for expected in ("[extra]: unknown section", "[cluster] colour: unknown key",
                     "[cluster] write_policy: 'fast'", "node name 'est-1' is used twice",
                     "node sud-1: addresses must be", "node sud-2: role 'archive'"):
        assert expected in text, text


@pytest.mark.parametrize(("edit", "expect"), [
    (lambda r: r["sites"].pop(), "exactly two sites"),
    (lambda r: r["sites"][0]["nodes"][1].update(addresses=["10.1.0.1"]),
     "two nodes are dialled at 10.1.0.1:7400"),
    (lambda r: [n.update(role="backup") for n in r["sites"][0]["nodes"]],
     "site est needs at least one storage node"),
    (lambda r: [r.update(metrics={"port": 9400, "host": "0.0.0.0"}),
                r["sites"][0]["nodes"][1].update(addresses=["10.1.0.1"], port=7401)],
     "port 9400 on 10.1.0.1 is wanted by node est-1's metrics and by node est-2's metrics"),
    # Two nodes of one host 80 ports apart: the first one's S3 gateway takes the second's port.
    (lambda r: [n.update(addresses=["127.0.0.1"], port=7400 + 80 * i)
                for i, n in enumerate(r["sites"][0]["nodes"])],
     "port 7480 on 127.0.0.1 is wanted by node est-1's S3 gateway .* and by node est-2"),
    (lambda r: r.update(metrics={"port": 7480}),
     "port 7480 on 10.1.0.1 is wanted by node est-1's S3 gateway .* and by node est-1's "
     "metrics"),
    (lambda r: r["sites"][0]["nodes"][0].update(port=70000), "port 70000"),
])
def test_layout_mistakes(edit: Any, expect: str) -> None:
    raw = _spec()
    edit(raw)
    with pytest.raises(ConfigError, match=expect):
        parse_spec(raw)


def test_ipv6_addresses_are_dialled_in_brackets() -> None:
    raw = _spec((1, 1))
    raw["sites"][0]["nodes"][0]["addresses"] = ["fd00::11", "n1.example"]
    assert parse_spec(raw).nodes[0].address == "[fd00::11]:7400"
