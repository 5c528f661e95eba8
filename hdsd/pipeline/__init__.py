"""hdsd.pipeline: a plaintext stream to sealed chunks and back.

A chunk is named by the keyed BLAKE3 hash of its plaintext (per-tenant dedup key), compressed
with zstd when that helps, and encrypted with XChaCha20-Poly1305 under the tenant's data key.
The payload format is documented in :mod:`hdsd.pipeline._codec`.
"""

from .._alloc import tune_allocator as tune_allocator
from ._chunker import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from ._chunker import MAX_CHUNK_SIZE as MAX_CHUNK_SIZE
from ._chunker import Chunker as Chunker
from ._codec import CHUNK_ID_SIZE as CHUNK_ID_SIZE
from ._codec import FORMAT_VERSION as FORMAT_VERSION
from ._codec import PAYLOAD_OVERHEAD as PAYLOAD_OVERHEAD
from ._codec import ChunkCodec as ChunkCodec
from ._codec import ContentHasher as ContentHasher
from ._codec import SealedChunk as SealedChunk
from ._keys import TenantKeys as TenantKeys
from ._names import NAME_ID_BYTES as NAME_ID_BYTES
from ._names import NameSeal as NameSeal
from ._names import TenantNameSealing as TenantNameSealing
from ._nonces import random_bytes as random_bytes
from ._stream import THREAD_THRESHOLD as THREAD_THRESHOLD
from ._stream import OrderedHasher as OrderedHasher
from ._stream import open_in_thread as open_in_thread
from ._stream import pipeline_limiter as pipeline_limiter
from ._stream import run_in_worker as run_in_worker
from ._stream import seal_in_thread as seal_in_thread
from ._stream import seal_stream as seal_stream
