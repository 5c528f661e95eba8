"""Clients of an hdsd cluster: :class:`AsyncClient` (trio) and :class:`Client` (blocking)."""

from ._async import AsyncClient as AsyncClient
from ._async import new_request_id as new_request_id
from ._bulk import Fetched as Fetched
from ._export import ExportSummary as ExportSummary
from ._export import export_tenant as export_tenant
from ._import import ImportSummary as ImportSummary
from ._import import import_archive as import_archive
from ._profile import PROFILE_ENV as PROFILE_ENV
from ._profile import Profile as Profile
from ._profile import load_profile as load_profile
from ._results import GetStream as GetStream
from ._results import ListPage as ListPage
from ._results import ObjectInfo as ObjectInfo
from ._sync import Client as Client
