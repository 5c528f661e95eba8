"""An audit record's names, sealed under the tenant's key: the text format (see
hdsd.audit._names) and the way back."""

from __future__ import annotations

import base64

from hdsd.audit import open_audit_names
from hdsd.audit._names import seal_audit_names
from hdsd.pipeline import NameSeal
from tests.helpers.sealing import tenant_keys


def test_sealed_names_are_url_safe_base64_and_open_back() -> None:
    seal = NameSeal(tenant_keys("acme"))
    texts = []
    for i in range(64):  # random nonces: across 64 seals every base64 digit shows up
        bucket, key = seal_audit_names(seal, "acme", "b", f"patient/{i}")
        assert bucket.startswith("sealed:") and key == "id:" + seal.name_id("b",
                                                                          f"patient/{i}").hex()
        raw = base64.urlsafe_b64decode(bucket[len("sealed:"):])
        assert bucket == "sealed:" + base64.urlsafe_b64encode(raw).decode("ascii")
        assert open_audit_names(seal, "acme", bucket, key) == ("b", f"patient/{i}")
        texts.append(bucket[len("sealed:"):])
    assert not any("+" in t or "/" in t for t in texts)
    assert any("-" in t for t in texts) and any("_" in t for t in texts)
