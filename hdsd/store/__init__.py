"""Log-structured store: segments of framed records, SQLite index, recovery."""

from ._version import Version as Version
from ._version import parse_version_id as parse_version_id
