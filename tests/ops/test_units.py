"""Unit tests of the operator pieces: log field parsing, JSON lines, size classes, request
counting, the [metrics]/[log] config keys and the status table cells."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd._errors import ConfigError
from hdsd.cli._status import human_bytes, last_run, node_row, rebuild_line
from hdsd.node import load_node_config
from hdsd.node._logging import JsonFormatter, configure_logging, parse_fields
from hdsd.node._metrics import BODY_SIZE, NodeMetrics, size_class
from hdsd.wire import GetRequest, PutStart
from tests.helpers.cluster import init_cluster

from ._nodes import add_sections


def test_parse_fields_values_with_spaces_quotes_and_numbers() -> None:
    fields, rest = parse_fields("event=site_mode site=dc1 mode=degraded by=op@t "
                                "automatic=False reason='dc2 maintenance, back at 6'")
    assert rest == ""
    assert fields == {"event": "site_mode", "site": "dc1", "mode": "degraded", "by": "op@t",
                      "automatic": "False", "reason": "dc2 maintenance, back at 6"}
    fields, _ = parse_fields("event=x in_flight=3 took=0.25 reason=peer dc2 unreachable (boom)")
    assert fields == {"event": "x", "in_flight": 3, "took": 0.25,
                      "reason": "peer dc2 unreachable (boom)"}
    assert parse_fields("no pairs here") == ({}, "no pairs here")
    assert parse_fields("prefix text event=y")[1] == "prefix text"


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                       st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
                       | st.sampled_from(["a b=c", "x' y='z", "=", " ", "k=v k2='w'"]),
                       max_size=5))
def test_repr_values_round_trip(values: dict[str, str]) -> None:
    message = " ".join(f"{k}={v!r}" for k, v in values.items())
    assert parse_fields(message)[0] == values


def test_json_formatter_one_object_per_line_with_traceback() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    try:
        log = logging.getLogger("hdsd.test")
        log.debug("event=one node=%s n=%d", "dc1-n1", 7)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("event=two rid=%d op=%s", 5, "PutStart")
    finally:
        configure_logging("text", "warning")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    one, two = (json.loads(line) for line in lines)
    assert one["level"] == "debug" and one["logger"] == "hdsd.test"
    assert one["event"] == "one" and one["node"] == "dc1-n1" and one["n"] == 7
    assert one["ts"].endswith("Z")
    assert two["event"] == "two" and "ValueError: boom" in two["exc"]


def test_a_field_cannot_overwrite_the_record_keys() -> None:
    record = logging.LogRecord("hdsd.x", logging.INFO, __file__, 1, "event=e level=forged",
                               None, None)
    out = json.loads(JsonFormatter().format(record))
    assert out["level"] == "info"


def test_size_classes() -> None:
    assert [size_class(n) for n in (None, 0, 4096, 4097, 1 << 20, (1 << 20) + 1)] == \
        ["none", "le4k", "le4k", "le1m", "le1m", "gt1m"]


def test_request_counting_and_disk_full_flag() -> None:
    metrics = NodeMetrics(object())  # type: ignore[arg-type]  (the node is read at scrape)
    put = PutStart(rid=1, request_id=b"r" * 16, bucket="b", key="k", size=10, metadata={},
                   policy=None)
    get = GetRequest(rid=3, bucket="b", key="k", version=None, start=None, end=None)
    metrics.request_done(put, "disk_full", 0.01)
    assert metrics.disk_full
    token = BODY_SIZE.set(2 << 20)
    try:
        metrics.request_done(put, "ok", 0.02)
        metrics.request_done(get, "ok", 0.03)
    finally:
        BODY_SIZE.reset(token)
    assert not metrics.disk_full  # a write went through: space is back
    value = metrics.registry.get_sample_value
    assert value("hdsd_requests_total", {"op": "put", "outcome": "disk_full"}) == 1
    assert value("hdsd_errors_total", {"code": "disk_full"}) == 1
    assert value("hdsd_request_duration_seconds_count", {"op": "put", "size_class": "gt1m"}) == 1
    assert value("hdsd_request_duration_seconds_count", {"op": "get", "size_class": "gt1m"}) == 1
    assert value("hdsd_received_body_bytes_total") == 2 << 20
    assert value("hdsd_sent_body_bytes_total") == 2 << 20


def test_request_metrics_are_exposed_as_prometheus_client_would() -> None:
    """The request figures are counted in plain dicts and built when scraped: the same
    samples (names, labels, cumulative buckets, a value on a bound counted in it, the sum)
    as prometheus_client's own Counter and Histogram give for the same requests."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from hdsd.node._metrics import _LATENCY_BUCKETS

    metrics = NodeMetrics(object())  # type: ignore[arg-type]
    reference = CollectorRegistry()
    requests = Counter("hdsd_requests", "", ["op", "outcome"], registry=reference)
    latency = Histogram("hdsd_request_duration_seconds", "", ["op", "size_class"],
                        buckets=_LATENCY_BUCKETS, registry=reference)
    put = PutStart(rid=1, request_id=b"r" * 16, bucket="b", key="k", size=10, metadata={},
                   policy=None)
    for seconds in (0.0001, 0.0005, 0.0007, 0.001, 0.03, 0.5, 99.0, 0.0005):
        token = BODY_SIZE.set(4096)
        try:
            metrics.request_done(put, "ok", seconds)
        finally:
            BODY_SIZE.reset(token)
        requests.labels("put", "ok").inc()
        latency.labels("put", "le4k").observe(seconds)
    ours = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics._counts.collect() for s in family.samples
            if s.name.startswith(("hdsd_requests", "hdsd_request_duration"))}
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in reference.collect() for s in family.samples
              if not s.name.endswith("_created")}
    assert ours == pytest.approx(theirs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cfg")
    init_cluster(root)
    return root


@pytest.mark.parametrize(("sections", "expect"), [
    ('[metrics]\naddress = "127.0.0.1:9400"', None),
    ('[metrics]\naddress = "nowhere"', "[metrics] address"),
    ('[log]\nformat = "xml"', "[log] format"),
    ('[log]\nlevel = "loud"', "[log] level"),
])
def test_metrics_and_log_keys(cluster: Path, tmp_path: Path, sections: str,
                              expect: str | None) -> None:
    config = tmp_path / "node.toml"
    text = (cluster / "dc1-n1" / "node.toml").read_text()
    for name in ("ca.crt", "node-dc1-n1.crt", "node-dc1-n1.key", "master.key"):
        text = text.replace(f'"{name}"', f'"{cluster / "dc1-n1" / name}"')
    config.write_text(text)
    add_sections(config, sections)
    if expect is None:
        loaded = load_node_config(config)
        assert (loaded.metrics_host, loaded.metrics_port) == ("127.0.0.1", 9400)
        assert (loaded.log_format, loaded.log_level) == ("text", "info")
    else:
        with pytest.raises(ConfigError, match=expect.replace("[", r"\[")):
            load_node_config(config)


@pytest.mark.parametrize(("rate", "expect"), [("0", 0.0), ("200", 200.0), ("-1", None)])
def test_the_rebuild_rate_is_read_and_zero_means_unlimited(
        cluster: Path, tmp_path: Path, rate: str, expect: float | None) -> None:
    config = tmp_path / "node.toml"
    text = (cluster / "dc1-n1" / "node.toml").read_text()
    for name in ("ca.crt", "node-dc1-n1.crt", "node-dc1-n1.key", "master.key"):
        text = text.replace(f'"{name}"', f'"{cluster / "dc1-n1" / name}"')
    config.write_text(text)
    add_sections(config, f"[repair]\nrebuild_rate_mib_s = {rate}")
    if expect is None:
        with pytest.raises(ConfigError, match=r"\[repair\] rebuild_rate_mib_s"):
            load_node_config(config)
    else:
        assert load_node_config(config).rebuild_rate_mib_s == expect


def test_status_cells() -> None:
    assert human_bytes(0) == "0B" and human_bytes(1536) == "1.5K"
    assert last_run(None, 0) == "-"
    assert last_run({"finished": 940.0, "result": "ok"}, 1000.0) == "60s ago ok"
    assert last_run({"finished": 0.0, "corrupt": 0, "missing": 0}, 30.0) == "30s ago clean"
    assert last_run({"finished": 0.0, "corrupt": 2, "unrepaired": 1}, 30.0) == \
        "30s ago 2 bad, 1 unrepaired"
    assert last_run({"finished": 0.0, "peers": [{"versions_received": 3}]}, 0) == "0s ago 3 fixed"
    assert last_run({"finished": 0.0, "peers": [{"versions_sent": 0}]}, 0) == "0s ago in sync"
    assert node_row({"up": False, "node": "n", "site": "s"}, 0)["state"] == "down"
    row = node_row({"up": True, "node": "n", "site": "s", "software": "1", "disk_full": True,
                    "disk": {"used": 1024, "free": 0}, "fsync": {"samples": 0},
                    "rpo": {"versions": 2, "bytes": 10, "age_s": 3},
                    "mode": {"mode": "degraded"}, "write_policy": "local",
                    "last_scrub": {"at": 0, "status": "clean"}}, 7200.0)
    assert row["state"] == "disk full" and row["backlog (rpo)"] == "2 v/10B 3s"
    assert row["last scrub"] == "2h ago clean" and row["fsync p50/p99 ms"] == "-"
    assert row["rss (malloc free)"] == "-"  # a node too old to say
    row = node_row({"up": True, "node": "n", "site": "s",
                    "memory": {"rss": 150 << 20, "malloc": {"free": 40 << 20}}}, 0)
    assert row["rss (malloc free)"] == "150.0M (40.0M)"


def test_a_rebuilding_node_gets_a_progress_line_with_its_eta() -> None:
    assert rebuild_line({"node": "n", "rebuild": None}) is None
    assert rebuild_line({"node": "n", "rebuild": {"state": "done"}}) is None
    assert "comparing" in str(rebuild_line({"node": "n", "rebuild": {"state": "checking"}}))
    line = rebuild_line({"node": "dc2-n1", "rebuild": {
        "state": "running", "peer": "dc1-n1", "peers_total": 1, "peers_done": [],
        "leaves_done": 16384, "leaves_total": 65536, "versions_received": 0,
        "versions_received_this_peer": 5000, "bytes_received": 0,
        "bytes_received_this_peer": 3 << 30, "rate_mib_s": 151.2, "eta_s": 61.0,
        "rate_limit_mib_s": 0.0}})
    assert line == ("dc2-n1: rebuilding from dc1-n1 (peer 1/1): 25 %, 5,000 versions, 3.0G at "
                    "151.2 MiB/s, ETA 61s (limit none)")


async def test_a_backup_node_is_ready_without_a_write_policy_to_meet() -> None:
    from types import SimpleNamespace

    from hdsd.node._health import readiness

    def node(role: str) -> Any:
        return SimpleNamespace(
            stopping=False, role=role,
            store=SimpleNamespace(statistics=lambda: SimpleNamespace(failed=False)),
            metrics=SimpleNamespace(disk_full=False),
            replicator=SimpleNamespace(effective_policy=lambda: "local"))

    ready, reason = await readiness(node("backup"))
    assert ready and "backup node" in reason
    ready, reason = await readiness(node("storage"))  # degraded storage node: the local policy
    assert ready and "degraded" in reason
