"""Authorization: what each client role may do, and name validation.

The tenant always comes from the verified certificate, never from the request: a client can only
ever name buckets of its own tenant, so another tenant's data cannot even be probed — a key that
exists in another tenant is simply ``NotFound`` here, exactly like a key that exists nowhere.
"""

from __future__ import annotations

import re
from typing import Literal

from .._errors import InvalidRequest, PermissionDenied

__all__ = ["Operation", "authorize", "check_bucket", "check_key"]

Operation = Literal["put", "delete", "get", "stat", "list", "versions", "status", "admin"]

_ALLOWED: dict[str, frozenset[str]] = {
    "admin": frozenset({"put", "delete", "get", "stat", "list", "versions", "status", "admin"}),
    "writer": frozenset({"put", "delete", "get", "stat", "list", "versions", "status"}),
    "reader": frozenset({"get", "stat", "list", "versions", "status"}),
    # Auditors read the audit trail (compliance issue), never the data itself.
    "auditor": frozenset({"status"}),
}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def authorize(role: str | None, op: Operation) -> None:
    if role is None or op not in _ALLOWED.get(role, frozenset()):
        raise PermissionDenied(f"role {role!r} may not {op}")


def check_bucket(bucket: str) -> None:
    if not _BUCKET_RE.match(bucket):
        raise InvalidRequest(
            f"bucket name {bucket!r} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit")


def check_key(key: str) -> None:
    if not key or len(key.encode()) > 1024:
        raise InvalidRequest("key must be 1 to 1024 bytes of UTF-8")
    if "\x00" in key:
        raise InvalidRequest("key must not contain NUL")
