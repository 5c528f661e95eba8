"""The error the S3 authentication and payload modules raise: an S3 error code, its HTTP status
and a message, which the gateway turns into S3's XML error body."""

from __future__ import annotations

__all__ = ["S3AuthError"]


class S3AuthError(Exception):
    """A request refused by authentication or by its payload's integrity checks.

    ``code`` is S3's error code (``SignatureDoesNotMatch``, ``BadDigest``...), ``status`` the
    HTTP status S3 answers it with. The message never carries a secret or a signature the
    server computed (only what the client sent may be echoed back)."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


def access_denied(message: str = "Access Denied") -> S3AuthError:
    return S3AuthError("AccessDenied", 403, message)


def invalid_request(message: str) -> S3AuthError:
    return S3AuthError("InvalidRequest", 400, message)


def invalid_argument(message: str) -> S3AuthError:
    return S3AuthError("InvalidArgument", 400, message)
