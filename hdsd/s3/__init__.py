"""hdsd.s3: the S3-compatible gateway. Authentication (Signature V4, presigned URLs) and
payload checks (aws-chunked, checksums) are sans-IO modules here; the gateway drives them."""

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
from ._sigv4 import decode_path as decode_path
from ._sigv4 import parse_query as parse_query
from ._sigv4 import split_target as split_target
