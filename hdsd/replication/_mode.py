"""The site's write mode: ``normal`` (the configured policy) or ``degraded`` (accept writes
alone under policy ``local``, every write also kept as a hint for the other site).

Persisted as JSON in the data directory (atomically replaced), so a restart keeps the mode an
operator chose; who changed it, when and why is kept with it and logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from ..wire import SiteModeName

__all__ = ["ModeState", "SiteMode"]

log = logging.getLogger("hdsd.replication")


@dataclass(frozen=True, slots=True)
class SiteMode:
    mode: SiteModeName = "normal"
    reason: str = ""
    by: str = ""
    since: float = 0.0
    automatic: bool = False  # set by on_peer_site_loss = "degrade", not by an operator


class ModeState:
    def __init__(self, path: Path, *, site: str) -> None:
        self._path = path
        self.site = site
        self.current = SiteMode()
        if path.exists():
            try:
                self.current = SiteMode(**json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as exc:
                log.error("event=mode_file_unreadable path=%s error=%s; assuming degraded",
                          path, exc)
                # Refusing writes would be safe too; degraded keeps hints, so nothing is lost.
                self.current = SiteMode("degraded", "mode file unreadable", "hdsd", time.time())

    @property
    def degraded(self) -> bool:
        return self.current.mode == "degraded"

    def set(self, mode: SiteModeName, *, reason: str, by: str, automatic: bool = False) -> SiteMode:
        if mode == self.current.mode:
            return self.current
        self.current = SiteMode(mode, reason, by, time.time(), automatic)
        atomic_write(self._path, json.dumps(asdict(self.current)).encode())
        log.warning("event=site_mode site=%s mode=%s by=%s automatic=%s reason=%r",
                    self.site, mode, by, automatic, reason)
        return self.current

    def describe(self) -> dict[str, Any]:
        return asdict(self.current)
