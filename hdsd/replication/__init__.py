"""Replication: the write coordinator, write policies, hints, site modes, peer links."""

from ._doubts import PeerDoubts as PeerDoubts
from ._hints import Backlog as Backlog
from ._hints import HintStore as HintStore
from ._mode import ModeState as ModeState
from ._mode import SiteMode as SiteMode
from ._peers import PeerLink as PeerLink
from ._peers import PeerPool as PeerPool
from ._policy import policy_met as policy_met
from ._replicator import Replicator as Replicator
from ._requests import check_retry as check_retry
from ._transfer import fetch_chunk_records as fetch_chunk_records
from ._transfer import fetch_chunks as fetch_chunks
from ._transfer import local_chunks as local_chunks
from ._transfer import push_version as push_version
from ._transfer import push_versions as push_versions
from ._types import to_thread as to_thread
