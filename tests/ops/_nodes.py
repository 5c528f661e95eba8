"""Helpers for the operator tests: config edits, the metrics port from a node's log, HTTP GET."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

from tests.helpers.cluster import NodeProcess


def add_sections(config: Path, text: str) -> None:
    """Insert TOML sections before [[sites]] (the array of tables must stay last), replacing
    a section of the same name that `hdsd init` wrote (it writes [log])."""
    body = config.read_text()
    for name in re.findall(r"^\[(\w+)\]", text, flags=re.M):
        body = re.sub(rf"^\[{name}\]\n(?:[^\[\n][^\n]*\n|\n)*?(?=\n|\[)", "", body,
                      flags=re.M)
    at = body.index("\n[[sites]]")
    config.write_text(body[:at] + "\n" + text.strip() + "\n" + body[at:])


def metrics_port(node: NodeProcess) -> int:
    for line in node.stderr_lines:
        m = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no metrics line in the node's log:\n" + node.log())


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if "{" in metric:
            base, _, rest = metric.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(",")))
        else:
            base, got = metric, ""
        if base == name and got == want:
            return float(value)
    return None
