"""Replication: the write coordinator, write policies, hints, site modes, peers in doubt."""

from ._doubts import PeerDoubts as PeerDoubts
from ._hints import Backlog as Backlog
from ._hints import HintStore as HintStore
from ._mode import ModeState as ModeState
from ._mode import SiteMode as SiteMode
from ._policy import WRITE_POLICIES as WRITE_POLICIES
from ._policy import WritePolicy as WritePolicy
from ._policy import policy_met as policy_met
from ._replicator import Replicator as Replicator
from ._requests import check_retry as check_retry
