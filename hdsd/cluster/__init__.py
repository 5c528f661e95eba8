"""Cluster layout: sites, nodes, placement, hybrid logical clock."""

from ._address import parse_address as parse_address
from ._hlc import HybridClock as HybridClock
from ._layout import NODE_ROLES as NODE_ROLES
from ._layout import PLANS as PLANS
from ._layout import Layout as Layout
from ._layout import NodeInfo as NodeInfo
from ._layout import NodeRole as NodeRole
from ._layout import Plan as Plan
from ._layout import placement_key as placement_key
