"""hdsd.transport: mutual TLS 1.3 between nodes and clients, and the trio glue to the wire codec.

Certificates carry the peer's identity (see :mod:`hdsd.transport._certs` for the encoding);
:func:`handshake_and_identify` turns an accepted connection into an :class:`Identity`.
"""

from ._certs import CLIENT_VALIDITY_DAYS as CLIENT_VALIDITY_DAYS
from ._certs import ROLES as ROLES
from ._certs import ClientRole as ClientRole
from ._certs import Identity as Identity
from ._certs import IssuedCert as IssuedCert
from ._certs import create_ca as create_ca
from ._certs import identity_from_der as identity_from_der
from ._certs import issue_client_cert as issue_client_cert
from ._certs import issue_node_cert as issue_node_cert
from ._certs import issued_certificates as issued_certificates
from ._certs import read_certificate as read_certificate
from ._certs import serial_hex as serial_hex
from ._certs import verify_issued as verify_issued
from ._listen import connect_tls as connect_tls
from ._listen import handshake_and_identify as handshake_and_identify
from ._listen import listener_port as listener_port
from ._listen import open_tls_listeners as open_tls_listeners
from ._session import ReplySlot as ReplySlot
from ._session import WireSession as WireSession
from ._tls import client_context as client_context
from ._tls import https_context as https_context
from ._tls import server_context as server_context
from ._tlsread import tls_receiver as tls_receiver
