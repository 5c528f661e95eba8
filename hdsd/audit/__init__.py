"""The tamper-evident audit log: one hash-chained record per client request and admin action,
Ed25519-signed checkpoints, shipping to the other site, offline verification.
The on-disk format is specified in :mod:`._format` and ``docs/audit.md``."""

from ._copies import AuditCopies as AuditCopies
from ._copies import copy_dir as copy_dir
from ._files import VERIFY_KEY_FILE as VERIFY_KEY_FILE
from ._files import fingerprint as fingerprint
from ._files import load_or_create_signing_key as load_or_create_signing_key
from ._files import read_verify_key as read_verify_key
from ._format import AuditRecord as AuditRecord
from ._hook import ObservedSession as ObservedSession
from ._hook import audit_item as audit_item
from ._hook import audit_put as audit_put
from ._hook import audit_request as audit_request
from ._hook import peer_address as peer_address
from ._log import AuditLog as AuditLog
from ._log import AuditSettings as AuditSettings
from ._names import SEALED_PREFIX as SEALED_PREFIX
from ._names import AuditNames as AuditNames
from ._names import open_audit_names as open_audit_names
from ._names import seal_audit_names as seal_audit_names
from ._refusals import RefusalCounter as RefusalCounter
from ._ship import AuditShipper as AuditShipper
from ._verify import RESUMED_OP as RESUMED_OP
from ._verify import VerifyReport as VerifyReport
from ._verify import read_records as read_records
from ._verify import verify_log as verify_log
