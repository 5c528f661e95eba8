"""S3's XML: error bodies, listing and multipart documents out, the few request bodies in.

Requests bodies are parsed with the standard library's expat (entity expansion is bounded
since Python 3.7.1's expat 2.4) and only after their size was bounded by the caller.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from .._errors import HdsdError, Unavailable

__all__ = ["S3_NS", "S3Error", "error_body", "error_for", "parse_xml", "xml_doc"]

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class S3Error(HdsdError):
    """An S3 error: its S3 code (``NoSuchKey``), HTTP status and message. An HdsdError so that
    it crosses the object API's nurseries (a body source raising BadDigest) like any typed
    refusal."""

    code = "s3"

    def __init__(self, s3_code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.s3_code = s3_code
        self.status = status


# hdsd error codes -> (S3 code, status). Unavailable kinds are 503 so clients retry them.
_FROM_HDSD: dict[str, tuple[str, int]] = {
    "not_found": ("NoSuchKey", 404),
    "permission_denied": ("AccessDenied", 403),
    "tenant_shredded": ("AccessDenied", 403),
    "authentication_failed": ("AccessDenied", 403),
    "retention_locked": ("AccessDenied", 403),
    "legal_hold": ("AccessDenied", 403),
    "quota_exceeded": ("QuotaExceeded", 403),
    "invalid_request": ("InvalidRequest", 400),
    "invalid_argument": ("InvalidArgument", 400),
    "request_id_conflict": ("InvalidRequest", 400),
    "timeout": ("RequestTimeout", 400),
    "tenant_pending": ("ServiceUnavailable", 503),
    "tenant_conflict": ("AccessDenied", 403),
    "wrong_role": ("ServiceUnavailable", 503),
}


def error_for(exc: HdsdError) -> S3Error:
    if isinstance(exc, S3Error):
        return exc
    code, status = _FROM_HDSD.get(exc.code, ("", 0))
    if not code:
        if isinstance(exc, Unavailable):
            code, status = "ServiceUnavailable", 503
        else:
            code, status = "InternalError", 500
    return S3Error(code, status, exc.message)


def error_body(err: S3Error, resource: str, request_id: str) -> bytes:
    return xml_doc("Error", [("Code", err.s3_code), ("Message", err.message),
                             ("Resource", resource), ("RequestId", request_id)], ns=False)


Item = tuple[str, Any]


def _build(parent: ET.Element, items: Iterable[Item]) -> None:
    for name, value in items:
        child = ET.SubElement(parent, name)
        if isinstance(value, list):
            _build(child, value)
        elif isinstance(value, bool):
            child.text = "true" if value else "false"
        elif value is not None:
            child.text = str(value)


def xml_doc(root: str, items: Iterable[Item], *, ns: bool = True) -> bytes:
    """A document ``<root>`` of *items*: ``(name, text | list of items)`` pairs, in order."""
    element = ET.Element(root, {"xmlns": S3_NS} if ns else {})
    _build(element, items)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(element)


def parse_xml(body: bytes) -> ET.Element:
    """A request body's root element, namespaces stripped from tags; MalformedXML if not."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", 400, "XML with a DTD or entities is not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML", 400, f"the XML is not well-formed: {exc}") from None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root
