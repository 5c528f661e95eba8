"""Anti-entropy and maintenance messages (node ↔ node, and the admin request that starts them).

A repair round walks two Merkle trees from the root down (``TreeLevel``: the hashes of some
nodes at one depth), then reconciles the leaves that differ (``LeafDiff``: here are the digests
of my versions in these leaves; answer with the versions I lack and the digests you lack).
Sizes are capped so a request and its reply each fit in one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import InvalidRequest
from . import _constants as C
from . import _fields as F
from ._messages import Request
from ._replies import LeafDiffReply, MaintenanceStarted, TreeHashes

__all__ = ["MAINTENANCE_TASKS", "LeafDiff", "MaintenanceRequest", "TreeLevel"]

MAX_TREE_DEPTH = 4
MAX_TREE_INDICES = 8192  # x 16-byte hashes: a 128 KiB reply
MAX_DIFF_LEAVES = 256
MAX_DIFF_DIGESTS = 65_536  # x 16 bytes: 1 MiB
DIGEST_BYTES = 16
MAINTENANCE_TASKS = ("repair", "scrub", "compact")
_MAX_LAYOUT_CHARS = 64


@dataclass(frozen=True, slots=True)
class TreeLevel(Request[TreeHashes]):
    """The sender's tree hashes (for the pair sender-receiver) of nodes ``indices`` at
    ``depth`` (0 = root); Reply ``{"hashes": [16-byte hash, ...], "count": versions}``."""

    rid: int
    layout: str
    depth: int
    indices: list[int]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("layout", self.layout, max_chars=_MAX_LAYOUT_CHARS, allow_empty=False)
        F.check_int("depth", self.depth, 0, MAX_TREE_DEPTH)
        if type(self.indices) is not list or len(self.indices) > MAX_TREE_INDICES:
            raise InvalidRequest(f"indices: a list of at most {MAX_TREE_INDICES}")
        width = 16 ** self.depth
        for i in self.indices:
            F.check_int("indices", i, 0, width - 1)


@dataclass(frozen=True, slots=True)
class LeafDiff(Request[LeafDiffReply]):
    """``leaves`` = ``[[leaf, [digest, ...]], ...]``: the sender's version digests in each
    leaf. Reply ``{"versions": [version map, ...] (the receiver's that the sender lacks),
    "wanted": [digest, ...] (the sender's that the receiver lacks)}``."""

    rid: int
    layout: str
    leaves: list[Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("layout", self.layout, max_chars=_MAX_LAYOUT_CHARS, allow_empty=False)
        if type(self.leaves) is not list or len(self.leaves) > MAX_DIFF_LEAVES:
            raise InvalidRequest(f"leaves: a list of at most {MAX_DIFF_LEAVES}")
        total = 0
        for item in self.leaves:
            if type(item) is not list or len(item) != 2 or type(item[1]) is not list:
                raise InvalidRequest("leaves: each item must be [leaf, [digest, ...]]")
            F.check_int("leaf", item[0], 0, 16 ** MAX_TREE_DEPTH - 1)
            for d in item[1]:
                F.check_bytes("digest", d, exact=DIGEST_BYTES)
            total += len(item[1])
        if total > MAX_DIFF_DIGESTS:
            raise InvalidRequest(f"at most {MAX_DIFF_DIGESTS} digests per request")


@dataclass(frozen=True, slots=True)
class MaintenanceRequest(Request[MaintenanceStarted]):
    """Admin: start a ``repair``, ``scrub`` or ``compact`` on this node now (Reply at once
    with its state;
    progress and the final report appear in the node's status)."""

    rid: int
    task: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        if self.task not in MAINTENANCE_TASKS:
            raise InvalidRequest(f"task must be one of {', '.join(MAINTENANCE_TASKS)}")


assert C.MAX_FRAME > MAX_DIFF_DIGESTS * DIGEST_BYTES * 2
