"""hdsd.catalog: the replicated catalog of tenants (and their wrapped keys), buckets, legal
holds (their names sealed under the tenant's key), revoked certificates and S3 access keys
(secrets wrapped), with merge rules that converge in any delivery order. Knows nothing of the
network."""

from ._confirm import decide_abandon as decide_abandon
from ._confirm import decide_confirm as decide_confirm
from ._confirm import describe_creation as describe_creation
from ._confirm import pending_error as pending_error
from ._confirm import vote_abandon as vote_abandon
from ._confirm import vote_create as vote_create
from ._db import CATALOG_FILE as CATALOG_FILE
from ._db import Catalog as Catalog
from ._db import SealedNames as SealedNames
from ._db import tenant_in_catalog as tenant_in_catalog
from ._db import tenant_keys_in_catalog as tenant_keys_in_catalog
from ._db import tenant_state_in_catalog as tenant_state_in_catalog
from ._keyring import KEYRING_FILE as KEYRING_FILE
from ._keyring import Keyring as Keyring
from ._keyring import create_master_key as create_master_key
from ._keyring import ensure_tenant as ensure_tenant
from ._keyring import load_master_key as load_master_key
from ._keys import SALT_BYTES as SALT_BYTES
from ._keys import derive_master_key as derive_master_key
from ._keys import seed_creation as seed_creation
from ._keys import unwrap_keys as unwrap_keys
from ._keys import unwrap_secret as unwrap_secret
from ._keys import wrap_keys as wrap_keys
from ._keys import wrap_secret as wrap_secret
from ._model import ABANDONED as ABANDONED
from ._model import ABANDONING as ABANDONING
from ._model import CONFIRMED as CONFIRMED
from ._model import PENDING as PENDING
from ._model import S3_ROLES as S3_ROLES
from ._model import BucketEntry as BucketEntry
from ._model import Entry as Entry
from ._model import HoldEntry as HoldEntry
from ._model import RevokedEntry as RevokedEntry
from ._model import S3KeyEntry as S3KeyEntry
from ._model import TenantEntry as TenantEntry
from ._model import entry_from_wire as entry_from_wire
from ._model import merge as merge
from ._names import bucket_name as bucket_name
from ._names import hold_names as hold_names
from ._names import seal_bucket as seal_bucket
from ._names import seal_hold as seal_hold
