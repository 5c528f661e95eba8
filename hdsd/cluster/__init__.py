"""Cluster layout: sites, nodes, placement, hybrid logical clock."""

from ._hlc import HybridClock as HybridClock
