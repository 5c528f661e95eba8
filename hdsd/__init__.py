"""hdsd: a storage daemon for health-data hosts, two datacenters synchronised in real time.

Everything a user may touch is re-exported here; modules starting with ``_`` are private.
"""

from typing import TYPE_CHECKING

from ._alloc import tune_allocator as tune_allocator
from ._errors import ArchiveError as ArchiveError
from ._errors import AuditChainBroken as AuditChainBroken
from ._errors import AuditTampered as AuditTampered
from ._errors import AuthenticationFailed as AuthenticationFailed
from ._errors import CertificateRevoked as CertificateRevoked
from ._errors import ConfigError as ConfigError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import CorruptLogError as CorruptLogError
from ._errors import DiskFullError as DiskFullError
from ._errors import HdsdError as HdsdError
from ._errors import IntegrityError as IntegrityError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidRequest as InvalidRequest
from ._errors import LayoutMismatch as LayoutMismatch
from ._errors import LegalHold as LegalHold
from ._errors import NotFound as NotFound
from ._errors import PermissionDenied as PermissionDenied
from ._errors import ProtocolError as ProtocolError
from ._errors import QuorumNotReached as QuorumNotReached
from ._errors import QuotaExceeded as QuotaExceeded
from ._errors import RequestIdConflict as RequestIdConflict
from ._errors import RequestTimeout as RequestTimeout
from ._errors import RetentionLocked as RetentionLocked
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreFailedError as StoreFailedError
from ._errors import StoreInUse as StoreInUse
from ._errors import TenantConflict as TenantConflict
from ._errors import TenantPending as TenantPending
from ._errors import TenantShredded as TenantShredded
from ._errors import TooManyConnections as TooManyConnections
from ._errors import Unavailable as Unavailable
from ._errors import WrongRole as WrongRole
from ._meta import __version__ as __version__
from .client import AsyncClient as AsyncClient
from .client import Client as Client
from .client import ExportSummary as ExportSummary
from .client import Fetched as Fetched
from .client import ImportSummary as ImportSummary
from .client import ListPage as ListPage
from .client import ObjectInfo as ObjectInfo
from .client import export_tenant as export_tenant
from .client import import_archive as import_archive

if TYPE_CHECKING:
    from .store import Version as Version


def __getattr__(name: str) -> object:
    # The store (its index, log and compaction: a node's) is imported on first use of
    # hdsd.Version, not by every `import hdsd`: the CLI's client commands start without it.
    if name == "Version":
        from .store import Version

        return Version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
