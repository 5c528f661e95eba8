"""hdsd.catalog: the replicated catalog of tenants (and their wrapped keys), buckets, legal
holds and revoked certificates, with merge rules that converge in any delivery order. Knows
nothing of the network."""

from ._db import CATALOG_FILE as CATALOG_FILE
from ._db import Catalog as Catalog
from ._db import tenant_in_catalog as tenant_in_catalog
from ._db import tenant_state_in_catalog as tenant_state_in_catalog
from ._model import CONFIRMED as CONFIRMED
from ._model import PENDING as PENDING
from ._model import BucketEntry as BucketEntry
from ._model import Entry as Entry
from ._model import HoldEntry as HoldEntry
from ._model import RevokedEntry as RevokedEntry
from ._model import TenantEntry as TenantEntry
from ._model import entry_from_wire as entry_from_wire
from ._model import merge as merge
