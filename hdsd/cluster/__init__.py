"""Cluster layout: sites, nodes, placement, hybrid logical clock."""

from ._address import parse_address as parse_address
from ._hlc import HybridClock as HybridClock
