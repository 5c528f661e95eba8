"""Log output of a node: ``event=... key=value`` text lines, or one JSON object per line.

The node logs every event as ``event=NAME key=value ...`` through the standard library; the
JSON format parses those pairs back out, so a log shipper gets fields without a grok pattern::

    {"ts": "2026-11-29T21:03:04.123Z", "level": "info", "logger": "hdsd.node",
     "event": "listening", "node": "dc1-n1", "site": "dc1", "address": "127.0.0.1:7400"}

A value runs until the next `` key=`` (values may hold spaces, e.g. an error message); a value
written with ``%r`` is unquoted; integers and decimals become JSON numbers. Text that is not a
pair stays in ``msg``; a traceback goes to ``exc``.

Nothing secret is ever passed to a logger (keys, PEMs, tenant data): the log is not a safe
place for them whatever the format, and ``tests/ops`` checks it at debug level.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import time
from typing import IO, Any

__all__ = ["JsonFormatter", "configure_logging", "parse_fields"]

TEXT_FORMAT = "%(asctime)s level=%(levelname)s %(message)s"

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_.]*)=")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d+")


def _value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _quoted_end(message: str, start: int) -> int:
    """Index just past the quoted literal starting at *start*, or -1 if it is not closed."""
    quote, i = message[start], start + 1
    while i < len(message):
        if message[i] == "\\":
            i += 2
            continue
        if message[i] == quote:
            return i + 1
        i += 1
    return -1


def parse_fields(message: str) -> tuple[dict[str, Any], str]:
    """``"event=x a=1 b=two words"`` → ``({"event": "x", "a": 1, "b": "two words"}, "")``;
    the second item is the text before the first pair."""
    first = _KEY.search(message)
    if first is None:
        return {}, message
    fields: dict[str, Any] = {}
    m: re.Match[str] | None = first
    while m is not None:
        start = m.end()
        end = -1
        if start < len(message) and message[start] in "'\"":
            end = _quoted_end(message, start)
            # A quoted value must end at a separator, else it is plain text with a quote.
            if end != -1 and end < len(message) and not message[end].isspace():
                end = -1
        nxt = _KEY.search(message, end if end != -1 else start)
        if end == -1:
            end = nxt.start() if nxt is not None else len(message)
        fields.setdefault(m.group(1), _value(message[start:end]))
        m = nxt
    return fields, message[:first.start()].strip()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ms), level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields, rest = parse_fields(record.getMessage())
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {"ts": f"{ts}.{int(record.msecs):03d}Z",
                               "level": record.levelname.lower(), "logger": record.name}
        if "event" in fields:
            out["event"] = fields.pop("event")
        for key, value in fields.items():
            out.setdefault(key, value)  # a field never overwrites ts/level/logger
        if rest:
            out["msg"] = rest
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(fmt: str = "text", level: str = "info",
                      stream: IO[str] | None = None) -> None:
    """Send every hdsd (and library) log record to *stream* (stderr) in *fmt* at *level*."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
