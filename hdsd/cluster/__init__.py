"""Cluster layout: sites, nodes, placement, layout versions, hybrid logical clock."""

from ._address import parse_address as parse_address
from ._hlc import HybridClock as HybridClock
from ._layout import NODE_ROLES as NODE_ROLES
from ._layout import PLANS as PLANS
from ._layout import Layout as Layout
from ._layout import NodeInfo as NodeInfo
from ._layout import NodeRole as NodeRole
from ._layout import Plan as Plan
from ._layout import placement_key as placement_key
from ._record import PHASES as PHASES
from ._record import LayoutRecord as LayoutRecord
from ._record import Placement as Placement
from ._record import check_removal as check_removal
from ._record import layout_from_wire as layout_from_wire
from ._record import layout_to_wire as layout_to_wire
from ._record import placement_moves as placement_moves
from ._record import replacing_node as replacing_node
from ._record import with_changes as with_changes
from ._record import with_node as with_node
from ._record import without_node as without_node
