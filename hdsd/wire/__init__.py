"""hdsd.wire: the sans-IO wire protocol (framing, typed messages, connection state machine).

Never imports trio or sockets; the transport layer drives a :class:`Connection` with bytes.
The format is documented for implementers of other clients in ``docs/wire.md``.
"""

from ._admin import BucketCreate as BucketCreate
from ._admin import BucketList as BucketList
from ._admin import CatalogPush as CatalogPush
from ._admin import CatalogSync as CatalogSync
from ._admin import CertList as CertList
from ._admin import CertRevoke as CertRevoke
from ._admin import HoldList as HoldList
from ._admin import HoldSet as HoldSet
from ._admin import TenantAbandon as TenantAbandon
from ._admin import TenantConfirm as TenantConfirm
from ._admin import TenantCreate as TenantCreate
from ._admin import TenantList as TenantList
from ._admin import TenantShred as TenantShred
from ._admin import TenantVote as TenantVote
from ._connection import Connection as Connection
from ._connection import ConnectionClosed as ConnectionClosed
from ._connection import Event as Event
from ._connection import NeedData as NeedData
from ._connection import Role as Role
from ._constants import DEFAULT_WINDOW as DEFAULT_WINDOW
from ._constants import HEADER_SIZE as HEADER_SIZE
from ._constants import MAX_FRAME as MAX_FRAME
from ._constants import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._constants import REQUEST_ID_SIZE as REQUEST_ID_SIZE
from ._errors import LocalProtocolError as LocalProtocolError
from ._messages import Cancel as Cancel
from ._messages import Credit as Credit
from ._messages import Data as Data
from ._messages import DeleteRequest as DeleteRequest
from ._messages import End as End
from ._messages import ErrorReply as ErrorReply
from ._messages import GetRequest as GetRequest
from ._messages import GetStart as GetStart
from ._messages import Goodbye as Goodbye
from ._messages import Hello as Hello
from ._messages import Kind as Kind
from ._messages import ListBucketsRequest as ListBucketsRequest
from ._messages import ListRequest as ListRequest
from ._messages import Message as Message
from ._messages import PutStart as PutStart
from ._messages import Reply as Reply
from ._messages import StatRequest as StatRequest
from ._messages import StatusRequest as StatusRequest
from ._messages import VersionsRequest as VersionsRequest
from ._peer import SITE_MODES as SITE_MODES
from ._peer import AuditShip as AuditShip
from ._peer import FetchChunk as FetchChunk
from ._peer import FetchVersions as FetchVersions
from ._peer import LayoutPush as LayoutPush
from ._peer import ListBucketsPeer as ListBucketsPeer
from ._peer import ListPeer as ListPeer
from ._peer import PeerStatusRequest as PeerStatusRequest
from ._peer import Replicate as Replicate
from ._peer import SiteModeName as SiteModeName
from ._peer import SiteModeRequest as SiteModeRequest
from ._registry import MESSAGE_TYPES as MESSAGE_TYPES
from ._registry import MessageType as MessageType
from ._registry import frame_size as frame_size
from ._repair import MAINTENANCE_TASKS as MAINTENANCE_TASKS
from ._repair import LeafDiff as LeafDiff
from ._repair import MaintenanceRequest as MaintenanceRequest
from ._repair import TreeLevel as TreeLevel
