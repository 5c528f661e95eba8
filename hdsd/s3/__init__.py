"""hdsd.s3: an S3-compatible HTTP gateway on every node, over the node's object API.

Authentication (Signature V4, presigned URLs) and payload checks (aws-chunked, checksums) are
sans-IO modules here; the gateway (HTTP, routing, XML, operations, multipart upload state) drives
them. The node (``hdsd.node``) implements :class:`Backend` and starts :func:`serve_s3` in its
nursery when ``[s3]`` is configured; see ``docs/s3.md`` for what is supported.
"""

from ._auth import CHECKSUM_ALGORITHMS as CHECKSUM_ALGORITHMS
from ._auth import Authenticated as Authenticated
from ._auth import BodyDecoder as BodyDecoder
from ._auth import CredentialLookup as CredentialLookup
from ._auth import CredentialRecord as CredentialRecord
from ._auth import PayloadMode as PayloadMode
from ._auth import S3Credential as S3Credential
from ._auth import authenticate as authenticate
from ._auth import body_decoder as body_decoder
from ._errors import S3AuthError as S3AuthError
from ._gateway import Access as Access
from ._gateway import Backend as Backend
from ._gateway import Gateway as Gateway
from ._gateway import Principal as Principal
from ._gateway import authenticate_request as authenticate_request
from ._http import HttpLimits as HttpLimits
from ._http import HttpRequest as HttpRequest
from ._multipart import Uploads as Uploads
from ._server import Endpoint as Endpoint
from ._server import serve_s3 as serve_s3
from ._sigv4 import decode_path as decode_path
from ._sigv4 import parse_query as parse_query
from ._sigv4 import split_target as split_target
from ._xml import S3Error as S3Error
