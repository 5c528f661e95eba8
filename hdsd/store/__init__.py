"""Log-structured store: segments of framed records, SQLite index, recovery.

The on-disk format and the crash rules are specified in ``hdsd.store._log``.
"""

from ._compact import CompactReport as CompactReport
from ._fs import FileSystem as FileSystem
from ._index import Location as Location
from ._index import VersionName as VersionName
from ._index import khash_of as khash_of
from ._migrate import MigrateReport as MigrateReport
from ._migrate import migrate_store as migrate_store
from ._migrate import migration_pending as migration_pending
from ._records import ChunkRecord as ChunkRecord
from ._sealed import NAME_ID_BYTES as NAME_ID_BYTES
from ._sealed import ReplicatedVersion as ReplicatedVersion
from ._sealed import Sealing as Sealing
from ._sealed import TenantSeal as TenantSeal
from ._sealed import replicated_version as replicated_version
from ._store import LOCK_NAME as LOCK_NAME
from ._store import CommitTicket as CommitTicket
from ._store import EncodedCommit as EncodedCommit
from ._store import Record as Record
from ._store import Store as Store
from ._store import StoreStatistics as StoreStatistics
from ._version import Version as Version
from ._version import parse_version_id as parse_version_id
from ._version import retained_until as retained_until
from ._version import visible_versions as visible_versions
from ._wake import Bell as Bell
