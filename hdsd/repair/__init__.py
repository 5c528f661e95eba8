"""Anti-entropy (Merkle-tree repair between replicas), scrub and rebuild."""

from ._scrub import Scrubber as Scrubber
from ._scrub import ScrubReport as ScrubReport
from ._service import STARTED_SKEW_S as STARTED_SKEW_S
from ._service import Maintenance as Maintenance
from ._sync import AntiEntropy as AntiEntropy
from ._sync import RepairReport as RepairReport
from ._tree import MerkleTree as MerkleTree
from ._trees import PeerTrees as PeerTrees
