"""Prometheus metrics, ``/healthz`` and ``/readyz`` of one node, served over plain HTTP by trio.

Cost on the hot path: one :meth:`NodeMetrics.request_done` per request (a few counts in plain
dicts, the latency's bucket found by bisection; the metric families are built when scraped).
Everything else — store, replication backlog, live RPO, connections, disk — is read from
:meth:`Node.status` when Prometheus scrapes, so it costs nothing between scrapes.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the global one:
tests run several nodes in one process). Configure with::

    [metrics]
    address = "127.0.0.1:9400"     # port 0 picks a free port (logged, Node.metrics_port)

The HTTP side is deliberately tiny: one request per connection (``Connection: close``), GET
only, a capped request head, a timeout; it is for a scraper and a load balancer's probe.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .._errors import ConfigError, HdsdError
from ._health import fsync_summary, readiness

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["BODY_SIZE", "NodeMetrics", "serve_metrics", "size_class"]

log = logging.getLogger("hdsd.node")

# A handler that learns its body size late (a get knows it once the version is resolved) sets
# it here; the request's task reads it back when the request ends. One task per request, so
# the value never leaks to another request.
BODY_SIZE: ContextVar[int | None] = ContextVar("hdsd_body_size", default=None)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0)
# The buckets' ``le`` labels as prometheus_client writes them (its floatToGoString).
_LE = (*(repr(float(bound)) for bound in _LATENCY_BUCKETS), "+Inf")
_OPS = {"PutStart": "put", "GetRequest": "get", "StatRequest": "stat", "ListRequest": "list",
        "DeleteRequest": "delete", "VersionsRequest": "versions", "StatusRequest": "status",
        "SiteModeRequest": "site_mode", "Replicate": "replicate",
        "FetchVersions": "fetch_versions", "FetchChunk": "fetch_chunk",
        "PeerStatusRequest": "peer_status", "ListPeer": "list_peer"}
_WRITES = frozenset({"put", "delete", "replicate"})


def size_class(size: int | None) -> str:
    """The latency histogram's size label: le4k, le1m, gt1m, or none when unknown."""
    if size is None:
        return "none"
    if size <= 4 << 10:
        return "le4k"
    return "le1m" if size <= 1 << 20 else "gt1m"


class _RequestCounts(Collector):
    """The per-request figures (requests by operation and outcome, errors by code, body bytes,
    the latency histogram), counted in plain dicts and lists on the hot path and turned into
    metric families only when scraped: a request costs a few dict operations and a bisection,
    not three prometheus_client calls each taking a lock (measured: ~23 Python calls per
    request, every put on both nodes). Only the event loop counts; a scrape copies each dict
    first (one C call, atomic under the GIL)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        # (op, size_class) -> [count per bucket of _LATENCY_BUCKETS, then +Inf] and the sum
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "hdsd_requests", "Requests handled, by operation and outcome (ok or the error code)",
            labels=["op", "outcome"])
        for (op, outcome), n in sorted(self.requests.copy().items()):
            requests.add_metric([op, outcome], n)
        yield requests
        latency = HistogramMetricFamily(
            "hdsd_request_duration_seconds",
            "Latency of successful requests by operation and body size class",
            labels=["op", "size_class"])
        sums = self.latency_sum.copy()
        for key, counts in sorted(self.latency.copy().items()):
            total, buckets = 0, []
            for le, n in zip(_LE, list(counts), strict=True):
                total += n
                buckets.append((le, total))
            latency.add_metric(list(key), buckets, sums.get(key, 0.0))
        yield latency
        errors = CounterMetricFamily("hdsd_errors", "Failed requests by error code",
                                     labels=["code"])
        for code, n in sorted(self.errors.copy().items()):
            errors.add_metric([code], n)
        yield errors
        yield CounterMetricFamily("hdsd_received_body_bytes", "Bytes of put bodies stored",
                                  value=self.bytes_in)
        yield CounterMetricFamily("hdsd_sent_body_bytes", "Bytes of get bodies served",
                                  value=self.bytes_out)


class NodeMetrics:
    """The node's counters and histograms; the other figures are collected at scrape time."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._counts = _RequestCounts()
        self.registry.register(self._counts)
        self.registry.register(_StatusCollector(node))
        # Set by a write refused with disk_full, cleared by the next write that succeeds:
        # /readyz reports it without touching the disk.
        self.disk_full = False

    def request_done(self, msg: object, outcome: str, seconds: float) -> None:
        """Count one finished request (called where a request ends: ``handle_request``, a
        group of small puts, the acknowledger of a peer's small Replicates)."""
        name = type(msg).__name__
        op = _OPS.get(name, name)
        counts = self._counts
        key = (op, outcome)
        counts.requests[key] = counts.requests.get(key, 0) + 1
        if outcome != "ok":
            counts.errors[outcome] = counts.errors.get(outcome, 0) + 1
            if outcome == "disk_full":
                self.disk_full = True
            return
        size = BODY_SIZE.get()
        if op == "put":
            if size is None:  # replayed: the body was not stored again
                size = getattr(msg, "size", None)
            else:
                counts.bytes_in += size
        elif size is not None:
            counts.bytes_out += size
        if op in _WRITES:
            self.disk_full = False
        key = (op, size_class(size))
        buckets = counts.latency.get(key)
        if buckets is None:
            buckets = counts.latency[key] = [0] * (len(_LATENCY_BUCKETS) + 1)
            counts.latency_sum[key] = 0.0
        # A value equal to a bucket's bound counts in it (Prometheus' ``le``): bisect_left.
        buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        counts.latency_sum[key] += seconds

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _limits(limits: dict[str, Any]) -> Iterator[Metric]:
    """Connection slots and memory bounds (see hdsd.node._slots): use and refusals."""
    if not limits:
        return
    for pool, name in (("handshakes", "handshakes"), ("client_sessions", "client_sessions"),
                       ("peer_sessions", "peer_sessions")):
        yield _gauge(f"hdsd_{name}_open", f"Open {name.replace('_', ' ')}",
                     limits[pool]["open"])
        yield _gauge(f"hdsd_{name}_max", f"Most {name.replace('_', ' ')} at once",
                     limits[pool]["max"])
    refused = CounterMetricFamily("hdsd_connections_refused", "Connections refused for lack "
                                  "of a slot, by pool", labels=["reason"])
    for reason, n in sorted(limits["refused"].items()):
        refused.add_metric([reason], n)
    yield refused
    yield _counter("hdsd_sessions_idle_closed", "Client sessions closed after idle_timeout_s",
                   limits["idle_closed"])
    hits = CounterMetricFamily("hdsd_limit_hits", "Times a memory bound held a connection's "
                               "reading back, by bound", labels=["limit"])
    for limit, n in sorted(limits["hits"].items()):
        hits.add_metric([limit], n)
    yield hits
    budget = limits.get("body_budget")
    if budget:  # the node-wide body budget (hdsd.node._budget)
        yield _gauge("hdsd_body_budget_bytes", "[limits] max_body_mib_in_flight, in bytes",
                     budget["capacity"])
        yield _gauge("hdsd_body_in_flight_bytes", "Body bytes in flight (puts, gets, replica "
                     "writes) held in the body budget", budget["in_use"])
        yield _gauge("hdsd_body_in_flight_peak_bytes", "Most body bytes in flight at once "
                     "since start", budget["peak"])
        yield _counter("hdsd_body_budget_waits", "Requests that waited for room in the body "
                       "budget", budget["waited"])


def _memory(memory: dict[str, Any]) -> Iterator[Metric]:
    """Resident memory and glibc's split of it (``hdsd.node._malloc.memory_status``): a
    growing ``in_use`` is live data; a growing ``free`` is the allocator keeping it."""
    family = GaugeMetricFamily("hdsd_memory_bytes", "Process memory: resident (rss), and "
                               "glibc malloc's bytes in use, free in its arenas, mapped on "
                               "their own and its heaps' size, Python's arenas, SQLite's "
                               "bytes", labels=["kind"])
    if memory.get("rss") is not None:
        family.add_metric(["rss"], memory["rss"])
    for kind, value in sorted((memory.get("malloc") or {}).items()):
        family.add_metric([kind], value)
    # Python's small-object arenas are mapped apart from glibc's heaps; SQLite's bytes are a
    # part of glibc's in_use: what a growing RSS would be, when neither of the above moves.
    arenas = memory.get("python_arenas")
    if arenas:
        family.add_metric(["python_arenas"], arenas["arenas"])
    if memory.get("sqlite") is not None:
        family.add_metric(["sqlite"], memory["sqlite"])
    yield family


class _StatusCollector(Collector):
    """Gauges read from ``node.status()`` when scraped (nothing updated on the hot path)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        try:
            st = node.status()
        except HdsdError:
            return  # store closed during shutdown: the request counters still answer
        info = GaugeMetricFamily("hdsd_info", "This node (value 1)",
                                 labels=["node", "site", "cluster", "version"])
        info.add_metric([st["node"], st["site"], st["cluster"], st["software"]], 1)
        yield info
        yield _gauge("hdsd_uptime_seconds", "Seconds since the node started", st["uptime_s"])
        yield _gauge("hdsd_connections", "Open client and peer connections", st["connections"])
        yield _gauge("hdsd_requests_in_flight", "Requests being handled",
                     st["requests_in_flight"])
        yield from _limits(st.get("limits") or {})
        yield from _memory(st.get("memory") or {})
        yield _gauge("hdsd_site_degraded", "1 when this site accepts writes alone",
                     1 if st["mode"].get("mode") == "degraded" else 0)
        yield _gauge("hdsd_stopping", "1 during a graceful stop", 1 if node.stopping else 0)
        rpo = st["rpo"]
        yield _gauge("hdsd_rpo_versions", "Versions not yet in every replica (live RPO)",
                     rpo["versions"])
        yield _gauge("hdsd_rpo_bytes", "Bytes not yet in every replica (live RPO)", rpo["bytes"])
        yield _gauge("hdsd_rpo_age_seconds", "Age of the oldest version not yet everywhere",
                     rpo["age_s"])
        per_peer = {
            "hdsd_replication_backlog_versions": ("Hinted versions owed to a peer",
                                                  "backlog_versions"),
            "hdsd_replication_backlog_bytes": ("Hinted bytes owed to a peer", "backlog_bytes"),
            "hdsd_replication_backlog_age_seconds": ("Age of the oldest hint owed to a peer",
                                                     "backlog_age_s"),
            "hdsd_peer_reachable": ("1 when the link to the peer is up", "reachable"),
        }
        for name, (doc, field) in per_peer.items():
            family = GaugeMetricFamily(name, doc, labels=["peer", "peer_site"])
            for peer, p in sorted(st["peers"].items()):
                family.add_metric([peer, str(p.get("site", ""))], float(p.get(field) or 0))
            yield family
        store = st["store"]
        for field, doc in (("fsyncs", "Log fdatasyncs since start"),
                           ("batches", "Group commits since start"),
                           ("commits", "Commits made durable since start (commits / batches "
                                       "= commits per fsync)"),
                           ("bytes_written", "Log bytes written since start")):
            yield _counter(f"hdsd_store_{field}", doc, store[field])
        yield _gauge("hdsd_store_records", "Chunk and version records indexed", store["records"])
        yield _gauge("hdsd_store_segments", "Log segments on disk", store["segments"])
        yield _gauge("hdsd_store_disk_bytes", "Size of the log segments (preallocated)",
                     store["disk_bytes"])
        yield _gauge("hdsd_store_failed", "1 when the store stopped after a storage failure",
                     1 if store["failed"] else 0)
        yield _gauge("hdsd_store_disk_full", "1 when the last write was refused for lack of "
                     "space", 1 if node.metrics.disk_full else 0)
        summary = fsync_summary(node)
        if summary.get("samples"):
            family = GaugeMetricFamily("hdsd_store_fsync_recent_seconds", "fdatasync latency "
                                       "over the last group commits", labels=["quantile"])
            for q, field in (("0.5", "p50_ms"), ("0.99", "p99_ms"), ("1", "max_ms")):
                family.add_metric([q], summary[field] / 1000)
            yield family
            yield _gauge("hdsd_store_recent_batch_records", "Records per group commit over the "
                         "last group commits", summary["records_per_batch"])
        yield from _maintenance(st.get("maintenance") or {})
        disk = st.get("disk") or {}
        if disk:
            yield _gauge("hdsd_disk_free_bytes", "Free bytes on the data directory's disk",
                         disk["free"])
            yield _gauge("hdsd_disk_total_bytes", "Size of the data directory's disk",
                         disk["total"])


def _maintenance(m: dict[str, Any]) -> Iterator[Metric]:
    """Repair and scrub state, when the node runs them (``status()["maintenance"]``)."""
    for task in ("repair", "scrub"):
        state = m.get(task)
        if not isinstance(state, dict):
            continue
        yield _gauge(f"hdsd_{task}_running", f"1 while a {task} runs",
                     1 if state.get("running") else 0)
        yield _counter(f"hdsd_{task}_runs_completed", f"{task.capitalize()} runs completed",
                       float(state.get("runs_completed") or 0))
        progress = state.get("progress") or {}
        if isinstance(progress.get("progress"), (int, float)):
            yield _gauge(f"hdsd_{task}_progress_ratio", f"Progress of the running {task}, 0..1",
                         float(progress["progress"]))
        last = state.get("last") or {}
        if isinstance(last.get("finished"), (int, float)):
            yield _gauge(f"hdsd_{task}_last_finished_timestamp_seconds",
                         f"When the last {task} ended (Unix time)", float(last["finished"]))
        if task == "scrub" and last:
            for field in ("corrupt", "missing", "repaired", "unrepaired"):
                yield _gauge(f"hdsd_scrub_last_{field}", f"Chunks {field} in the last scrub",
                             float(last.get(field) or 0))


# -- HTTP ------------------------------------------------------------------------------------
_HEAD_MAX = 8192
_HTTP_TIMEOUT = 10.0


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def _route(node: Node, method: str, path: str) -> bytes:
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n")
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return _response("200 OK", node.metrics.exposition(), CONTENT_TYPE_LATEST)
    if path == "/healthz":
        return _response("200 OK", b"ok\n")
    if path == "/readyz":
        ready, reason = await readiness(node)
        return _response("200 OK" if ready else "503 Service Unavailable",
                         reason.encode() + b"\n")
    return _response("404 Not Found", b"try /metrics, /healthz or /readyz\n")


async def _handle_http(node: Node, stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(_HTTP_TIMEOUT):
            head = b""
            while b"\r\n\r\n" not in head and len(head) < _HEAD_MAX:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                reply = _response("400 Bad Request", b"bad request line\n")
            else:
                reply = await _route(node, parts[0], parts[1])
                if parts[0] == "HEAD":
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the scraper went away
    finally:
        await trio.aclose_forcefully(stream)


async def serve_metrics(node: Node, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``[metrics] address`` until
    cancelled; ``task_status.started(port)`` once listening (also ``node.metrics_port``)."""
    host = node.config.metrics_host
    assert host is not None
    try:
        listeners = await trio.open_tcp_listeners(node.config.metrics_port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{node.config.metrics_port}: "
                          f"{exc.strerror or exc}; choose another [metrics] address") from None
    port: int = listeners[0].socket.getsockname()[1]
    node.metrics_port = port
    log.info("event=metrics_listening node=%s address=%s:%d", node.config.name, host, port)
    task_status.started(port)

    async def handle(stream: trio.SocketStream) -> None:
        await _handle_http(node, stream)

    await trio.serve_listeners(handle, listeners)
