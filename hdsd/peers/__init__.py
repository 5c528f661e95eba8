"""Peer links: the long-lived TLS connection to every other node, and moving whole versions
(with their chunks) over it. Used by replication, repair and audit alike."""

from ._link import UNREACHABLE_WARN_AFTER_S as UNREACHABLE_WARN_AFTER_S
from ._link import DownloadLink as DownloadLink
from ._link import PeerLink as PeerLink
from ._link import PeerPool as PeerPool
from ._link import SendHookLink as SendHookLink
from ._offload import Offload as Offload
from ._offload import to_thread as to_thread
from ._transfer import BATCH_BYTES as BATCH_BYTES
from ._transfer import ChunkReader as ChunkReader
from ._transfer import fetch_chunk_records as fetch_chunk_records
from ._transfer import fetch_chunks as fetch_chunks
from ._transfer import local_chunks as local_chunks
from ._transfer import push_version as push_version
from ._transfer import push_versions as push_versions
from ._transfer import replicate_message as replicate_message
