"""hdsd.s3: an S3-compatible HTTP gateway on every node, over the node's object API.

The node (``hdsd.node``) implements :class:`Backend` and starts :func:`serve_s3` in its nursery
when ``[s3]`` is configured; see ``docs/s3.md`` for what is supported.
"""

from ._gateway import Access as Access
from ._gateway import Backend as Backend
from ._gateway import BodyDecoder as BodyDecoder
from ._gateway import Gateway as Gateway
from ._gateway import Principal as Principal
from ._gateway import authenticate_request as authenticate_request
from ._http import HttpLimits as HttpLimits
from ._http import HttpRequest as HttpRequest
from ._multipart import Uploads as Uploads
from ._server import Endpoint as Endpoint
from ._server import serve_s3 as serve_s3
from ._xml import S3Error as S3Error
